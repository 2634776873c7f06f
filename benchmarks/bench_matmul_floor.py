"""The matmul floor of a training step: every linear-layer matmul of one step, timed in isolation.

For the two shapes of ``bench_train_step.py``, each of the 3 x 4 matmuls of a block's linear
layers (forward; backward to the input; backward to the weight, with the transposed operand
autograd passes) and the output head's 3 are timed back to back on hot data, fp32, medians. Their
sum is what one training step cannot go below with these kernels (attention, element-wise work
and the optimizer come on top), whichever model computes it: ``transformers``' GPT-2 runs the same
matmuls. Dividing a target step time by it says how much room the target leaves for the rest.

    python benchmarks/bench_matmul_floor.py [--repeats 200]
"""

from __future__ import annotations

import argparse
import time

import torch

from bench_train_step import SHAPES

from common import emit, median


def time_matmul(a: torch.Tensor, b: torch.Tensor, repeats: int) -> float:
    """Median seconds of ``a @ b`` after a warm-up."""
    for _ in range(10):
        a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return median(times)


def linear_step_seconds(tokens: int, n_in: int, n_out: int, repeats: int) -> float:
    """Forward, input-gradient and weight-gradient matmuls of one ``nn.Linear(n_in, n_out)``."""
    x, grad = torch.randn(tokens, n_in), torch.randn(tokens, n_out)
    weight = torch.randn(n_out, n_in)
    return (
        time_matmul(x, weight.t(), repeats)
        + time_matmul(grad, weight, repeats)
        + time_matmul(grad.t(), x, repeats)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    rows = []
    for shape in SHAPES:
        C, V = shape["n_embd"], shape["vocab_size"]
        tokens = shape["batch"] * shape["block_size"]
        layers = [(C, 3 * C), (C, C), (C, 4 * C), (4 * C, C)]  # qkv, proj, fc, fc2
        block = sum(linear_step_seconds(tokens, i, o, args.repeats) for i, o in layers)
        head = linear_step_seconds(tokens, C, V, args.repeats)
        seconds = shape["n_layer"] * block + head
        flops = 6 * tokens * (shape["n_layer"] * 12 * C * C + C * V)
        rows.append(
            {
                "shape": f"L{shape['n_layer']} C{C} T{shape['block_size']} B{shape['batch']} V{V}",
                "matmul_floor_ms": seconds * 1e3,
                "gflop": flops / 1e9,
                "gflop_s": flops / seconds / 1e9,
            }
        )
    emit("matmul_floor", rows, {"repeats": args.repeats, "dtype": "fp32"})


if __name__ == "__main__":
    main()
