"""The training loop's own cost per step: ``quillgpt.training.train`` against a bare loop.

Both run the same model, data, AdamW and gradient clipping, fp32, eager, one process. The bare
loop is the minimum (``next(batches)``, forward, backward, clip, step, zero_grad); ``train`` adds
everything around it (learning-rate setting, loss and norm read-back, counters, stop checks,
metrics lines, the data position). The difference is the loop's overhead per step. Runs alternate
(train, bare, train, bare, ...) and medians are reported; per-step times are taken after a warm-up,
from ``metrics.jsonl`` for ``train`` and from the clock for the bare loop.

    python benchmarks/bench_train_loop.py [--runs 5] [--steps 120] [--shape mini]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from quillgpt import DecoderLM, ModelConfig
from quillgpt.data import make_train_loader, prepare_data
from quillgpt.training import TrainConfig, train

from common import emit, median

WARMUP = 20
SHAPES = {
    # a step so small that the loop's own per-step cost is a visible part of it
    "micro": dict(block_size=16, n_layer=1, n_head=1, n_embd=16),
    "tiny": dict(block_size=64, n_layer=2, n_head=2, n_embd=64),
    "mini": dict(block_size=128, n_layer=4, n_head=4, n_embd=128),
}


def loop_seconds_per_step(model_cfg: ModelConfig, data, out: Path, steps: int, batch: int) -> float:
    cfg = TrainConfig(
        out_dir=str(out), batch_size=batch, max_steps=steps, warmup_steps=10, log_interval=10,
        eval_interval=10**6, ckpt_interval=0, save_best=False, num_samples=0, final_eval=False,
        precision="fp32", compile="off", device="cpu", progress=False,
    )  # fmt: skip
    train(model_cfg, cfg, data)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    rows = {r["step"]: r["elapsed"] for r in lines if r["kind"] == "train"}
    return (rows[steps] - rows[WARMUP]) / (steps - WARMUP)


def bare_seconds_per_step(model_cfg: ModelConfig, data, steps: int, batch: int) -> float:
    torch.manual_seed(1337)
    model = DecoderLM(model_cfg).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), fused=True)
    batches = iter(make_train_loader(data, model_cfg.block_size, batch, seed=1337))
    for step in range(steps):
        if step == WARMUP:
            start = time.perf_counter()
        x, y = next(batches)
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return (time.perf_counter() - start) / (steps - WARMUP)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="mini")
    args = parser.parse_args()
    data = prepare_data("shakespeare", "char")
    model_cfg = ModelConfig(vocab_size=data.vocab_size, **SHAPES[args.shape])
    loop, bare = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(args.runs):
            loop.append(loop_seconds_per_step(model_cfg, data, Path(tmp) / str(run), args.steps,
                                              args.batch))  # fmt: skip
            bare.append(bare_seconds_per_step(model_cfg, data, args.steps, args.batch))
    row = {
        "shape": args.shape,
        "batch": args.batch,
        "train_ms_per_step": round(median(loop) * 1e3, 3),
        "bare_ms_per_step": round(median(bare) * 1e3, 3),
        "overhead_ms_per_step": round((median(loop) - median(bare)) * 1e3, 3),
        "train_over_bare": round(median(loop) / median(bare), 3),
        "runs_train_ms": [round(v * 1e3, 2) for v in loop],
        "runs_bare_ms": [round(v * 1e3, 2) for v in bare],
    }
    emit("train_loop", [row], {"runs": args.runs, "steps": args.steps})


if __name__ == "__main__":
    main()
