"""Greedy decoding speed of DecoderLM against transformers' generate, on the same GPT-2 weights.

A GPT-2-124M-shaped model (random weights, seed 0, tanh-GELU as in GPT-2) is exported with the
interop (``to_hf``) and loaded back as ``GPT2LMHeadModel``, so both sides compute the same
function. Each contender generates ``--new-tokens`` tokens greedily with a KV cache after a
``--prompt-len``-token prompt, fp32, timings alternating in one process after warm-up; medians.

Contenders:

* ``hf``: ``GPT2LMHeadModel.generate(do_sample=False)``.
* ``quill``: ``DecoderLM.generate`` as it comes (on a CPU in fp32, the ``DecodeLinear`` layout
  for the duration of the call).
* ``quill_plain``: ``DecoderLM.generate(fast=False)``: the plain ``nn.Linear`` layers.

Decoding one token reads every weight once, so ``tokens/s <= read bandwidth / weight bytes``.
The read bandwidth is measured with ``torch.sum`` over 1 GiB; the "bound" columns use it.
A second table times the largest matrix (the 50257 x 768 output head) times one vector with
each kernel, to show where the gap comes from; a third compares the two layouts on the smaller
model shapes of the CPU presets (batch 1, 100 new tokens).

    python benchmarks/bench_decode.py [--repeats 5] [--batch-sizes 1,8]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings

import torch
import torch.nn.functional as F

from quillgpt import DecoderLM, ModelConfig
from quillgpt.model.decode_layout import DecodeLinear, decoding_layout

from common import emit, markdown_table, median, time_alternating


def read_bandwidth(nbytes: int = 1 << 30, repeats: int = 7) -> float:
    """Bytes per second that ``torch.sum`` streams from a tensor far larger than the caches."""
    big = torch.ones(nbytes // 4)
    big.sum()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        big.sum()
        times.append(time.perf_counter() - start)
    return nbytes / median(times)


def weight_bytes_per_token(model: DecoderLM) -> int:
    """Bytes of parameters one decode step reads: every matrix and vector, one embedding row each.

    The token and position tables are looked up, not multiplied: one row of each is read (the
    tied output head, a full read of the token table, is counted as its own matrix).
    """
    seen, total = set(), 0
    for module in model.modules():
        for p in module.parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            if isinstance(module, torch.nn.Embedding):
                total += p.shape[1] * p.element_size()
            else:
                total += p.numel() * p.element_size()
    lm_head = model.lm_head.weight
    if id(lm_head) == id(model.tok_emb.weight):
        total += lm_head.numel() * lm_head.element_size()
    return total


def hf_copy(model: DecoderLM) -> torch.nn.Module:
    from transformers import GPT2LMHeadModel

    from quillgpt.interop import to_hf

    with tempfile.TemporaryDirectory() as tmp:
        to_hf(model, tmp)
        hf = GPT2LMHeadModel.from_pretrained(tmp, local_files_only=True).eval()
    hf.generation_config.eos_token_id = None  # always generate exactly max_new_tokens
    hf.generation_config.pad_token_id = 0
    return hf


def matvec_rows(repeats: int) -> list[dict[str, object]]:
    """GB/s of one (1, 768) x (768, 50257) product per kernel, with 1 thread and with all."""
    torch.manual_seed(0)
    weight = torch.randn(50257, 768)  # nn.Linear layout (out, in): 154 MB, far beyond L3
    transposed = weight.t().contiguous()  # (in, out), as HF's Conv1D stores it
    x = torch.randn(1, 768)
    head = torch.nn.Linear(768, 50257, bias=False)
    head.weight.data = weight
    threads = torch.get_num_threads()
    fast = DecodeLinear(head)
    kernels = {
        "F.linear(x, W) [W: (N, C)]": lambda: F.linear(x, weight),
        "torch.mv(W, x) [W: (N, C)]": lambda: torch.mv(weight, x[0]),
        "x @ W [W: (C, N)]": lambda: x @ transposed,
        "DecodeLinear (oneDNN) [W: (N, C)]": lambda: fast(x),
    }
    rows = []
    for num_threads in sorted({1, threads}):
        torch.set_num_threads(num_threads)
        times = time_alternating(kernels, warmup=3, repeats=repeats)
        for name, ts in times.items():
            rows.append(
                {
                    "kernel": name,
                    "threads": num_threads,
                    "ms": median(ts) * 1e3,
                    "GB_s": weight.nbytes / median(ts) / 1e9,
                }
            )
    torch.set_num_threads(threads)
    return rows


# small shapes (CPU-preset sized) for the layout-vs-size table
SIZES = {
    "tiny (2x64, V256)": dict(vocab_size=256, block_size=64, n_layer=2, n_head=2, n_embd=64),
    "4x192, V70, rope": dict(
        vocab_size=70, block_size=256, n_layer=4, n_head=4, n_embd=192, pos_encoding="rope"
    ),
    "4x256, V2048, rope": dict(
        vocab_size=2048, block_size=128, n_layer=4, n_head=4, n_embd=256, pos_encoding="rope"
    ),
    "small (6x384, V256)": dict(vocab_size=256, block_size=256, n_layer=6, n_head=6, n_embd=384),
    "6x512, V4096": dict(vocab_size=4096, block_size=256, n_layer=6, n_head=8, n_embd=512),
}


def size_rows(repeats: int, new_tokens: int = 100) -> list[dict[str, object]]:
    """DecoderLM.generate with nn.Linear (fast=False) vs its default layout, for smaller models."""
    rows = []
    for label, fields in SIZES.items():
        torch.manual_seed(0)
        model = DecoderLM(ModelConfig(**fields)).eval()
        with decoding_layout(model) as converted:  # what the default converts
            pass
        prompt = torch.randint(0, fields["vocab_size"], (1, 16))
        n = min(new_tokens, fields["block_size"] - 16)
        fns = {
            name: (lambda m=model, fast=fast, p=prompt, n=n: m.generate(p, n, fast=fast))
            for name, fast in (("plain", False), ("fast", True))
        }
        times = time_alternating(fns, warmup=1, repeats=repeats)
        rows.append(
            {
                "model": label,
                "layers_converted": converted,
                "nn_linear_tok_s": n / median(times["plain"]),
                "decode_linear_tok_s": n / median(times["fast"]),
                "ratio": median(times["plain"]) / median(times["fast"]),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--preset", default="gpt2", help="model shape (a ModelConfig preset)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    config = ModelConfig.preset(args.preset, activation="gelu_tanh")
    model = DecoderLM(config).eval()
    hf = hf_copy(model)
    bandwidth = read_bandwidth()
    per_token = weight_bytes_per_token(model)
    bound = bandwidth / per_token
    rows = []
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        prompt = torch.randint(0, config.vocab_size, (batch, args.prompt_len))
        n = args.new_tokens

        def hf_generate(prompt=prompt, n=n):
            with torch.inference_mode():
                mask = torch.ones_like(prompt)
                return hf.generate(prompt, max_new_tokens=n, do_sample=False, attention_mask=mask)

        fns = {
            "hf": hf_generate,
            "quill": lambda prompt=prompt, n=n: model.generate(prompt, n),
            "quill_plain": lambda prompt=prompt, n=n: model.generate(prompt, n, fast=False),
        }
        outputs = {name: fn() for name, fn in fns.items()}
        times = time_alternating(fns, warmup=args.warmup, repeats=args.repeats)
        row: dict[str, object] = {"batch": batch}
        for name, ts in times.items():
            row[f"{name}_tok_s"] = batch * n / median(ts)
        for name in ("quill", "quill_plain"):
            row[f"{name}_vs_hf"] = row[f"{name}_tok_s"] / row["hf_tok_s"]
            same = (outputs[name] == outputs["hf"]).float().mean().item()
            row[f"{name}_same_tokens_as_hf"] = same
        for name in times:
            # a batch of B rows reads the weights once per step for all B tokens
            row[f"{name}_of_bound"] = row[f"{name}_tok_s"] / (bound * batch)
        rows.append(row)
    kernels = matvec_rows(max(args.repeats, 10))
    sizes = size_rows(args.repeats)
    extra = {
        "model": f"{args.preset}: {model.num_parameters():,} parameters, fp32",
        "prompt_len": args.prompt_len,
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "read_bandwidth_GB_s": bandwidth / 1e9,
        "weight_bytes_per_token": per_token,
        "bound_tok_s_batch1": bound,
        "matvec": kernels,
        "sizes": sizes,
    }
    print(
        f"read bandwidth {bandwidth / 1e9:.1f} GB/s (torch.sum over 1 GiB); "
        f"{per_token / 1e6:.1f} MB of weights per step -> bound {bound:.1f} steps/s"
    )
    print(markdown_table(kernels))
    print(markdown_table(sizes))
    emit("decode", rows, extra)


if __name__ == "__main__":
    main()
