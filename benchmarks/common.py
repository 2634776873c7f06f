"""Shared helpers for benchmark scripts: alternating timing, machine description, JSON + table."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, object]:
    """Describe where the numbers were measured."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from quillgpt.device import cpu_supports_bf16

    info: dict[str, object] = {
        "cpu": cpu,
        "cpu_native_bf16": cpu_supports_bf16(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def sync(device: str) -> None:
    """Wait for queued device work so wall-clock timings are honest."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    elif device.startswith("xpu"):
        torch.xpu.synchronize()


def time_alternating(
    fns: dict[str, Callable[[], object]],
    *,
    warmup: int = 3,
    repeats: int = 10,
    device: str = "cpu",
) -> dict[str, list[float]]:
    """Time each callable ``repeats`` times, interleaved (a, b, a, b, ...), after ``warmup`` calls.

    Interleaving spreads machine noise (other processes, frequency changes) evenly over the
    contenders, so their ratio is trustworthy even when absolute numbers wobble.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def median_us_per_call(
    fns: dict[str, Callable[[], object]], *, calls: int, repeats: int
) -> dict[str, float]:
    """Median microseconds of one call of each of ``fns``, timed alternately.

    Each timed repeat makes ``calls`` calls, so that a kernel of a few microseconds is measured
    over a span the clock resolves.
    """

    def repeated(fn: Callable[[], object]) -> Callable[[], None]:
        def run() -> None:
            for _ in range(calls):
                fn()

        return run

    times = time_alternating({name: repeated(fn) for name, fn in fns.items()}, repeats=repeats)
    return {name: median(ts) / calls * 1e6 for name, ts in times.items()}


def median(values: list[float]) -> float:
    """Median of ``values``."""
    return statistics.median(values)


def markdown_table(rows: list[dict[str, object]]) -> str:
    """Render a list of flat dicts (same keys) as a Markdown table."""
    if not rows:
        return ""
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        cells = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in row.values()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def emit(name: str, rows: list[dict[str, object]], extra: dict[str, object] | None = None) -> Path:
    """Print ``rows`` as a table and JSON; save the JSON to ``benchmarks/results/<name>.json``."""
    payload = {"benchmark": name, "machine": machine(), "rows": rows, **(extra or {})}
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"{name}.json"
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(markdown_table(rows))
    print(json.dumps(payload))
    return out
