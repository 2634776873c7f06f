"""Faster token-by-token decoding on a CPU: large linear layers through oneDNN's linear kernel.

Decoding one token multiplies a single activation row ``x (1, C)`` by every weight matrix of the
model, so each step reads all the weights once and does only two FLOPs per weight: its speed is
set by how fast the weights stream from memory, not by arithmetic. PyTorch's ``nn.Linear`` hands
that product to a BLAS ``gemv`` that runs on one core, however many threads PyTorch has, and
reads the ``(N, C)`` weight at well under half the memory bandwidth (``benchmarks/bench_decode.py``;
figures in ``docs/performance.md``). oneDNN, the CPU kernel library PyTorch ships with, has a
linear kernel that splits the product over every thread and streams the same ``(N, C)`` weight
in place, with no copy and no layout change.

:func:`decoding_layout` swaps a model's large ``nn.Linear`` layers for :class:`DecodeLinear`
wrappers that call that kernel, for the duration of a ``generate`` call only: the wrappers hold
the layers themselves, so the parameters are the model's own, nothing is copied, and the
original layers are back in place afterwards (the model can be trained and saved after
generating). Small layers stay as they are: oneDNN's per-call cost is higher than BLAS's, and a
matrix that fits in a core's cache gains nothing from a second thread.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


class DecodeLinear(nn.Module):
    """``linear(x)`` computed by oneDNN's linear kernel, on ``linear``'s own weight and bias.

    ``torch.ops.mkldnn._linear_pointwise`` is the kernel inductor emits for CPU linear layers
    when it freezes weights; on a dense ``(N, C)`` weight it runs on all of PyTorch's threads.
    Shapes: ``x (..., C) -> (..., N)``, like the layer it wraps.
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.linear = linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x W^T + b`` for ``x (..., C)`` as ``(..., N)``."""
        weight, bias = self.linear.weight, self.linear.bias
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


MIN_BYTES = 1 << 20
"""Smallest weight (bytes) worth the oneDNN kernel: below about the size of a core's L2 cache
the matrix is read from cache and BLAS's lower per-call cost wins (the demo shape's block
matrices: ``benchmarks/bench_decode_step.py``, figures in docs/performance.md)."""


def _convertible(model: nn.Module) -> list[tuple[nn.Module, str, nn.Linear]]:
    """``(parent, name, layer)`` of every ``nn.Linear`` in ``model`` the kernel pays for.

    That is a plain fp32 CPU weight (not a quantized tensor subclass, as torchao leaves inside
    ``nn.Linear``) of at least :data:`MIN_BYTES`.
    """
    return [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is nn.Linear and _plain_cpu_fp32(child.weight)
        and child.weight.nbytes >= MIN_BYTES
    ]  # fmt: skip


def _plain_cpu_fp32(weight: torch.Tensor) -> bool:
    """A dense fp32 tensor on the CPU, of no subclass."""
    dense = type(weight) in (torch.Tensor, nn.Parameter)
    return dense and weight.device.type == "cpu" and weight.dtype == torch.float32


@contextlib.contextmanager
def decoding_layout(model: nn.Module, enabled: bool = True) -> Iterator[int]:
    """Within the block, ``model``'s large ``nn.Linear`` layers compute as :class:`DecodeLinear`.

    Only where it pays: with oneDNN, in eval mode (the wrappers are for inference), and per
    layer for fp32 CPU weights large enough. On leaving the block, even by an exception or an
    abandoned generator, the original layers are put back. Yields the number of layers swapped.
    """
    pays = enabled and torch.backends.mkldnn.is_available() and not model.training
    targets = _convertible(model) if pays else []
    for parent, name, child in targets:
        setattr(parent, name, DecodeLinear(child))
    try:
        yield len(targets)
    finally:
        for parent, name, child in targets:
            setattr(parent, name, child)
