"""Training-step throughput of DecoderLM against transformers' GPT2LMHeadModel of the same shape.

One step = forward + backward + AdamW step, fp32, on random tokens. Both models use the same
optimizer settings (torch AdamW, foreach) so the comparison is about the models. Timings
alternate between the two models in one process, after warm-up; medians are reported.

    python benchmarks/bench_train_step.py [--repeats 10] [--compile]
"""

from __future__ import annotations

import argparse
import warnings

import torch

from quillgpt import DecoderLM, ModelConfig

from common import emit, median, time_alternating

SHAPES = [
    dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch=12, vocab_size=84),
    dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch=16, vocab_size=84),
]


def hf_model(shape: dict[str, int]) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        vocab_size=shape["vocab_size"],
        n_positions=shape["block_size"],
        n_embd=shape["n_embd"],
        n_layer=shape["n_layer"],
        n_head=shape["n_head"],
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    return GPT2LMHeadModel(cfg)


def step_fn(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, hf: bool):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, foreach=True)
    model.train()

    def step() -> None:
        loss = model(input_ids=x, labels=x).loss if hf else model(x, y)[1]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile(DecoderLM)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    rows = []
    for shape in SHAPES:
        B, T, V = shape["batch"], shape["block_size"], shape["vocab_size"]
        cfg = ModelConfig(
            vocab_size=V,
            block_size=T,
            n_layer=shape["n_layer"],
            n_head=shape["n_head"],
            n_embd=shape["n_embd"],
        )
        x = torch.randint(0, V, (B, T))
        y = torch.randint(0, V, (B, T))
        fns = {
            "quillgpt": step_fn(DecoderLM(cfg), x, y, hf=False),
            "hf": step_fn(hf_model(shape), x, x, hf=True),
        }
        if args.compile:
            fns["quillgpt_compiled"] = step_fn(torch.compile(DecoderLM(cfg)), x, y, hf=False)
        times = time_alternating(fns, warmup=args.warmup, repeats=args.repeats)
        tokens = B * T
        row: dict[str, object] = {
            "shape": f"L{shape['n_layer']} H{shape['n_head']} C{shape['n_embd']} T{T} B{B} V{V}",
        }
        for name, ts in times.items():
            row[f"{name}_tok_s"] = tokens / median(ts)
        for name in times:
            if name != "hf":
                row[f"{name}_vs_hf"] = row[f"{name}_tok_s"] / row["hf_tok_s"]
        rows.append(row)
    emit("train_step", rows, {"repeats": args.repeats, "warmup": args.warmup})


if __name__ == "__main__":
    main()
