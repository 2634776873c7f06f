"""Where one decode step's time goes at a small shape: ATen calls per token, and each matmul alone.

The demo preset's shape (4 x 192, vocabulary 2048, RoPE, RMSNorm, ReLU², no biases; random
weights). Two figures: the ATen operator calls ``model.generate`` makes per new token (counted by
``torch.profiler``, nested calls included), and the microseconds of one ``F.linear`` of a single
row by each matrix of the model, timed alone (in cache, so an upper bound on its speed inside a
step).

    python benchmarks/bench_decode_step.py [--tokens 51]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
import torch.profiler

from quillgpt import DecoderLM, ModelConfig

from common import emit, median_us_per_call

DEMO = dict(vocab_size=2048, block_size=128, n_layer=4, n_head=3, n_embd=192, pos_encoding="rope",
            bias=False, activation="relu2", norm="rmsnorm", attention="reference")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=51)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = DecoderLM(ModelConfig(**DEMO)).eval()
    prompt = torch.arange(16)[None]
    model.generate(prompt, 8)  # warm-up
    with torch.profiler.profile() as prof:
        model.generate(prompt, args.tokens)
    calls = sum(e.count for e in prof.key_averages() if e.key.startswith("aten::"))
    block = model.blocks[0]
    layers = {"qkv": block.attn.qkv, "attn.proj": block.attn.proj, "ffn.fc": block.ffn.fc,
              "ffn.proj": block.ffn.proj, "lm_head": model.lm_head}  # fmt: skip
    inputs = {name: torch.randn(1, layer.in_features) for name, layer in layers.items()}
    fns = {
        name: (lambda w=layer.weight, x=inputs[name]: F.linear(x, w))
        for name, layer in layers.items()
    }
    us = median_us_per_call(fns, calls=2000, repeats=7)
    rows = [{"matrix": name, "shape": tuple(layer.weight.shape), "us_per_call": us[name]}
            for name, layer in layers.items()]  # fmt: skip
    print(f"ATen calls per generated token: {calls / args.tokens:.0f}")
    emit("decode_step", rows, {"aten_calls_per_token": calls / args.tokens})


if __name__ == "__main__":
    main()
