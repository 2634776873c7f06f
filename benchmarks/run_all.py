"""Run every benchmark script in sequence (``make bench``); each writes results/<name>.json.

    python benchmarks/run_all.py                 # all bench_*.py, then gpu_check.py on CUDA
    python benchmarks/run_all.py --only decode quantize
    python benchmarks/run_all.py --list

Scripts run one at a time in their own process (timings must not overlap), with their default
arguments; a failing script is reported and the others still run. On a shared machine, hold a
lock around the whole run (``flock /tmp/quillgpt-bench.lock make bench``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def scripts(only: list[str] | None, cuda: bool) -> list[Path]:
    """The benchmark scripts to run: ``bench_*.py`` by name, plus ``gpu_check.py`` on CUDA."""
    found = sorted(HERE.glob("bench_*.py"))
    if cuda:
        found.append(HERE / "gpu_check.py")
    if only:
        wanted = {name.removeprefix("bench_").removesuffix(".py") for name in only}
        found = [p for p in found if p.stem.removeprefix("bench_") in wanted]
    return found


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", default=None, help="names, e.g. decode quantize")
    parser.add_argument("--list", action="store_true", help="print the scripts and exit")
    args = parser.parse_args(argv)
    todo = scripts(args.only, cuda_available())
    if args.list or not todo:
        print("\n".join(p.name for p in todo) or "no benchmark matches --only")
        return 0 if todo or args.list else 2
    summary = []
    for script in todo:
        print(f"\n===== {script.name} =====", flush=True)
        start = time.perf_counter()
        code = subprocess.run([sys.executable, str(script)], cwd=HERE).returncode
        summary.append((script.name, code, time.perf_counter() - start))
    print("\n| script | exit | seconds |\n|---|---|---|")
    for name, code, seconds in summary:
        print(f"| {name} | {code} | {seconds:.0f} |")
    return 0 if all(code == 0 for _, code, _ in summary) else 1


if __name__ == "__main__":
    sys.exit(main())
