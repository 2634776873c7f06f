"""Where one decode step's time goes: ATen calls per token, the step itself, and each matmul alone.

The demo preset's shape (4 x 192, vocabulary 2048, RoPE, RMSNorm, ReLU², no biases; random
weights), and with ``--shapes`` the 12 x 768 GPT-2 body. Three figures per shape:

* the ATen operator calls ``model.generate`` makes per new token (counted by ``torch.profiler``,
  nested calls included), on the fast path and with ``fast=False``;
* the microseconds of one decode step: ``decode_step`` under the decoding layout (what
  ``generate`` runs) against the plain ``next_token_logits`` of one token, alternating, at a
  cache holding 16 prompt tokens;
* the microseconds of one ``F.linear`` of a single row by each matrix of the model, timed alone
  (in cache, so an upper bound on its speed inside a step), and the same through
  ``DecodeLinear`` (oneDNN).

    python benchmarks/bench_decode_step.py [--shapes demo,12x768] [--tokens 51]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
import torch.profiler

from quillgpt import DecoderLM, ModelConfig
from quillgpt.model.decode_layout import DecodeLinear, decoding_layout

from common import emit, markdown_table, median, median_us_per_call, time_alternating

SHAPES = {
    "demo": dict(vocab_size=2048, block_size=128, n_layer=4, n_head=3, n_embd=192,
                 pos_encoding="rope", bias=False, activation="relu2", norm="rmsnorm",
                 attention="reference"),
    "12x768": dict(vocab_size=2048, block_size=1024, n_layer=12, n_head=12, n_embd=768,
                   activation="gelu_tanh"),
}  # fmt: skip


def aten_calls_per_token(model: DecoderLM, prompt: torch.Tensor, tokens: int, fast: bool) -> float:
    """ATen operator calls (nested ones included) per token of ``model.generate``."""
    model.generate(prompt, 8, fast=fast)  # warm-up
    with torch.profiler.profile() as prof:
        model.generate(prompt, tokens, fast=fast)
    return sum(e.count for e in prof.key_averages() if e.key.startswith("aten::")) / tokens


def step_us(model: DecoderLM, prompt: torch.Tensor, steps: int, repeats: int) -> dict[str, float]:
    """Microseconds of one decode step, fast (``decode_step``) against plain, alternating."""
    caches = {name: model.new_kv_cache(1, prompt.shape[1] + steps) for name in ("fast", "plain")}
    token = prompt[:, -1]

    def run(name: str) -> None:
        cache = caches[name]
        cache.reset()
        with torch.inference_mode(), decoding_layout(model, name == "fast"):
            model.next_token_logits(prompt, cache)  # the prefill, outside the steps' count
            for _ in range(steps):
                if name == "fast":
                    model.decode_step(token, cache)
                else:
                    model.next_token_logits(token[:, None], cache)

    prefill = {"prefill": lambda: run_prefill(model, prompt)}
    times = time_alternating(
        {"fast": lambda: run("fast"), "plain": lambda: run("plain"), **prefill},
        warmup=2,
        repeats=repeats,
    )
    base = median(times["prefill"])
    return {name: (median(times[name]) - base) / steps * 1e6 for name in ("fast", "plain")}


def run_prefill(model: DecoderLM, prompt: torch.Tensor) -> None:
    """The prefill alone, so that ``step_us`` can subtract it."""
    cache = model.new_kv_cache(1, prompt.shape[1])
    with torch.inference_mode():
        model.next_token_logits(prompt, cache)


def matrix_rows(model: DecoderLM) -> list[dict[str, object]]:
    """Microseconds of one row times each distinct matrix, ``F.linear`` and ``DecodeLinear``."""
    block = model.blocks[0]
    layers = {"qkv": block.attn.qkv, "attn.proj": block.attn.proj, "ffn.fc": block.ffn.fc,
              "ffn.proj": block.ffn.proj, "lm_head": model.lm_head}  # fmt: skip
    rows = []
    for name, layer in layers.items():
        x = torch.randn(1, layer.in_features)
        fast = DecodeLinear(layer)
        fns = {
            "F.linear": lambda x=x, w=layer.weight: F.linear(x, w),
            "DecodeLinear": lambda x=x, fast=fast: fast(x),
        }
        us = median_us_per_call(fns, calls=1000, repeats=7)
        rows.append({"matrix": name, "shape": tuple(layer.weight.shape),
                     "linear_us": us["F.linear"],
                     "decode_linear_us": us["DecodeLinear"]})  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="demo", help=f"of {sorted(SHAPES)}")
    parser.add_argument("--tokens", type=int, default=51)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    rows, matrices = [], {}
    for label in args.shapes.split(","):
        torch.manual_seed(0)
        model = DecoderLM(ModelConfig(**SHAPES[label])).eval()
        prompt = torch.arange(16)[None]
        steps = step_us(model, prompt, args.tokens, args.repeats)
        rows.append(
            {
                "shape": label,
                "aten_calls_per_token": aten_calls_per_token(model, prompt, args.tokens, True),
                "aten_calls_per_token_plain": aten_calls_per_token(
                    model, prompt, args.tokens, False
                ),
                "decode_step_us": steps["fast"],
                "plain_step_us": steps["plain"],
                "speedup": steps["plain"] / steps["fast"],
            }
        )
        matrices[label] = matrix_rows(model)
        print(f"{label}: one row times each matrix, alone")
        print(markdown_table(matrices[label]))
    emit("decode_step", rows, {"matrices": matrices})


if __name__ == "__main__":
    main()
