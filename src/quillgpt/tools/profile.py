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

:func:`~quillgpt.tools.profile_report.to_markdown` renders the report;
:meth:`~quillgpt.tools.profile_report.ProfileReport.to_dict` is its JSON form.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from quillgpt.device import (
    peak_memory_bytes,
    peak_rss_bytes,
    reset_peak_memory,
    synchronize,
)
from quillgpt.model.decode_layout import decoding_layout
from quillgpt.model.decoder import DecoderLM
from quillgpt.tools.model_summary import linear_kind, parameter_bytes
from quillgpt.tools.profile_operators import profiled_round
from quillgpt.tools.profile_report import ProfileReport

PHASES = ("train_step", "prefill", "decode")


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
    fast: bool = True,
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
        inference_model: run prefill and decode on this model instead (an int8 copy).
        fast: prefill and decode as ``generate`` does by default: large linear layers in the
            :func:`~quillgpt.model.decode_layout.decoding_layout`, decode steps through
            ``decode_step``; ``False`` runs the plain forward pass, as ``generate(fast=False)``.
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
        from quillgpt.training.config import TrainConfig
        from quillgpt.training.optim import build_optimizer

        # the AdamW kernel `quill train` would use on this device
        optimizer = build_optimizer(model, TrainConfig(lr=1e-4))

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
        with torch.inference_mode(), decoding_layout(runner, fast):
            next_token[0] = runner.next_token_logits(prompt, cache).argmax(-1)

    def decode() -> None:
        with torch.inference_mode(), decoding_layout(runner, fast):
            token = next_token[0]
            for _ in range(decode_tokens):
                if fast:
                    token = runner.decode_step(token, cache).argmax(-1)
                else:
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

    top_ops, trace = profiled_round(phases, prefill, device, top, trace_path)
    memory["parameter_bytes"] = parameter_bytes(runner)
    memory["kv_cache_bytes"] = cache.nbytes
    memory["peak_rss_bytes"] = peak_rss_bytes()
    setup = {
        "model": {
            "n_layer": cfg.n_layer,
            "n_head": cfg.n_head,
            "n_embd": cfg.n_embd,
            "block_size": cfg.block_size,
            "vocab_size": cfg.vocab_size,
            "parameters": model.num_parameters(),
        },
        "device": str(device),
        "threads": torch.get_num_threads(),
        "train_precision": prec.name if train else None,
        "batch_size": batch_size,
        "seq_len": seq_len if train else None,
        "prompt_len": prompt_len,
        "decode_tokens": decode_tokens,
        "inference_layers": linear_kind(runner, fast),
        "repeats": repeats,
    }
    return ProfileReport(setup, speed, memory, top_ops, trace)
