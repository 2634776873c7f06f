"""Dropout whose random mask is cheap to draw on a CPU."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_LEVELS = 1 << 16
"""Each element's keep/drop decision compares a uniform 16-bit integer against a threshold."""


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Zero each element of ``x`` with probability ``p`` and scale the survivors by ``1/(1-p)``.

    The result has the same expectation as ``x``, so nothing changes at evaluation time. On CUDA,
    XPU and MPS, and inside ``torch.compile`` (which fuses its own random numbers into the
    kernel), this is ``F.dropout``.

    On a CPU ``F.dropout`` draws one Bernoulli sample per element from a scalar Mersenne Twister,
    about 6 ns per element on the development machine. Here each 64-bit random word is cut into
    four 16-bit uniform integers, one per element, and an element is dropped when its integer
    falls below ``round(p * 65536)``. Drawing a quarter of the words makes the random numbers 6x
    cheaper and the whole forward pass about 2.5x (``benchmarks/bench_dropout.py``). The
    probability actually used is that threshold over 65536 (for ``p = 0.1``: 0.100006), and the
    survivors are scaled by its complement, so the expectation stays exact. The mask comes from
    torch's default generator: ``torch.manual_seed`` makes it reproducible and checkpointed RNG
    state resumes it.

    Shapes: any ``x``; the output has its shape.
    """
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or torch.compiler.is_compiling():
        return F.dropout(x, p, training=True)
    if not 0.0 < p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p!r}")
    threshold = min(round(p * _LEVELS), _LEVELS - 1)  # p near 1 still keeps 1 in 65536
    words = torch.randint(-(2**63), 2**63 - 1, ((x.numel() + 3) // 4,), dtype=torch.int64)
    uniform = words.view(torch.int16)[: x.numel()].view(x.shape)  # each in [-32768, 32767]
    keep = uniform >= threshold - _LEVELS // 2
    return torch.where(keep, x, 0.0) * (_LEVELS / (_LEVELS - threshold))


class Dropout(nn.Module):
    """:func:`dropout` as a module: active in ``train()`` mode, the identity in ``eval()`` mode.

    A drop-in for ``nn.Dropout`` (same ``p`` and behaviour), faster on a CPU.
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p!r}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x`` with dropout applied when training, shape unchanged."""
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        """Show ``p`` in ``print(model)``, like ``nn.Dropout``."""
        return f"p={self.p}"
