"""Where the time and memory go: ``torch.profiler`` over a training step, a prefill and decoding.

:func:`profile_model` runs three phases on random tokens:

* **train step** -- forward, backward and an AdamW step on ``(batch_size, seq_len)`` tokens, under
  the device's autocast policy and with the AdamW kernel ``quill train`` would pick (fused where
  the device has it), but without ``torch.compile``, so that the operators stay visible;
* **prefill** -- encode a ``(batch_size, prompt_len)`` prompt into a fresh KV cache;
* **decode** -- ``decode_tokens`` single-token steps that read and extend the cache.

Speeds (steps/s, tokens/s) are measured first *without* the profiler, whose per-operator
bookkeeping would slow small operations; then one profiled round of the three phases gives, per
phase, the operators with the most *self* time (time inside the operator itself, excluding the
operators it calls), and a Chrome trace (open it at https://ui.perfetto.dev or
chrome://tracing). Memory: parameter bytes, the KV cache for the full context, peak process RSS,
and on CUDA/XPU the peak bytes allocated per phase.

:func:`to_markdown` renders the report; :meth:`ProfileReport.to_dict` is its JSON form.
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from quillgpt.model.decoder import DecoderLM
from quillgpt.optimize.devices import (
    peak_memory_bytes,
    peak_rss_bytes,
    reset_peak_memory,
    synchronize,
)

PHASES = ("train_step", "prefill", "decode")


@dataclass
class ProfileReport:
    """What :func:`profile_model` measured.

    Attributes:
        setup: model shape, device, precision and the sizes of each phase.
        speed: ``train_step_ms``, ``train_tokens_per_s``, ``prefill_ms``,
            ``prefill_tokens_per_s``, ``decode_ms_per_token``, ``decode_tokens_per_s``
            (medians of ``repeats`` unprofiled runs).
        memory: ``parameter_bytes``, ``kv_cache_bytes`` (full context, this batch size),
            ``peak_rss_bytes``, and on an accelerator ``peak_allocated_<phase>_bytes``.
        top_ops: per phase, the operators with the most self time: ``name``, ``calls``,
            ``self_ms`` (device self time on an accelerator, CPU self time otherwise) and
            ``percent`` of the phase's total.
        trace: path of the Chrome trace, if one was written.
    """

    setup: dict[str, Any]
    speed: dict[str, float]
    memory: dict[str, int]
    top_ops: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    trace: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-serialisable data."""
        return asdict(self)


def _median_seconds(fn: Any, device: torch.device, repeats: int, setup: Any = None) -> float:
    times = []
    for _ in range(repeats):
        if setup is not None:
            setup()
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def profile_model(
    model: DecoderLM,
    *,
    device: torch.device,
    inference_model: nn.Module | None = None,
    batch_size: int = 4,
    seq_len: int | None = None,
    prompt_len: int = 64,
    decode_tokens: int = 32,
    precision: str = "auto",
    train: bool = True,
    repeats: int = 3,
    top: int = 12,
    trace_path: str | Path | None = None,
) -> ProfileReport:
    """Measure and profile a training step, a prefill and decode steps of ``model``.

    Args:
        model: the model, on ``device``. Its weights are changed by the training step, so pass a
            copy you do not need.
        device: where it runs.
        inference_model: run prefill and decode on this model instead (an int8 or
            :func:`~quillgpt.optimize.decode.prepare_for_decoding` copy, which cannot train).
        batch_size: sequences per phase.
        seq_len: training sequence length (default ``block_size``).
        prompt_len: prompt tokens encoded by the prefill.
        decode_tokens: single-token steps after the prefill. Both are shrunk to fit
            ``block_size`` (decode first, then the prompt).
        precision: autocast policy of the training step (``auto|fp32|bf16|fp16``); prefill and
            decode run in the model's own dtype, as ``generate`` does.
        train: include the training step.
        repeats: unprofiled runs per phase; medians are reported.
        top: operators listed per phase.
        trace_path: where to write the Chrome trace (``.json``); ``None`` writes none.
    """
    from quillgpt.training.precision import Precision

    cfg = model.config
    seq_len = min(seq_len or cfg.block_size, cfg.block_size)
    decode_tokens = min(decode_tokens, cfg.block_size - 1)  # fit the context window; the
    prompt_len = min(prompt_len, cfg.block_size - decode_tokens)  # report shows what ran
    gen = torch.Generator().manual_seed(0)
    train_x = torch.randint(0, cfg.vocab_size, (batch_size, seq_len), generator=gen).to(device)
    prompt = torch.randint(0, cfg.vocab_size, (batch_size, prompt_len), generator=gen).to(device)
    prec = Precision.for_device(device, precision)
    phases: dict[str, Any] = {}

    if train:
        from quillgpt.training.optim import build_optimizer

        optimizer = build_optimizer(  # the kernel `quill train` would use on this device
            model, lr=1e-4, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8, device=device
        )

        def train_step() -> None:
            model.train()
            with prec.autocast():
                _, loss = model(train_x, train_x)
            prec.scaler.scale(loss).backward()
            prec.scaler.step(optimizer)
            prec.scaler.update()
            optimizer.zero_grad(set_to_none=True)

        phases["train_step"] = train_step

    runner: Any = model if inference_model is None else inference_model
    cache = model.new_kv_cache(batch_size)
    next_token = [prompt[:, -1]]

    def prefill() -> None:
        runner.eval()
        cache.reset()
        with torch.inference_mode():
            next_token[0] = runner.next_token_logits(prompt, cache).argmax(-1)

    def decode() -> None:
        with torch.inference_mode():
            token = next_token[0]
            for _ in range(decode_tokens):
                token = runner.next_token_logits(token[:, None], cache).argmax(-1)

    phases["prefill"] = prefill
    phases["decode"] = decode

    # warm-up (allocations, kernel selection, lazy initialisation), then unprofiled timings;
    # every decode run starts from a freshly prefilled cache, outside the timed region
    for fn in phases.values():
        fn()
    speed: dict[str, float] = {}
    memory: dict[str, int] = {}
    for name, fn in phases.items():
        reset_peak_memory(device)
        if name == "decode":
            seconds = _median_seconds(decode, device, repeats, setup=prefill)
            speed["decode_ms_per_token"] = seconds / decode_tokens * 1e3
            speed["decode_tokens_per_s"] = batch_size * decode_tokens / seconds
        else:
            seconds = _median_seconds(fn, device, repeats)
            tokens = batch_size * (seq_len if name == "train_step" else prompt_len)
            speed[f"{name}_ms"] = seconds * 1e3
            speed[f"{name.removesuffix('_step')}_tokens_per_s"] = tokens / seconds
        if device.type in ("cuda", "xpu"):
            memory[f"peak_allocated_{name}_bytes"] = peak_memory_bytes(device)

    top_ops, trace = _profiled_round(phases, prefill, device, top, trace_path)
    memory["parameter_bytes"] = _parameter_bytes(runner)
    memory["kv_cache_bytes"] = cache.nbytes
    memory["peak_rss_bytes"] = peak_rss_bytes()
    setup = {
        "model": {
            "n_layer": cfg.n_layer,
            "n_head": cfg.n_head,
            "n_embd": cfg.n_embd,
            "block_size": cfg.block_size,
            "vocab_size": cfg.vocab_size,
            "parameters": count_parameters(model),
        },
        "device": str(device),
        "threads": torch.get_num_threads(),
        "train_precision": prec.name if train else None,
        "batch_size": batch_size,
        "seq_len": seq_len if train else None,
        "prompt_len": prompt_len,
        "decode_tokens": decode_tokens,
        "inference_layers": _linear_kind(runner),
        "repeats": repeats,
    }
    return ProfileReport(setup, speed, memory, top_ops, trace)


def _linear_kind(model: nn.Module) -> str:
    """``int8``, ``nn.Linear``, or how many linear layers are ``DecodeLinear``."""
    from quillgpt.optimize.decode import DecodeLinear
    from quillgpt.optimize.quantize import is_quantized_linear

    modules = list(model.modules())
    if any(is_quantized_linear(m) for m in modules):
        return "int8"
    fast = sum(isinstance(m, DecodeLinear) for m in modules)
    if not fast:
        return "nn.Linear"
    return f"DecodeLinear ({fast} of {fast + sum(type(m) is nn.Linear for m in modules)})"


def count_parameters(model: nn.Module) -> int:
    """Number of parameters, shared tensors once, counting the weights of int8 layers too."""
    from quillgpt.optimize.quantize import int8_state, is_quantized_linear

    total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    for module in model.modules():
        if is_quantized_linear(module) and not isinstance(module, nn.Linear):
            q, _, bias = int8_state(module)  # torch.ao layers hold no nn.Parameter
            total += q.numel() + (0 if bias is None else bias.numel())
    return total


def _parameter_bytes(model: nn.Module) -> int:
    """Bytes of parameters and buffers (shared tensors once); int8 layers at their packed size."""
    from quillgpt.optimize.quantize import is_quantized_linear, linear_weight_bytes

    quantized = [name for name, module in model.named_modules() if is_quantized_linear(module)]
    skip = {id(p) for name in quantized for p in model.get_submodule(name).parameters()}
    tensors = {id(t): t for t in (*model.parameters(), *model.buffers()) if id(t) not in skip}
    sizes = linear_weight_bytes(model)
    return sum(t.nbytes for t in tensors.values()) + sum(sizes[name] for name in quantized)


def _profiled_round(
    phases: dict[str, Any],
    prefill: Any,
    device: torch.device,
    top: int,
    trace_path: str | Path | None,
) -> tuple[dict[str, list[dict[str, Any]]], str | None]:
    """Run each phase once under the profiler; return the top operators per phase and the trace."""
    from torch.profiler import ProfilerActivity, profile, record_function

    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    elif device.type == "xpu":
        activities.append(ProfilerActivity.XPU)
    with profile(activities=activities) as prof:
        for name, fn in phases.items():
            if name == "decode":
                prefill()  # a fresh cache, outside the decode range
            with record_function(name):
                fn()
            synchronize(device)
    trace = None
    if trace_path is not None:
        Path(trace_path).parent.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(trace_path))
        trace = str(trace_path)
    return _top_ops_by_phase(prof.events(), list(phases), device, top), trace


def _top_ops_by_phase(
    events: Any, phase_names: list[str], device: torch.device, top: int
) -> dict[str, list[dict[str, Any]]]:
    """Sum self time per operator name within each phase's time range."""
    on_device = device.type in ("cuda", "xpu")
    ranges = {
        e.name: (e.time_range.start, e.time_range.end) for e in events if e.name in phase_names
    }
    totals: dict[str, dict[str, list[float]]] = {
        name: defaultdict(lambda: [0.0, 0]) for name in ranges
    }
    for event in events:
        if event.name in ranges:
            continue
        self_us = event.self_device_time_total if on_device else event.self_cpu_time_total
        if self_us <= 0:
            continue
        for phase, (start, end) in ranges.items():
            if start <= event.time_range.start < end:
                entry = totals[phase][event.name]
                entry[0] += self_us
                entry[1] += 1
                break
    table: dict[str, list[dict[str, Any]]] = {}
    for phase in phase_names:
        ops = totals.get(phase, {})
        total = sum(v[0] for v in ops.values()) or 1.0
        ranked = sorted(ops.items(), key=lambda kv: kv[1][0], reverse=True)[:top]
        table[phase] = [
            {
                "name": name,
                "calls": int(calls),
                "self_ms": us / 1e3,
                "percent": 100.0 * us / total,
            }
            for name, (us, calls) in ranked
        ]
    return table


def to_markdown(report: ProfileReport) -> str:
    """Render ``report`` as Markdown: setup, speed, memory, and one operator table per phase."""
    s = report.setup
    model = s["model"]
    lines = [
        f"**Model** {model['n_layer']} layers x {model['n_embd']} wide, {model['n_head']} heads, "
        f"context {model['block_size']}, vocab {model['vocab_size']}: "
        f"{model['parameters']:,} parameters. **Device** {s['device']} ({s['threads']} threads). "
        f"Batch {s['batch_size']}; "
        + (f"train sequence {s['seq_len']} ({s['train_precision']}); " if s["seq_len"] else "")
        + f"prompt {s['prompt_len']}; {s['decode_tokens']} decode steps; prefill and decode "
        f"with {s['inference_layers']} layers.",
        "",
        "| phase | time | tokens/s |",
        "|---|---|---|",
    ]
    sp = report.speed
    if "train_step_ms" in sp:
        lines.append(
            f"| train step | {sp['train_step_ms']:.1f} ms | {sp['train_tokens_per_s']:,.0f} |"
        )
    lines.append(f"| prefill | {sp['prefill_ms']:.1f} ms | {sp['prefill_tokens_per_s']:,.0f} |")
    lines.append(
        f"| decode | {sp['decode_ms_per_token']:.2f} ms/step | {sp['decode_tokens_per_s']:,.1f} |"
    )
    lines += ["", "| memory | MiB |", "|---|---|"]
    for key, value in report.memory.items():
        label = key.removesuffix("_bytes").replace("_", " ")
        lines.append(f"| {label} | {value / 2**20:,.1f} |")
    for phase, ops in report.top_ops.items():
        lines += [
            "",
            f"Top operators by self time, {phase.replace('_', ' ')}:",
            "",
            "| operator | calls | self ms | % |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| `{op['name']}` | {op['calls']} | {op['self_ms']:.2f} | {op['percent']:.1f} |"
            for op in ops
        ]
    if report.trace:
        lines += ["", f"Chrome trace: `{report.trace}`"]
    return "\n".join(lines) + "\n"
