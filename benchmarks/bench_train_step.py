"""Training-step throughput of DecoderLM against transformers' GPT2LMHeadModel of the same shape.

One step = forward + backward + AdamW step in fp32 on random tokens. Every contender uses the same
optimizer (torch AdamW, fused where the device has it, as the trainer does), so the comparison is
about the models. Contenders are timed alternately in one process after warm-up; medians are
reported, as the ratio of medians and, to show the noise, the interquartile range of the ratios of
back-to-back steps. Three comparisons come out of four contenders:

- ``defaults``: quillgpt's default ``ModelConfig`` (dropout 0) against ``GPT2Config``'s defaults
  (dropout 0.1), both built with nothing but the shape;
- ``dropout 0``: the same computation, transformers with its three dropouts set to 0;
- ``dropout 0.1``: the same computation, quillgpt with ``dropout=0.1`` against GPT2Config's
  default 0.1 (attention, residual and embedding dropout in both).

    python benchmarks/bench_train_step.py [--repeats 15] [--compile] [--shapes small medium]
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

from quillgpt import DecoderLM, ModelConfig

from common import emit, median, time_alternating

SHAPES = [
    dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch=12, vocab_size=84),
    dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch=16, vocab_size=84),
]
SHAPE_NAMES = ("small", "medium")


def shape_config(shape: dict[str, int], **overrides: object) -> ModelConfig:
    """quillgpt's default ``ModelConfig`` for a benchmark ``shape`` (batch left out)."""
    fields = {k: v for k, v in shape.items() if k != "batch"}
    return ModelConfig(**fields, **overrides)  # type: ignore[arg-type]


def hf_model(shape: dict[str, int], dropout: float | None) -> torch.nn.Module:
    """A randomly initialised GPT2LMHeadModel; ``dropout=None`` keeps GPT2Config's default."""
    from transformers import GPT2Config, GPT2LMHeadModel

    drop = (
        {} if dropout is None else dict(resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout)
    )
    cfg = GPT2Config(
        vocab_size=shape["vocab_size"],
        n_positions=shape["block_size"],
        n_embd=shape["n_embd"],
        n_layer=shape["n_layer"],
        n_head=shape["n_head"],
        bos_token_id=0,
        eos_token_id=0,
        **drop,
    )
    return GPT2LMHeadModel(cfg)


def make_step(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, hf: bool, compile: bool = False
):
    """Return a closure running one optimizer step of ``model`` on the batch ``(x, y)``."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, fused=True)
    model.train()
    forward = torch.compile(model) if compile else model

    def step() -> None:
        loss = forward(input_ids=x, labels=x).loss if hf else forward(x, y)[1]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def quantile(sorted_values: list[float], q: float) -> float:
    """The ``q`` quantile of already sorted values (nearest rank)."""
    return sorted_values[round(q * (len(sorted_values) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile(DecoderLM)")
    parser.add_argument(
        "--shapes", nargs="+", choices=SHAPE_NAMES, default=list(SHAPE_NAMES), help="which shapes"
    )
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    rows = []
    for name, shape in zip(SHAPE_NAMES, SHAPES, strict=True):
        if name not in args.shapes:
            continue
        B, T, V = shape["batch"], shape["block_size"], shape["vocab_size"]
        cfg = shape_config(shape)
        x = torch.randint(0, V, (B, T))
        y = torch.randint(0, V, (B, T))
        with_dropout = shape_config(shape, dropout=0.1)
        fns = {
            "quillgpt": make_step(DecoderLM(cfg), x, y, hf=False),
            "hf_nodropout": make_step(hf_model(shape, 0.0), x, x, hf=True),
            "quillgpt_dropout": make_step(DecoderLM(with_dropout), x, y, hf=False),
            "hf_default": make_step(hf_model(shape, None), x, x, hf=True),
        }
        compile_s = None
        if args.compile:
            compiled = make_step(DecoderLM(cfg), x, y, hf=False, compile=True)
            start = time.perf_counter()
            compiled()
            compile_s = time.perf_counter() - start
            fns["quillgpt_compiled"] = compiled
        times = time_alternating(fns, warmup=args.warmup, repeats=args.repeats)
        row: dict[str, object] = {
            "shape": f"L{shape['n_layer']} H{shape['n_head']} C{shape['n_embd']} T{T} B{B} V{V}"
        }
        tok_s = {name: B * T / median(ts) for name, ts in times.items()}
        for name, value in tok_s.items():
            row[f"{name}_tok_s"] = round(value)
        comparisons = {
            "defaults": ("quillgpt", "hf_default"),
            "dropout0": ("quillgpt", "hf_nodropout"),
            "dropout0.1": ("quillgpt_dropout", "hf_default"),
        }
        if "quillgpt_compiled" in tok_s:
            comparisons["compiled_defaults"] = ("quillgpt_compiled", "hf_default")
            comparisons["compiled_dropout0"] = ("quillgpt_compiled", "hf_nodropout")
        for label, (ours, theirs) in comparisons.items():
            row[f"{label}_ratio"] = tok_s[ours] / tok_s[theirs]
            paired = sorted(t / o for o, t in zip(times[ours], times[theirs], strict=True))
            low, high = quantile(paired, 0.25), quantile(paired, 0.75)
            row[f"{label}_paired_iqr"] = f"{low:.2f}-{high:.2f}"
        if compile_s is not None:
            row["compile_s"] = compile_s
        rows.append(row)
    name = (
        "train_step"
        if len(args.shapes) == len(SHAPE_NAMES)
        else "train_step_" + "_".join(args.shapes)
    )
    emit(name, rows, {"repeats": args.repeats, "warmup": args.warmup, "dtype": "fp32"})


if __name__ == "__main__":
    main()
