"""Where one decode step's time goes: ATen calls per token, the step itself, and each matmul alone.

The demo preset's shape (4 x 192, vocabulary 2048, RoPE, RMSNorm, ReLU², no biases; random
weights), and with ``--shapes`` the 12 x 768 GPT-2 body. Three figures per shape:

* the ATen operator calls ``model.generate`` makes per new token (counted by ``torch.profiler``,
  nested calls included), on the fast path and with ``fast=False``;
* the microseconds of one decode step: ``decode_step`` under the decoding layout (what
  ``generate`` runs) against the plain ``next_token_logits`` of one token, alternating, at a
  cache holding 16 prompt tokens;
* with ``--compile``, the same steps through ``torch.compile(model.decode_step)`` (inductor's C++
  wrapper, the cache length dynamic, inductor's own choice of linear kernels), and the seconds
  its first steps took to compile;
* the microseconds of one ``F.linear`` of a single row by each matrix of the model, timed alone
  (in cache, so an upper bound on its speed inside a step), and the same through
  ``DecodeLinear`` (oneDNN).

    python benchmarks/bench_decode_step.py [--shapes demo,12x768] [--tokens 51] [--compile]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch._inductor.config
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


def step_us(
    model: DecoderLM, prompt: torch.Tensor, steps: int, repeats: int, compiled: bool
) -> dict[str, float]:
    """Microseconds of one decode step per contender, alternating; compile seconds if any."""
    step_fns = {"fast": model.decode_step, "plain": None}
    extra: dict[str, float] = {}
    if compiled:
        with torch._inductor.config.patch(cpp_wrapper=True):
            step_fns["compiled"] = torch.compile(model.decode_step)
            cache = model.new_kv_cache(1, prompt.shape[1] + 4)
            start = time.perf_counter()
            with torch.inference_mode():  # inductor picks its own kernels for the linear layers
                model.next_token_logits(prompt, cache)
                for _ in range(4):  # the first call compiles, the second marks the length dynamic
                    step_fns["compiled"](prompt[:, -1], cache)
            extra["compile_s"] = time.perf_counter() - start
    caches = {name: model.new_kv_cache(1, prompt.shape[1] + steps) for name in step_fns}
    token = prompt[:, -1]

    def run(name: str) -> None:
        cache, step = caches[name], step_fns[name]
        cache.reset()
        with torch.inference_mode(), decoding_layout(model, name == "fast"):
            model.next_token_logits(prompt, cache)  # the prefill, subtracted below
            for _ in range(steps):
                if step is None:
                    model.next_token_logits(token[:, None], cache)
                else:
                    step(token, cache)

    fns = {name: (lambda name=name: run(name)) for name in step_fns}
    times = time_alternating(
        {**fns, "prefill": lambda: run_prefill(model, prompt)}, warmup=2, repeats=repeats
    )
    base = median(times["prefill"])
    return {name: (median(times[name]) - base) / steps * 1e6 for name in step_fns} | extra


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
    parser.add_argument("--compile", action="store_true", help="add a compiled decode_step")
    args = parser.parse_args()
    rows, matrices = [], {}
    for label in args.shapes.split(","):
        torch.manual_seed(0)
        model = DecoderLM(ModelConfig(**SHAPES[label])).eval()
        prompt = torch.arange(16)[None]
        steps = step_us(model, prompt, args.tokens, args.repeats, args.compile)
        compiled = (
            {"compiled_step_us": steps["compiled"], "compile_s": steps["compile_s"]}
            if args.compile
            else {}
        )
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
                **compiled,
            }
        )
        matrices[label] = matrix_rows(model)
        print(f"{label}: one row times each matrix, alone")
        print(markdown_table(matrices[label]))
    emit("decode_step", rows, {"matrices": matrices})


if __name__ == "__main__":
    main()
