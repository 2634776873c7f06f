"""The feed-forward activation: exact GELU against its tanh approximation, forward and backward.

quillgpt's default activation is exact GELU (``F.gelu``, with erf); GPT-2 weights need the tanh
form, which ``transformers`` computes as five element-wise kernels (``gelu_new``) and PyTorch as
one (``F.gelu(approximate="tanh")``). Each is timed on the small benchmark shape's feed-forward
hidden activations, ``(B*T, 4C) = (768, 512)`` fp32, forward alone and forward + backward.
Contenders alternate in one process after warm-up (20 calls a repeat); medians.

    python benchmarks/bench_activation.py [--repeats 30]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torch.nn.functional as F

from common import emit, median_us_per_call

CALLS = 20
"""Activation calls per timed repeat."""


def activations() -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """The contenders by name; ``transformers``' is its own ``NewGELUActivation`` module."""
    from transformers.activations import NewGELUActivation

    return {
        "gelu exact (quillgpt default)": F.gelu,
        "gelu tanh, fused (quillgpt gelu_tanh)": lambda x: F.gelu(x, approximate="tanh"),
        "gelu tanh, 5 kernels (transformers gelu_new)": NewGELUActivation(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    torch.manual_seed(0)
    x = torch.randn(768, 512, requires_grad=True)
    grad = torch.randn(768, 512)
    contenders = activations()
    forward = {name: (lambda f=f: f(x.detach())) for name, f in contenders.items()}
    both = {
        name: (lambda f=f: torch.autograd.grad(f(x), x, grad)) for name, f in contenders.items()
    }
    fwd_us = median_us_per_call(forward, calls=CALLS, repeats=args.repeats)
    both_us = median_us_per_call(both, calls=CALLS, repeats=args.repeats)
    exact = "gelu exact (quillgpt default)"
    rows = [
        {
            "activation": name,
            "forward_us": fwd_us[name],
            "forward_backward_us": both_us[name],
            "fwd_bwd_vs_exact": both_us[name] / both_us[exact],
        }
        for name in contenders
    ]
    emit("activation", rows, {"repeats": args.repeats, "shape": [768, 512], "dtype": "fp32"})


if __name__ == "__main__":
    main()
