"""GPU efficiency and the CUDA code paths, in one prepared script (a few minutes on one GPU).

On a CUDA machine::

    python benchmarks/gpu_check.py                      # checks + GPT-2 124M training MFU
    python benchmarks/gpu_check.py --steps 300 --batch-size 16,32 --peak-tflops 989
    python benchmarks/gpu_check.py --skip-pytest --batch-size 32 --vocab-multiple 64

1. **Checks** of the CUDA paths the CPU test suite cannot reach, on a small model: fp16 autocast
   with a gradient scaler, bf16 autocast, gradient checkpointing (same gradients as without),
   generation (the same greedy tokens as on the CPU, cache or not, seeded sampling reproducible),
   fused flash attention in bf16, peak-memory reporting; then the test suite's CUDA-only tests
   (``pytest -k cuda``).
2. **Training throughput** of the ``gpt2`` preset (124M parameters, context 1024): bf16 autocast,
   PyTorch's fused attention (flash), ``torch.compile``, fused AdamW, random tokens, ``--steps``
   timed steps after ``--warmup`` (compilation) steps, once per ``--batch-size`` (a row each;
   ``--vocab-multiple 64`` pads the vocabulary as nanoGPT does). Reported: tokens/s and MFU,
   the achieved share of the card's dense bf16 peak (H100 SXM: 989 TFLOP/s), with training FLOPs
   per token ``6 N + 12 L T C`` where ``N`` counts every weight matrix multiplied per token, the
   output head included (a tied head is the embedding matrix, used as a matmul). The same figure
   with ``N`` without the head (the non-embedding count) is reported alongside.

``--dry-run`` runs everything on the CPU at toy sizes (no compile, no pytest): it proves the
script works where no GPU is present, and is what the test suite runs.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import gc
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from quillgpt import DecoderLM, ModelConfig
from quillgpt.device import peak_memory_bytes, reset_peak_memory, synchronize
from quillgpt.training.optim import param_groups
from quillgpt.training.precision import Precision

from common import emit, markdown_table

ROOT = Path(__file__).resolve().parents[1]

# Dense bf16 tensor-core peaks (no sparsity), TFLOP/s, from the vendors' data sheets.
PEAK_BF16_TFLOPS = {
    "H100 SXM": 989.0,
    "H100 80GB HBM3": 989.0,  # the SXM part's device name
    "H200": 989.0,
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
}


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    """The card's dense bf16 peak: ``--peak-tflops``, else looked up from the device name."""
    if override is not None:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in name:
            return value
    return None


def flops_per_token(model: DecoderLM, seq_len: int, *, with_head: bool = True) -> float:
    """Training FLOPs per token: ``6 N + 12 L T C`` (forward + backward, attention included)."""
    cfg = model.config
    n = model.num_parameters(exclude_embeddings=True)
    if with_head and cfg.tie_weights:
        n += cfg.vocab_size * cfg.n_embd  # the tied head is a (V, C) matmul on every token
    return 6 * n + 12 * cfg.n_layer * seq_len * cfg.n_embd


# ---------------------------------------------------------------- checks


def small_model(device: torch.device) -> DecoderLM:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=128, block_size=64, n_layer=2, n_head=4, n_embd=64)
    return DecoderLM(cfg).to(device)


def train_steps(model: DecoderLM, precision: Precision, steps: int) -> list[float]:
    """A few optimizer steps on one fixed batch (losses must fall); returns the losses."""
    device = precision.device
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, model.config.vocab_size, (4, 32), generator=gen).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    model.train()
    for _ in range(steps):
        with precision.autocast():
            _, loss = model(x, x)
        precision.scaler.scale(loss).backward()
        precision.scaler.step(optimizer)
        precision.scaler.update()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def check_amp(device: torch.device, name: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fp16 on a CPU falls back to fp32 (dry run)
        precision = Precision.for_device(device, name)
    model = small_model(device)
    losses = train_steps(model, precision, 20)
    assert all(torch.isfinite(torch.tensor(losses))), losses
    assert losses[-1] < losses[0] - 0.5, f"loss did not fall: {losses[0]:.3f} -> {losses[-1]:.3f}"
    assert all(torch.isfinite(p).all() for p in model.parameters())
    detail = f"{precision.name}: loss {losses[0]:.3f} -> {losses[-1]:.3f}"
    if precision.scaler.is_enabled():
        detail += f", loss scale {precision.scaler.get_scale():.0f}"
    if device.type == "cuda":
        expected = {"fp16": torch.float16, "bf16": torch.bfloat16}[name]
        assert precision.dtype == expected and precision.scaler.is_enabled() == (name == "fp16")
    return detail


def check_gradient_checkpointing(device: torch.device) -> str:
    model = small_model(device)
    x = torch.randint(0, 128, (2, 64), device=device)
    grads = []
    for flag in (False, True):
        model.zero_grad(set_to_none=True)
        model.gradient_checkpointing = flag
        model.train()
        model(x, x)[1].backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    worst = max((a - b).abs().max().item() for a, b in zip(*grads, strict=True))
    assert worst < 1e-5, f"gradients differ by {worst}"
    return f"max gradient difference {worst:.1e}"


def check_generation(device: torch.device) -> str:
    model = small_model(device).eval()
    with torch.no_grad():
        model.tok_emb.weight.mul_(30.0)  # decisive logits: no near-ties for rounding to flip
    reference = copy.deepcopy(model).cpu()
    prompt = torch.randint(0, 128, (2, 5))
    with exact_fp32():
        on_device = model.generate(prompt.to(device), 24).cpu()
        assert torch.equal(on_device, reference.generate(prompt, 24)), "differs from the CPU"
        no_cache = model.generate(prompt.to(device), 24, use_cache=False).cpu()
        assert torch.equal(on_device, no_cache), "KV cache changes the tokens"
    a = model.generate(prompt.to(device), 16, temperature=1.0, top_k=20, seed=7)
    b = model.generate(prompt.to(device), 16, temperature=1.0, top_k=20, seed=7)
    assert torch.equal(a, b), "seeded sampling is not reproducible"
    return "greedy = CPU tokens, cache = no cache, seeded sampling reproducible"


@contextlib.contextmanager
def exact_fp32() -> Iterator[None]:
    """Plain fp32 matmuls inside the block (TF32 would make GPU and CPU tokens differ)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def check_flash_attention(device: torch.device) -> str:
    if device.type != "cuda":
        return "skipped (no CUDA)"
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model = DecoderLM(
        ModelConfig(vocab_size=256, block_size=1024, n_layer=1, n_head=12, n_embd=768)
    ).to(device)
    x = torch.randint(0, 256, (2, 1024), device=device)
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]), torch.autocast("cuda", torch.bfloat16):
        model(x, x)[1].backward()
    return "flash attention kernel runs forward and backward in bf16"


def check_peak_memory(device: torch.device) -> str:
    reset_peak_memory(device)
    tensor = torch.empty(64 * 2**20, dtype=torch.uint8, device=device)
    peak = peak_memory_bytes(device)
    del tensor
    assert peak >= 64 * 2**20, peak
    return f"peak {peak / 2**20:.0f} MiB after a 64 MiB allocation"


def run_checks(device: torch.device) -> list[dict[str, object]]:
    checks: dict[str, Callable[[], str]] = {
        "fp16 autocast + GradScaler": lambda: check_amp(device, "fp16"),
        "bf16 autocast": lambda: check_amp(device, "bf16"),
        "gradient checkpointing": lambda: check_gradient_checkpointing(device),
        "generation": lambda: check_generation(device),
        "flash attention (bf16)": lambda: check_flash_attention(device),
        "peak memory": lambda: check_peak_memory(device),
    }
    rows = []
    for name, fn in checks.items():
        try:
            rows.append({"check": name, "ok": True, "detail": fn()})
        except Exception as exc:  # report every check, then fail at the end
            rows.append({"check": name, "ok": False, "detail": f"{type(exc).__name__}: {exc}"})
    return rows


def run_cuda_tests(timeout: int) -> dict[str, object]:
    """The test suite's CUDA-only tests (skipped on CPU machines), in a subprocess."""
    command = [sys.executable, "-m", "pytest", "-q", "-k", "cuda", "-p", "no:cacheprovider"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    tail = (result.stdout + result.stderr).strip().splitlines()[-1:]
    return {"check": "pytest -k cuda", "ok": result.returncode == 0, "detail": " ".join(tail)}


# ---------------------------------------------------------------- training MFU


def train_throughput(args: argparse.Namespace, device: torch.device) -> dict[str, object]:
    torch.manual_seed(0)
    config = ModelConfig.preset(args.preset, dropout=0.0)
    padded = -(-config.vocab_size // args.vocab_multiple) * args.vocab_multiple
    config = dataclasses.replace(config, vocab_size=padded)
    seq_len = config.block_size
    model = DecoderLM(config).to(device)
    precision = Precision.for_device(device, "bf16" if device.type == "cuda" else "auto")
    fused = device.type == "cuda"
    optimizer = torch.optim.AdamW(param_groups(model, 0.1), lr=6e-4, betas=(0.9, 0.95), fused=fused)
    step_model = torch.compile(model) if args.compile else model
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    batch = args.batch_size
    x = torch.randint(0, config.vocab_size, (batch, seq_len + 1), device=device)
    inputs, targets = x[:, :-1].contiguous(), x[:, 1:].contiguous()

    def step() -> torch.Tensor:
        with precision.autocast():
            _, loss = step_model(inputs, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    model.train()
    start = time.perf_counter()
    for _ in range(args.warmup):
        step()
    synchronize(device)
    warmup_s = time.perf_counter() - start
    reset_peak_memory(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    synchronize(device)
    seconds = time.perf_counter() - start
    tokens_per_s = args.steps * batch * seq_len / seconds
    peak = peak_tflops(device, args.peak_tflops)
    achieved = flops_per_token(model, seq_len) * tokens_per_s
    achieved_no_head = flops_per_token(model, seq_len, with_head=False) * tokens_per_s
    return {
        "preset": args.preset,
        "vocab_size": config.vocab_size,
        "parameters": model.num_parameters(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "precision": precision.name,
        "compile": args.compile,
        "batch_size": batch,
        "seq_len": seq_len,
        "steps": args.steps,
        "warmup_steps": args.warmup,
        "warmup_seconds": warmup_s,
        "ms_per_step": seconds / args.steps * 1e3,
        "tokens_per_s": tokens_per_s,
        "model_tflops": achieved / 1e12,
        "peak_tflops": peak,
        "mfu": achieved / (peak * 1e12) if peak else None,
        "mfu_without_head": achieved_no_head / (peak * 1e12) if peak else None,
        "final_loss": loss.item(),
        "peak_memory_gib": peak_memory_bytes(device) / 2**30,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, toy sizes: test the script")
    parser.add_argument("--preset", default=None, help="model of the MFU run (default: gpt2)")
    parser.add_argument(
        "--batch-size",
        default=None,
        help="one or more, comma-separated: a row each (default: 16,32; dry run 2)",
    )
    parser.add_argument(
        "--vocab-multiple",
        type=int,
        default=1,
        help="pad the vocabulary to a multiple of this (nanoGPT uses 64: faster matmuls)",
    )
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 300)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps (default 30)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the card's bf16 peak")
    parser.add_argument("--no-compile", dest="compile", action="store_false", default=None)
    parser.add_argument("--skip-pytest", action="store_true")
    parser.add_argument("--name", default="gpu_check", help="results/<name>.json")
    args = parser.parse_args(argv)
    dry = args.dry_run
    if not dry and not torch.cuda.is_available():
        print("gpu_check: no CUDA device; use --dry-run to exercise the script on the CPU")
        return 2
    device = torch.device("cpu" if dry else "cuda")
    args.preset = args.preset or ("tiny" if dry else "gpt2")
    batch_sizes = [int(b) for b in (args.batch_size or ("2" if dry else "16,32")).split(",")]
    args.steps = args.steps or (3 if dry else 300)
    args.warmup = args.warmup if args.warmup is not None else (1 if dry else 30)
    args.compile = (not dry) if args.compile is None else args.compile
    checks = run_checks(device)
    if not dry and not args.skip_pytest:
        checks.append(run_cuda_tests(timeout=300))
    print(markdown_table(checks))
    rows = []
    for batch_size in batch_sizes:
        args.batch_size = batch_size
        training = None
        while training is None:
            try:
                training = train_throughput(args, device)
            except torch.cuda.OutOfMemoryError:
                if args.batch_size == 1:
                    raise
                args.batch_size //= 2
                print(f"gpu_check: out of memory, retrying with batch size {args.batch_size}")
            gc.collect()  # a failed attempt's tensors are free once its traceback is gone
            if device.type == "cuda":
                torch.cuda.empty_cache()
        rows.append(training)
    emit(args.name, rows, {"checks": checks, "dry_run": dry})
    return 0 if all(row["ok"] for row in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
