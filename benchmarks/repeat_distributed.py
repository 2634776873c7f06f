"""Repeat the 2-process DDP and FSDP tests many times beside a CPU-bound job; count failures.

A distributed test that fails one run in ten is a red CI waiting to happen. This runs
``pytest tests/test_distributed.py`` (one process against 2 gloo processes under torchrun, for
DDP and FSDP2) ``--repeats`` times in a row while another process keeps one core busy (as a
shared CI machine does), and reports every run's outcome.

    python benchmarks/repeat_distributed.py [--repeats 20] [--no-burner]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from common import emit

ROOT = Path(__file__).resolve().parents[1]
BURNER = "while True: pass"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--no-burner", action="store_true", help="no CPU-bound job beside")
    args = parser.parse_args()
    burner = None if args.no_burner else subprocess.Popen([sys.executable, "-c", BURNER])
    runs = []
    try:
        for index in range(args.repeats):
            start = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                 "tests/test_distributed.py"],
                cwd=ROOT, capture_output=True, text=True,
            )  # fmt: skip
            seconds = time.perf_counter() - start
            summary = (proc.stdout.strip().splitlines() or [""])[-1]
            runs.append({"run": index + 1, "exit": proc.returncode, "seconds": round(seconds, 1),
                         "summary": summary})  # fmt: skip
            print(f"run {index + 1}: exit {proc.returncode}, {seconds:.0f} s, {summary}",
                  flush=True)  # fmt: skip
            if proc.returncode != 0:
                print(proc.stdout[-4000:], flush=True)
    finally:
        if burner is not None:
            burner.kill()
    failures = sum(r["exit"] != 0 for r in runs)
    row = {"repeats": len(runs), "failures": failures, "cpu_burner": burner is not None,
           "median_seconds": sorted(r["seconds"] for r in runs)[len(runs) // 2]}  # fmt: skip
    emit("repeat_distributed", [row], {"runs": runs})
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
