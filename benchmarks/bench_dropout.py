"""quillgpt's CPU dropout against PyTorch's: the kernel, and a training step with dropout 0.1.

1. **Kernel**: drawing the random numbers (``bernoulli_`` per element against one 64-bit word per
   four elements), and a dropout forward (and forward + backward) on a ``(768, 128)`` float
   tensor: ``F.dropout`` against :func:`quillgpt.model.dropout.dropout`, ``p = 0.1``.
2. **Training step** (forward + backward + fused AdamW, fp32) of ``DecoderLM(dropout=0.1)`` on the
   two shapes of ``bench_train_step.py``: as built, against the same model with PyTorch's dropout
   in the same places (``nn.Dropout`` modules, ``F.dropout`` on the attention weights).

Contenders alternate in one process after warm-up (kernels: 20 calls a repeat); medians.

    python benchmarks/bench_dropout.py [--repeats 15]
"""

from __future__ import annotations

import argparse
import contextlib
import warnings
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

import quillgpt.model.attention as attention_module
from bench_train_step import SHAPES, make_step, shape_config
from quillgpt import DecoderLM
from quillgpt.model import Dropout
from quillgpt.model.dropout import dropout

from common import emit, median, median_us_per_call, time_alternating

P = 0.1
CALLS = 20
"""Kernel calls per timed repeat."""


def kernel_rows(repeats: int) -> list[dict[str, object]]:
    x = torch.randn(768, 128, requires_grad=True)
    grad = torch.randn(768, 128)
    n = x.numel()
    words = (n + 3) // 4
    torch_fns = {
        "random numbers": lambda: torch.empty(n).bernoulli_(1 - P),
        "forward": lambda: F.dropout(x.detach(), P),
        "forward + backward": lambda: F.dropout(x, P).backward(grad),
    }
    quill_fns = {
        "random numbers": lambda: torch.randint(-(2**63), 2**63 - 1, (words,), dtype=torch.int64),
        "forward": lambda: dropout(x.detach(), P),
        "forward + backward": lambda: dropout(x, P).backward(grad),
    }
    rows = []
    for what in torch_fns:
        fns = {"torch": torch_fns[what], "quillgpt": quill_fns[what]}
        us = median_us_per_call(fns, calls=CALLS, repeats=repeats)
        rows.append(
            {
                "measure": f"{what}, 768 x 128",
                "torch_us": us["torch"],
                "quillgpt_us": us["quillgpt"],
                "speedup": us["torch"] / us["quillgpt"],
            }
        )
    return rows


def with_torch_dropout(model: DecoderLM) -> DecoderLM:
    """Swap every quillgpt ``Dropout`` module of ``model`` for an ``nn.Dropout``, in place."""
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, Dropout):
                setattr(module, name, nn.Dropout(child.p))
    return model


@contextlib.contextmanager
def torch_attention_dropout() -> Iterator[None]:
    """Make the written-out attention drop its weights with ``F.dropout`` inside the block."""
    saved = attention_module.dropout
    attention_module.dropout = lambda x, p, training=True: F.dropout(x, p, training)
    try:
        yield
    finally:
        attention_module.dropout = saved


def step_rows(repeats: int) -> list[dict[str, object]]:
    rows = []
    for shape in SHAPES:
        B, T, V = shape["batch"], shape["block_size"], shape["vocab_size"]
        cfg = shape_config(shape, dropout=P)
        x = torch.randint(0, V, (B, T))
        torch.manual_seed(0)
        ours = make_step(DecoderLM(cfg), x, x, hf=False)
        torch.manual_seed(0)
        theirs_step = make_step(with_torch_dropout(DecoderLM(cfg)), x, x, hf=False)

        def theirs(step: Callable[[], None] = theirs_step) -> None:
            with torch_attention_dropout():
                step()

        times = time_alternating({"quillgpt": ours, "torch": theirs}, repeats=repeats)
        tok_s = {name: B * T / median(ts) for name, ts in times.items()}
        rows.append(
            {
                "measure": f"train step L{shape['n_layer']} C{shape['n_embd']} T{T} B{B}",
                "torch_tok_s": round(tok_s["torch"]),
                "quillgpt_tok_s": round(tok_s["quillgpt"]),
                "speedup": tok_s["quillgpt"] / tok_s["torch"],
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    emit("dropout_kernel", kernel_rows(args.repeats), {"p": P, "dtype": "fp32"})
    emit("dropout_step", step_rows(args.repeats), {"p": P, "dtype": "fp32"})


if __name__ == "__main__":
    main()
