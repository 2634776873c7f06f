"""One AdamW step with each of torch's kernels: fused, foreach and for-loop.

The parameters are ``DecoderLM``'s for the two shapes of ``bench_train_step.py``, in the trainer's
two groups (weight decay on linear matrices only), with random gradients. This is the figure
behind the trainer's ``optimizer_impl="auto"`` choosing the fused kernel on a CPU. Contenders
alternate in one process after warm-up; medians.

    python benchmarks/bench_optimizer.py [--repeats 50]
"""

from __future__ import annotations

import argparse

import torch

from bench_train_step import SHAPES, shape_config
from quillgpt import DecoderLM
from quillgpt.training.config import TrainConfig
from quillgpt.training.optim import build_optimizer

from common import emit, median, time_alternating

IMPLS = ("fused", "foreach", "for-loop")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    for shape in SHAPES:
        model = DecoderLM(shape_config(shape))
        for param in model.parameters():
            param.grad = torch.randn_like(param)
        steps = {
            impl: build_optimizer(model, TrainConfig(lr=1e-4, optimizer_impl=impl)).step
            for impl in IMPLS
        }
        times = time_alternating(steps, warmup=5, repeats=args.repeats)
        row: dict[str, object] = {
            "shape": f"L{shape['n_layer']} C{shape['n_embd']} V{shape['vocab_size']}",
            "parameters": model.num_parameters(),
        }
        for impl in IMPLS:
            row[f"{impl}_ms"] = median(times[impl]) * 1e3
        row["foreach_over_fused"] = median(times["foreach"]) / median(times["fused"])
        rows.append(row)
    emit("optimizer", rows, {"repeats": args.repeats, "dtype": "fp32"})


if __name__ == "__main__":
    main()
