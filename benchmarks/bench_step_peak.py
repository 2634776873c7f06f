"""How close the demo's training step comes to the machine's matmul peak, and where the rest goes.

**The peak.** Every matrix product of one training step of the demo shape (``configs/
shakespeare-bpe-cpu.toml``: 4 layers, C = 192, T = 128, batch 16, 2048 ids) is timed alone on hot
data, in bf16 and in fp32: for each linear layer and the head, the forward product and the two of
the backward pass (to the input, to the weight); for attention, the scores ``Q K^T`` and ``P V``
and their backward products, batched over heads as ``torch.bmm``. Their FLOPs over their summed
time is the peak that these sizes reach on this CPU with PyTorch's kernels.

**The step.** The model's FLOPs per token (``6 N + 12 L T C``: the matmuls of every parameter,
forward and backward, and attention's; the estimate of the PaLM and nanoGPT papers) times the
tokens per second of a real step (the presets' optimiser, compiled as the trainer compiles it:
``loss_of(model)``, the loss alone; bf16 autocast or fp32; medians of alternated timings) over
the peak is the fraction reached. Muon's Newton-Schulz products are not model FLOPs: its time
counts against the fraction.

``--profile`` adds the top operators of five compiled steps (``torch.profiler``, self CPU time,
grouped by input shapes), with each of inductor's generated kernels named on its own row.

    python benchmarks/bench_step_peak.py [--repeats 20] [--profile]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import torch

from quillgpt import DecoderLM, ModelConfig
from quillgpt.training.config import TrainConfig, build_configs, load_config_file
from quillgpt.training.loop import loss_of
from quillgpt.training.optim import build_optimizer

from common import emit, median, time_alternating

ROOT = Path(__file__).resolve().parent.parent
PRESETS = {
    "v1": ROOT / "configs" / "shakespeare-bpe-cpu-v1.toml",
    "demo": ROOT / "configs" / "shakespeare-bpe-cpu.toml",
}
VARIANTS: dict[str, tuple[str, dict[str, str]]] = {
    "v1": ("v1", {}),
    "v1 + written-out attention": ("v1", {"attention": "reference"}),
    "demo, sdpa attention": ("demo", {"attention": "sdpa"}),
    "demo, logits a graph output": ("demo", {}),
    "demo": ("demo", {}),
}
"""Contenders: a preset and changes to its model config."""
LOGITS_OUT = {"demo, logits a graph output"}
"""Contenders compiled as ``torch.compile(model)``, returning the logits with the loss (what
training compiled before session 9), instead of the trainer's ``loss_of(model)``."""
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def variant(name: str) -> tuple[ModelConfig, TrainConfig]:
    """A contender's model (with the BPE vocabulary) and training configs."""
    preset, changes = VARIANTS[name]
    sections = load_config_file(PRESETS[preset])
    model_config, train_config = build_configs(sections.get("model"), sections.get("train"))
    vocab_size = train_config.tokenizer_vocab  # a BPE tokenizer learns exactly that many ids
    return dataclasses.replace(model_config, vocab_size=vocab_size, **changes), train_config


def timed(fn: Callable[[], object], repeats: int) -> float:
    """Median seconds of ``fn`` after a warm-up."""
    for _ in range(5):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return median(times)


def matmul_products(cfg: ModelConfig, batch: int) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """The shapes ``(a, b)`` of every product ``a @ b`` in one training step."""
    tokens, C, T = batch * cfg.block_size, cfg.n_embd, cfg.block_size
    products = []
    linears = [(C, 3 * C), (C, C), (C, cfg.ffn_hidden), (cfg.ffn_hidden, C)] * cfg.n_layer
    for n_in, n_out in [*linears, (C, cfg.vocab_size)]:
        products += [
            ((tokens, n_in), (n_in, n_out)),  # forward
            ((tokens, n_out), (n_out, n_in)),  # gradient of the input
            ((n_out, tokens), (tokens, n_in)),  # gradient of the weight
        ]
    heads, D = batch * cfg.n_head, C // cfg.n_head
    for _ in range(cfg.n_layer):
        products += [((heads, T, D), (heads, D, T)), ((heads, T, T), (heads, T, D))] * 3
    return products


def flops_of(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    """Multiply-adds times two of ``a @ b`` (batched if 3-D)."""
    batch = a[0] if len(a) == 3 else 1
    return 2 * batch * a[-2] * a[-1] * b[-1]


def peak(cfg: ModelConfig, batch: int, dtype: torch.dtype, repeats: int) -> dict[str, float]:
    """Summed time and FLOP/s of the step's products, each timed alone in ``dtype``."""
    seconds = flops = 0.0
    for a, b in matmul_products(cfg, batch):
        x, y = torch.randn(a, dtype=dtype), torch.randn(b, dtype=dtype)
        seconds += timed(lambda x=x, y=y: x @ y, repeats)
        flops += flops_of(a, b)
    return {"matmul_ms": seconds * 1e3, "peak_gflop_s": flops / seconds / 1e9}


def model_flops_per_token(cfg: ModelConfig) -> float:
    """``6 N + 12 L T C``: N counts the blocks' matrices and the head (embeddings are lookups)."""
    C = cfg.n_embd
    matrices = cfg.n_layer * (4 * C * C + 2 * C * cfg.ffn_hidden) + C * cfg.vocab_size
    return 6 * matrices + 12 * cfg.n_layer * cfg.block_size * C


def training_step(
    cfg: ModelConfig, train_cfg: TrainConfig, dtype: torch.dtype, logits_out: bool = False
) -> Callable[[], None]:
    """One compiled optimiser step of the recipe of ``train_cfg`` on random tokens, as trained.

    ``logits_out``: compile the model itself, whose graph then outputs the logits too.
    """
    torch.manual_seed(0)
    model = DecoderLM(cfg).train()
    optimizer = build_optimizer(model, train_cfg)
    if hasattr(optimizer, "muon"):  # the dtype the trainer picks: bf16 only where native
        optimizer.muon.dtype = dtype  # type: ignore[union-attr]
    compiled = torch.compile(model if logits_out else loss_of(model))
    x = torch.randint(0, cfg.vocab_size, (train_cfg.batch_size, cfg.block_size))
    y = torch.randint(0, cfg.vocab_size, (train_cfg.batch_size, cfg.block_size))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            out = compiled(x, y)
        loss = out[1] if logits_out else out
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def profile_table(step: Callable[[], None], top: int) -> str:
    """The ``top`` operators of ``step`` by self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(5):
            step()
    return prof.key_averages(group_by_input_shape=True).table(
        sort_by="self_cpu_time_total", row_limit=top, max_name_column_width=70
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--profile", action="store_true", help="top operators of each step")
    args = parser.parse_args()
    torch._dynamo.config.recompile_limit = 64  # a compiled model per contender and dtype
    if args.profile:  # inductor's kernels as rows of their own (the compile must know)
        torch._inductor.config.cpp.enable_kernel_profile = True
    cfg, train_cfg = variant("demo")
    batch = train_cfg.batch_size
    per_token = model_flops_per_token(cfg)
    rows, profiles = [], {}
    for dtype_name in args.dtypes:
        dtype = DTYPES[dtype_name]
        floor = peak(cfg, batch, dtype, args.repeats)
        steps = {
            name: training_step(*variant(name), dtype, logits_out=name in LOGITS_OUT)
            for name in VARIANTS
        }
        times = time_alternating(steps, warmup=3, repeats=args.repeats)
        for name, step_times in times.items():
            seconds = median(step_times)
            tokens_per_s = batch * cfg.block_size / seconds
            rows.append(
                {
                    "dtype": dtype_name,
                    "contender": name,
                    "step_ms": seconds * 1e3,
                    "tokens_per_s": tokens_per_s,
                    "gflop_s": tokens_per_s * per_token / 1e9,
                    "peak_gflop_s": floor["peak_gflop_s"],
                    "of_peak": tokens_per_s * per_token / 1e9 / floor["peak_gflop_s"],
                    "matmul_ms": floor["matmul_ms"],
                }
            )
            if args.profile:
                profiles[f"{name}, {dtype_name}"] = profile_table(steps[name], top=40)
    for name, table in profiles.items():
        print(f"\n## {name}\n{table}")
    emit(
        "step_peak",
        rows,
        {"model_mflop_per_token": per_token / 1e6, "batch": batch, "repeats": args.repeats},
    )


if __name__ == "__main__":
    main()
