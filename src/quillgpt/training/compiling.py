"""``torch.compile`` for training, a compile cache that outlives ``/tmp``, and an eager fallback.

Compiling fuses the model's small operations into fewer kernels (docs/performance.md). What
``compile = on`` (or ``auto``, where a compiler pays off) compiles is the whole model's training
loss (``loop.loss_of``: the forward pass to the loss, without the logits as an output), and with
it the backward pass; the optimiser (one fused AdamW kernel) is not compiled.

**Why the whole model.** Two ways of compiling less were measured
(``benchmarks/bench_compile.py``; the figures are in docs/performance.md, "Compile time") and
not taken: *regional compilation* (each ``DecoderBlock`` compiled, every layer running the one
graph) compiles a first run faster but leaves the embeddings, head and loss eager, which loses
more tokens in a 5-minute budget than the compile time it saves; *hierarchical compilation*
(each block a ``torch.compiler.nested_compile_region``) computes wrong fp32 gradients for every
block but the last with inductor on torch 2.13. Identical kernels are built once however many
layers run them, so compiling one block saves less than the layer count suggests; what a
second run needs is the cache.

**The cache.** Inductor's FX-graph and AOTAutograd caches (on by default) keep compiled code in
``TORCHINDUCTOR_CACHE_DIR``, by default ``/tmp/torchinductor_$USER``, which a reboot (tmpfs) or a
``/tmp`` cleaner empties, and the next run pays the whole compile again. Unless the user set
that variable, quillgpt points it at ``$XDG_CACHE_HOME/quillgpt/inductor`` (by default
``~/.cache/quillgpt/inductor``; delete it freely, it refills).

Compiling can fail where a toolchain is missing or an operation is unsupported, and it fails on
the first call, which is the first training step: only then, and only for the compiler's own
errors, does training fall back to the uncompiled model.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from quillgpt.data.token_windows import Batch
from quillgpt.device import compiler_pays_off

CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"
_CHOSEN_BEFORE_IMPORT = CACHE_ENV in os.environ


def compiled(
    fn: Callable[..., Any],
    mode: str,
    device: torch.device,
    backend: str | Callable[..., Any],
    dynamic_threads: bool = False,
) -> Callable[..., Any]:
    """Return ``torch.compile(fn)``, or ``fn`` itself with compilation off.

    ``mode`` is ``on``, ``off``, or ``auto``: on where it pays off on ``device``. Compiling
    also points inductor's cache at :func:`inductor_cache_dir` (:func:`keep_compiled_code`).
    ``dynamic_threads``: inductor's C++ kernels read the thread count when they run, instead of
    the count at compile time built into them, so that a count changed later
    (:class:`~quillgpt.threads.AdaptiveThreads`) applies to them too.
    """
    if mode == "on" or (mode == "auto" and compiler_pays_off(device)):
        keep_compiled_code()
        adapting = dynamic_threads and backend == "inductor"
        options = {"cpp.dynamic_threads": True} if adapting else None
        return torch.compile(fn, backend=backend, options=options)
    return fn


def inductor_cache_dir() -> Path:
    """Where quillgpt keeps inductor's compiled code: ``$XDG_CACHE_HOME/quillgpt/inductor``."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "quillgpt" / "inductor"


def keep_compiled_code() -> None:
    """Point inductor's cache at :func:`inductor_cache_dir`, unless the user chose a place.

    A ``TORCHINDUCTOR_CACHE_DIR`` set before quillgpt was imported is the user's choice and is
    kept, and so is any other place than inductor's default. Inductor sets the variable to its
    default itself as soon as ``torch._dynamo`` is imported (constructing an optimiser does it),
    so that value alone is taken over. Where the directory cannot be created (a read-only home),
    inductor's default stays.
    """
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    current = os.environ.get(CACHE_ENV)
    if current is not None and (_CHOSEN_BEFORE_IMPORT or current != default_cache_dir()):
        return
    try:
        path = inductor_cache_dir()
        path.mkdir(parents=True, exist_ok=True)
    except (OSError, RuntimeError):  # RuntimeError: no home directory to be found
        return
    os.environ[CACHE_ENV] = str(path)


def first_compiled_step(
    step: Callable[..., tuple[float, float]],
    compiled: Callable[..., Any],
    eager: Callable[..., Any],
    micro: list[Batch],
    optimizer: torch.optim.Optimizer,
) -> tuple[Callable[..., Any], tuple[float, float]]:
    """Run the first step through ``compiled``; if the compiler fails, warn and go eager.

    Only the compiler's own failures (``torch._dynamo`` wraps them all: a missing C++ toolchain,
    an unsupported operation) fall back. Anything else, an out-of-memory error included, is
    raised as it is. Returns the loss function to use from now on and the step's (loss, norm).
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
