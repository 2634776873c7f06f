"""One optimiser step on the demo shape: Muon with Newton-Schulz in bf16 or fp32, and AdamW.

The model is ``configs/shakespeare-bpe-cpu.toml``'s (4 layers, C = 192, feed-forward 4C, 2048
BPE ids, tied head), with random gradients. Contenders, timed alternately after warm-up
(medians):

- ``muon_bf16`` / ``muon_fp32``: the trainer's ``optimizer="muon"`` step (Muon over the blocks'
  matrices, AdamW over the rest) with the orthogonalisation in bf16 or in fp32;
- ``muon_only_bf16`` / ``muon_only_fp32``: the Muon half alone;
- ``torch_muon``: ``torch.optim.Muon`` over the same matrices (bf16, fused q/k/v: the reference
  the trainer's Muon subclasses);
- ``adamw_fused``: the trainer's ``optimizer="adamw"`` step over every parameter;
- ``muon_fp32_written_out``: ``muon_fp32`` with the feed-forward matrices' iteration written out
  instead of in its Gram form (``muon._gram_form``), as fp32 computed it before session 9.

This is the measurement behind ``newton_schulz_dtype``: bf16 where the CPU computes it natively
(``cpu_supports_bf16``), fp32 elsewhere.

    python benchmarks/bench_muon.py [--repeats 30]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import torch

from quillgpt import DecoderLM, ModelConfig
from quillgpt.device import cpu_supports_bf16
from quillgpt.training import muon as muon_module
from quillgpt.training.config import TrainConfig
from quillgpt.training.optim import build_optimizer, muon_param_groups

from common import emit, median, time_alternating

DEMO = dict(n_layer=4, n_head=3, n_embd=192, block_size=128, vocab_size=2048, pos_encoding="rope",
            bias=False, tie_weights=True)  # fmt: skip


def cpu_model() -> str:
    """The CPU's family and model numbers (``model name`` alone may just say "AMD EPYC")."""
    fields: dict[str, str] = {}
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("vendor_id", "cpu family", "model") and key.strip() not in fields:
            fields[key.strip()] = value.strip()
    return ", ".join(f"{k} {v}" for k, v in fields.items())


def without_gram_form(step: Callable[[], object]) -> Callable[[], object]:
    """``step`` with ``muon._gram_form`` swapped for ``muon._written_out`` while it runs."""

    def run() -> object:
        gram_form = muon_module._gram_form
        muon_module._gram_form = muon_module._written_out
        try:
            return step()
        finally:
            muon_module._gram_form = gram_form

    return run


def steps(model: DecoderLM) -> dict[str, Callable[[], object]]:
    """The contenders: one ``step`` each, over ``model``'s parameters and gradients."""
    muon = {}
    for dtype in (torch.bfloat16, torch.float32):
        optimizer = build_optimizer(model, TrainConfig(optimizer="muon"))
        optimizer.muon.dtype = dtype  # type: ignore[union-attr]
        name = "bf16" if dtype == torch.bfloat16 else "fp32"
        muon[f"muon_{name}"] = optimizer.step
        muon[f"muon_only_{name}"] = optimizer.muon.step  # type: ignore[union-attr]
    matrices = [p for group in muon_param_groups(model) for p in group["params"]]
    torch_muon = torch.optim.Muon(matrices, lr=0.02, weight_decay=0.1)
    adamw = build_optimizer(model, TrainConfig(optimizer="adamw", optimizer_impl="fused"))
    written = build_optimizer(model, TrainConfig(optimizer="muon"))
    written.muon.dtype = torch.float32  # type: ignore[union-attr]
    return {
        **muon,
        "muon_fp32_written_out": without_gram_form(written.step),
        "torch_muon": torch_muon.step,
        "adamw_fused": adamw.step,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = DecoderLM(ModelConfig(**DEMO))  # type: ignore[arg-type]
    for param in model.parameters():
        param.grad = torch.randn_like(param)
    times = time_alternating(steps(model), warmup=3, repeats=args.repeats)
    adamw = median(times["adamw_fused"])
    rows = [
        {"contender": name, "ms": median(t) * 1e3, "over_adamw_fused": median(t) / adamw}
        for name, t in times.items()
    ]
    extra = {
        "muon_fp32_over_bf16": median(times["muon_fp32"]) / median(times["muon_bf16"]),
        "gram_form_speedup": median(times["muon_fp32_written_out"]) / median(times["muon_fp32"]),
        "repeats": args.repeats,
        "shape": DEMO,
        "parameters": model.num_parameters(),
        "cpu_model": cpu_model(),
        "cpu_native_bf16": cpu_supports_bf16(),
    }
    emit("muon", rows, extra)


if __name__ == "__main__":
    main()
