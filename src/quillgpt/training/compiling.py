"""``torch.compile`` for training, and going on eagerly when the compiler fails.

Compiling fuses the model's small operations into fewer kernels (docs/performance.md). It can
fail where a toolchain is missing or an operation is unsupported, and it fails on the first
call, which is the first training step: only then, and only for the compiler's own errors, does
training fall back to the uncompiled model.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from quillgpt.data.token_windows import Batch
from quillgpt.device import compiler_pays_off


def compiled(
    module: nn.Module, mode: str, device: torch.device, backend: str | Callable[..., Any]
) -> Callable[..., Any]:
    """Return ``torch.compile(module)``, or ``module`` itself with compilation off.

    ``mode`` is ``on``, ``off``, or ``auto``: on where it pays off on ``device``.
    """
    if mode == "on" or (mode == "auto" and compiler_pays_off(device)):
        return torch.compile(module, backend=backend)
    return module


def first_compiled_step(
    step: Callable[..., tuple[float, float]],
    compiled: Callable[..., Any],
    eager: nn.Module,
    micro: list[Batch],
    optimizer: torch.optim.Optimizer,
) -> tuple[Callable[..., Any], tuple[float, float]]:
    """Run the first step through ``compiled``; if the compiler fails, warn and go eager.

    Only the compiler's own failures (``torch._dynamo`` wraps them all: a missing C++ toolchain,
    an unsupported operation) fall back. Anything else, an out-of-memory error included, is
    raised as it is. Returns the forward to use from now on and the step's (loss, norm).
    """
    try:
        return compiled, step(compiled, micro_batches=micro)
    except torch._dynamo.exc.TorchDynamoException as exc:
        warnings.warn(
            f"torch.compile failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
            "continuing without compilation (--compile off silences this)",
            stacklevel=2,
        )
        optimizer.zero_grad(set_to_none=True)
        return eager, step(eager, micro_batches=micro)
