"""One round of the phases under ``torch.profiler``: the top operators per phase, a Chrome trace."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from quillgpt.device import synchronize


def profiled_round(
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
