"""Compile seconds, tokens/s and tokens in 5 minutes of the demo's step, per way of compiling.

Contenders (the model, optimiser, precision and step of ``quill train``, on the demo shape of
``configs/shakespeare-bpe-cpu.toml`` with random tokens of vocab 2048; bf16 autocast where the
CPU computes bf16 natively, else fp32):

* ``whole``: :func:`quillgpt.training.compiling.compiled`, what ``compile=on|auto`` does:
  ``torch.compile(model)``;
* ``regional``: each ``DecoderBlock``'s forward compiled on its own (PyTorch's "regional
  compilation" recipe; every layer runs the one compiled graph); embeddings, head, loss eager;
* ``nested``: the whole model with each block's forward a
  ``torch.compiler.nested_compile_region`` (hierarchical compilation: traced and compiled once,
  stamped out for every layer);
* ``eager``: no compilation.

Each compile measurement is a fresh process with its own inductor cache directory
(``TORCHINDUCTOR_CACHE_DIR``): empty for the first run ("cold": a first ``make demo``), the same
directory again for the second ("warm"). A run's compile seconds are its first three steps minus
three steady steps. Steady tokens/s come from one more process per repeat that builds every
contender and times their steps alternately (a, b, c, c, b, a, ...), so the machine's noise
falls on all alike; each process's own median is in the JSON too. That process first checks
each contender's gradients against eager ones on the same batch and weights, under the run's
autocast and in fp32 (``grad error``: the largest difference over the largest eager gradient;
bf16 rounding alone gives ~1e-2, fp32 ~1e-6).
``tokens in 300 s`` is ``(300 - compile seconds) x tokens/s``: what decides between the
contenders in the demo's 5-minute budget.

    python benchmarks/bench_compile.py [--repeats 3] [--steps 50] [--contenders whole,regional]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from common import emit, median

CONTENDERS = ("whole", "regional", "nested", "eager")
TIMED_FIRST = 3  # the steps that include compilation (forward, backward, any recompile)
BUDGET_S = 300.0
DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "shakespeare-bpe-cpu.toml"


def cpu_description() -> dict[str, object]:
    """The CPU's model name (as lscpu prints it) and whether it computes bf16 natively."""
    from quillgpt.device import cpu_supports_bf16

    name = "unknown"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                name = line.split(":", 1)[1].strip()
                break
    except (OSError, subprocess.CalledProcessError):
        pass
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return {
        "cpu_model": name,
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
        "native_bf16": cpu_supports_bf16(),
        "cores": os.cpu_count(),
    }


# --- the contenders ---------------------------------------------------------------------------


class SwappedForwards:
    """Call ``call`` with each block's ``forward`` replaced by ``forwards[i]`` for the call."""

    def __init__(self, call, blocks, forwards) -> None:
        self.call, self.swaps = call, list(zip(blocks, forwards, strict=True))

    def __call__(self, *args, **kwargs):
        for block, forward in self.swaps:
            block.forward = forward  # an instance attribute shadows the class's method
        try:
            return self.call(*args, **kwargs)
        finally:
            for block, _ in self.swaps:
                del block.forward


def regional(model: torch.nn.Module) -> SwappedForwards:
    """Each block's forward compiled on its own; they share one graph (same code and shapes)."""
    return SwappedForwards(model, model.blocks, [torch.compile(b.forward) for b in model.blocks])


def nested(model: torch.nn.Module) -> SwappedForwards:
    """``torch.compile(model)`` with each block's training call one nested compile region.

    The layer index (it only picks a KV-cache slot) is left out of the region's inputs: as an
    input it would fail the region's reuse check at every layer, and past 8 layers raise.
    """
    from quillgpt.model.block import DecoderBlock

    forward = DecoderBlock.forward
    region = torch.compiler.nested_compile_region(
        lambda block, x, attn_mask, rotary: forward(block, x, attn_mask, rotary)
    )

    def call(block, x, attn_mask=None, rotary=None, kv_cache=None, layer=0):
        if kv_cache is not None:
            return forward(block, x, attn_mask, rotary, kv_cache, layer)
        return region(block, x, attn_mask, rotary)

    methods = [types.MethodType(call, b) for b in model.blocks]
    return SwappedForwards(torch.compile(model), model.blocks, methods)


@dataclass
class Built:
    step: Any  # one optimiser step: step(micro_batches=[(x, y)])
    forward: Any
    model: torch.nn.Module
    batches: list
    tokens: int  # per step
    precision: Any  # quillgpt.training.precision.Precision


def build(config_path: str, contender: str, n_layer: int | None = None) -> Built:
    """The demo's model, optimiser and precision, and the training step ``train`` runs."""
    from quillgpt import DecoderLM, ModelConfig
    from quillgpt.training.compiling import compiled
    from quillgpt.training.config import TrainConfig, load_config_file
    from quillgpt.training.loop import train_step
    from quillgpt.training.optim import build_optimizer
    from quillgpt.training.parallel import Parallel
    from quillgpt.training.precision import Precision

    sections = load_config_file(config_path)
    model_section = {**sections["model"], "vocab_size": 2048}
    if n_layer is not None:
        model_section["n_layer"] = n_layer
    model_cfg = ModelConfig.from_dict(model_section)
    train_cfg = TrainConfig.from_dict({**sections["train"], "device": "cpu"})
    device = torch.device("cpu")
    torch.manual_seed(1337)
    model = DecoderLM(model_cfg).to(device).train()
    optimizer = build_optimizer(model, train_cfg)
    precision = Precision.for_device(device, train_cfg.precision)
    forward = {
        "whole": lambda: compiled(model, "on", device, "inductor"),
        "regional": lambda: regional(model),
        "nested": lambda: nested(model),
        "eager": lambda: model,
    }[contender]()
    step = functools.partial(train_step, forward, model, optimizer, precision=precision,
                             par=Parallel(device), grad_clip=train_cfg.grad_clip)  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    shape = (train_cfg.batch_size, model_cfg.block_size + 1)
    pool = [torch.randint(2048, shape, generator=generator) for _ in range(8)]
    batches = [[(w[:, :-1].contiguous(), w[:, 1:].contiguous())] for w in pool]
    tokens = train_cfg.batch_size * model_cfg.block_size
    return Built(step, forward, model, batches, tokens, precision)


def gradients(built: Built, autocast: bool) -> dict[str, torch.Tensor]:
    """The gradients of one forward and backward on the first batch (no optimiser step)."""
    (x, y), = built.batches[0]  # fmt: skip
    with built.precision.autocast() if autocast else contextlib.nullcontext():
        _, loss = built.forward(x, y)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in built.model.named_parameters()}
    built.model.zero_grad(set_to_none=True)
    return grads


# --- the child processes ----------------------------------------------------------------------


def child(args: argparse.Namespace) -> None:
    """Time ``args.steps`` steps of one contender; print one JSON line."""
    built = build(args.config, args.child, args.n_layer)
    times = []
    for i in range(args.steps):
        start = time.perf_counter()
        built.step(micro_batches=built.batches[i % len(built.batches)])
        times.append(time.perf_counter() - start)
    steady = median(times[TIMED_FIRST + 2 :])
    result = {
        "contender": args.child,
        "first_step_s": times[0],
        "compile_s": sum(times[:TIMED_FIRST]) - TIMED_FIRST * steady,
        "steady_step_s": steady,
        "tokens_per_s": built.tokens / steady,
        "precision": built.precision.name,
    }
    print(json.dumps(result), flush=True)


def alternate(args: argparse.Namespace) -> None:
    """Every contender in one process: gradient check, then steps timed alternately."""
    built = {name: build(args.config, name, args.n_layer) for name in args.contenders}
    eager = build(args.config, "eager", args.n_layer)
    errors: dict[str, dict[str, float]] = {}
    for autocast in (True, False):  # the run's precision, then fp32 (a CPU without bf16)
        reference = gradients(eager, autocast)
        scale = max(g.abs().max().item() for g in reference.values())
        key = eager.precision.name if autocast else "fp32"
        for name, b in built.items():
            grads = gradients(b, autocast)
            error = max((grads[n] - reference[n]).abs().max().item() for n in grads) / scale
            errors.setdefault(key, {})[name] = error
    times: dict[str, list[float]] = {name: [] for name in args.contenders}
    for i in range(args.steps):
        for name in args.contenders if i % 2 == 0 else args.contenders[::-1]:
            b = built[name]
            start = time.perf_counter()
            b.step(micro_batches=b.batches[i % len(b.batches)])
            if i >= TIMED_FIRST + 2:
                times[name].append(time.perf_counter() - start)
    tokens_per_s = {name: built[name].tokens / median(ts) for name, ts in times.items()}
    print(json.dumps({"tokens_per_s": tokens_per_s, "grad_error": errors}), flush=True)


# --- the parent: fresh processes, cold and warm caches ----------------------------------------


def run_child(args: argparse.Namespace, mode: str, contender: str, cache: Path) -> dict:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache)}
    command = [sys.executable, __file__, f"--{mode}", contender, "--config", args.config,
               "--steps", str(args.steps), "--contenders", ",".join(args.contenders)]  # fmt: skip
    if args.n_layer is not None:
        command += ["--n-layer", str(args.n_layer)]
    start = time.perf_counter()
    out = subprocess.run(command, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{mode} {contender} failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["process_s"] = time.perf_counter() - start
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="cold + warm runs per contender")
    parser.add_argument("--steps", type=int, default=50, help="steps per process")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="the demo's config file")
    parser.add_argument("--n-layer", type=int, help="override the config's layer count")
    parser.add_argument("--contenders", default=",".join(CONTENDERS),
                        help=f"comma-separated, from {', '.join(CONTENDERS)}")  # fmt: skip
    parser.add_argument("--child", choices=CONTENDERS, help=argparse.SUPPRESS)
    parser.add_argument("--alternate", choices=["all"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.contenders = args.contenders.split(",")
    if unknown := set(args.contenders) - set(CONTENDERS):
        parser.error(f"unknown contenders: {', '.join(sorted(unknown))}")
    if args.child:
        return child(args)
    if args.alternate:
        return alternate(args)

    compiling = [c for c in args.contenders if c != "eager"]
    runs: dict[str, dict[str, list[dict]]] = {c: {"cold": [], "warm": []} for c in compiling}
    alternating: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-compile-") as tmp:
        for r in range(args.repeats):
            order = compiling if r % 2 == 0 else compiling[::-1]
            for phase in ("cold", "warm"):  # the same directory: empty, then filled
                for c in order:
                    result = run_child(args, "child", c, Path(tmp) / f"{c}-{r}")
                    runs[c][phase].append(result)
                    print(f"repeat {r} {phase} {c}: compile {result['compile_s']:.1f} s, "
                          f"{result['tokens_per_s']:,.0f} tok/s", file=sys.stderr)  # fmt: skip
            result = run_child(args, "alternate", "all", Path(tmp) / "alternate")
            result.pop("process_s")
            alternating.append(result)
            print(f"repeat {r} alternating: {result}", file=sys.stderr)

    def worst_error(key: str, c: str) -> float:
        return float(f"{max(a['grad_error'][key][c] for a in alternating):.2g}")

    rows = []
    for c in args.contenders:
        tok_s = median([a["tokens_per_s"][c] for a in alternating])
        cold = median([x["compile_s"] for x in runs[c]["cold"]]) if c in runs else 0.0
        warm = median([x["compile_s"] for x in runs[c]["warm"]]) if c in runs else 0.0
        rows.append({
            "contender": c,
            "first-run compile s": round(cold, 1),
            "second-run compile s": round(warm, 1),
            "tokens/s": round(tok_s),
            "tokens in 300 s, first run (M)": round((BUDGET_S - cold) * tok_s / 1e6, 3),
            "tokens in 300 s, second run (M)": round((BUDGET_S - warm) * tok_s / 1e6, 3),
            **{f"grad error {key}": worst_error(key, c) for key in alternating[0]["grad_error"]},
        })  # fmt: skip
    precision = next(iter(runs.values()))["cold"][0]["precision"] if runs else "?"
    extra = {"cpu": cpu_description(), "precision": precision, "config": args.config,
             "n_layer": args.n_layer, "steps": args.steps, "runs": runs,
             "alternating": alternating}  # fmt: skip
    emit("compile" if args.n_layer is None else f"compile-L{args.n_layer}", rows, extra)


if __name__ == "__main__":
    main()
