"""Greedy decoding side by side: quillgpt, ``transformers`` and llama.cpp on the same weights.

Each shape is a GPT-2-layout model (learned positions, LayerNorm, biases, tanh-GELU; random
weights, seed 0), written with quillgpt's own exporters to ``transformers`` (``to_hf``) and to
GGUF (``write_gguf``, llama.cpp's ``gpt2`` architecture) and loaded by each library, so all three
compute the same function. Batch 1, a ``--prompt-len`` prompt, ``--new-tokens`` greedy tokens
with a KV cache, the same thread count everywhere; contenders alternate in one process after
warm-up and the medians are reported, with whether each produced quillgpt's tokens.

Contenders:

* ``quill``: ``DecoderLM.generate`` as a user calls it (the default fast path).
* ``quill_plain``: ``generate(fast=False)``, the plain ``nn.Linear`` layers (the reference).
* ``hf``: ``transformers`` ``generate(do_sample=False)``.
* ``llama``: llama.cpp (llama-cpp-python) on the f32 GGUF file, greedy over its own logits.
* ``quill_int8`` and ``llama_q8_0``: quillgpt's int8 layers against llama.cpp's q8_0 file.

The bound: one decode step reads every weight once, so tokens/s <= read bandwidth / bytes per
token (``bench_decode.read_bandwidth``, ``torch.sum`` over 1 GiB).

    python benchmarks/bench_decode_llama.py [--shapes 12x768,4x192] [--repeats 5]
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from bench_decode import hf_copy, read_bandwidth, weight_bytes_per_token
from quillgpt import DecoderLM, ModelConfig
from quillgpt.data.tokenizer import train_bpe
from quillgpt.inference.quantize import quantize_int8
from quillgpt.interop.gguf import write_gguf

from common import emit, median, time_alternating

SHAPES = {  # the two shapes of issue 15, and GPT-2 124M itself for the transformers comparison
    "12x768": dict(n_layer=12, n_head=12, n_embd=768, vocab_size=2048),
    "4x192": dict(n_layer=4, n_head=3, n_embd=192, vocab_size=2048),
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, vocab_size=50257),
}


def llama_generate(llm, prompt: list[int], new_tokens: int) -> list[int]:
    """llama.cpp's greedy continuation of ``prompt``: the arg-max of its logits, step by step."""
    llm.reset()
    llm.eval(prompt)
    out: list[int] = []
    for _ in range(new_tokens):
        out.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        if len(out) < new_tokens:
            llm.eval([out[-1]])
    return out


def shape_row(label: str, fields: dict, args: argparse.Namespace, workdir: Path) -> dict:
    import llama_cpp

    torch.manual_seed(0)
    config = ModelConfig(block_size=1024, activation="gelu_tanh", **fields)
    model = DecoderLM(config).eval()
    threads = torch.get_num_threads()
    prompt = torch.randint(0, config.vocab_size, (1, args.prompt_len))
    n = args.new_tokens
    with_llama = config.vocab_size <= 4096  # a GGUF vocabulary needs a tokenizer of that size
    int8 = quantize_int8(copy.deepcopy(model))
    fns = {
        "quill": lambda: model.generate(prompt, n)[0, -n:].tolist(),
        "quill_plain": lambda: model.generate(prompt, n, fast=False)[0, -n:].tolist(),
        "quill_int8": lambda: int8.generate(prompt, n)[0, -n:].tolist(),
    }
    hf = hf_copy(model)

    def hf_generate() -> list[int]:
        with torch.inference_mode():
            mask = torch.ones_like(prompt)
            out = hf.generate(prompt, max_new_tokens=n, do_sample=False, attention_mask=mask)
        return out[0, -n:].tolist()

    fns["hf"] = hf_generate
    if with_llama:
        tokenizer = train_bpe(["the quick brown fox jumps over the lazy dog\n"] * 50, 300)
        for kind, name in (("f32", "llama"), ("q8_0", "llama_q8_0")):
            path = workdir / f"{label}-{kind}.gguf"
            write_gguf(model, tokenizer, path, file_type=kind)
            llm = llama_cpp.Llama(
                str(path), n_ctx=args.prompt_len + n, n_threads=threads, n_batch=64,
                logits_all=True, verbose=False,
            )  # fmt: skip
            fns[name] = lambda llm=llm: llama_generate(llm, prompt[0].tolist(), n)
    outputs = {name: fn() for name, fn in fns.items()}
    times = time_alternating(fns, warmup=args.warmup, repeats=args.repeats)
    row: dict[str, object] = {"shape": label, "params": model.num_parameters()}
    for name, ts in times.items():
        row[f"{name}_tok_s"] = n / median(ts)
    bound = read_bandwidth() / weight_bytes_per_token(model)
    row["bound_tok_s"] = bound
    reference = outputs["quill_plain"]
    for name in fns:
        row[f"{name}_same_tokens"] = outputs[name] == reference
    if with_llama:
        row["quill_vs_llama"] = row["quill_tok_s"] / row["llama_tok_s"]
        row["int8_vs_q8_0"] = row["quill_int8_tok_s"] / row["llama_q8_0_tok_s"]
    row["quill_vs_hf"] = row["quill_tok_s"] / row["hf_tok_s"]
    row["quill_of_bound"] = row["quill_tok_s"] / bound
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="12x768,4x192,gpt2", help=f"of {sorted(SHAPES)}")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompt-len", type=int, default=16)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        rows = [shape_row(s, SHAPES[s], args, Path(tmp)) for s in args.shapes.split(",")]
    emit("decode_llama", rows, {"prompt_len": args.prompt_len, "new_tokens": args.new_tokens})


if __name__ == "__main__":
    main()
