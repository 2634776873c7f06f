"""Training (or decoding) on a busy machine: the adaptive thread count against fixed ones.

Each contender is ``quill train`` on the demo preset (``configs/shakespeare-bpe-cpu.toml``) for
``--seconds`` of training, in its own process, once on a quiet machine and once with a CPU-bound
process (a Python busy loop per ``--busy`` core) running beside it from before the start:

- ``adaptive``: the default (no ``--threads``): one thread per core, adapted to the load
  (``quillgpt.threads.AdaptiveThreads``);
- ``fixed-N``: ``--threads N`` for every N from the core count down to 1.

The figure of each run is its training tokens per second (tokens over training seconds, from
``metrics.jsonl``); with ``--repeats`` the contenders take turns and each row is the median.
With ``--verb generate`` each run is instead ``quill generate`` of ``--tokens`` greedy tokens
from a model of the same preset (trained for one step, once), and the figure is the tokens/s it
reports.
Printed beside: each row against the quiet run with one thread per core fixed, which is what
issue 12's targets compare with (busy: at least 1/1.5 of it; quiet: the adaptive default within
3% of it).

    python benchmarks/bench_threads.py [--seconds 60] [--busy 1] [--compile off] [--repeats 1]
                                       [--loads quiet busy] [--only adaptive fixed-2]
                                       [--verb generate --tokens 500]

Results go to ``benchmarks/results/threads.json`` (``threads_compiled.json`` with
``--compile on``; ``threads_compiled_quiet.json`` with ``--loads quiet`` too;
``threads_generate.json`` with ``--verb generate``) and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from common import emit, median

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "shakespeare-bpe-cpu.toml"
BUSY_LOOP = "while True: pass"


def train(threads: int | None, budget: list[str], compile_mode: str, out: Path) -> dict[str, float]:
    """One ``quill train`` run with ``budget`` options; its training tokens/s and steps."""
    shutil.rmtree(out, ignore_errors=True)
    command = [
        sys.executable, "-m", "quillgpt.cli", "train", "--config", str(CONFIG), *budget,
        "--out_dir", str(out), "--compile", compile_mode,
        "--eval_interval", "1000000", "--ckpt_interval", "0", "--save_best", "false",
        "--num_samples", "0", "--final_eval", "false", "--progress", "false",
    ]  # fmt: skip
    if threads is not None:
        command += ["--threads", str(threads)]
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in lines if r["kind"] == "train"][-1]
    return {"tokens_per_s": last["tokens"] / last["elapsed"], "steps": last["step"]}


def model_for_generate(out: Path) -> Path:
    """A run directory of the preset, trained for one step: the weights do not matter here."""
    shutil.rmtree(out, ignore_errors=True)
    command = [
        sys.executable, "-m", "quillgpt.cli", "train", "--config", str(CONFIG), "--max_steps", "1",
        "--out_dir", str(out), "--compile", "off", "--num_samples", "0", "--progress", "false",
    ]  # fmt: skip
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return out


def generate(threads: int | None, run_dir: Path, tokens: int) -> dict[str, float]:
    """One ``quill generate`` of ``tokens`` greedy tokens; the tokens/s it reports."""
    command = [
        sys.executable, "-m", "quillgpt.cli", "generate", str(run_dir), "--prompt", "ROMEO:",
        "--max-new-tokens", str(tokens), "--no-stop", "--temperature", "0",
    ]  # fmt: skip
    if threads is not None:
        command += ["--threads", str(threads)]
    done = subprocess.run(command, check=True, cwd=ROOT, capture_output=True, text=True)
    return {"tokens_per_s": float(re.search(r"([\d.]+) tokens/s", done.stderr).group(1))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="training seconds per run")
    parser.add_argument("--busy", type=int, default=1, help="busy-loop processes when loaded")
    parser.add_argument("--compile", default="off", choices=("on", "off"))
    parser.add_argument("--loads", nargs="+", default=["quiet", "busy"], choices=("quiet", "busy"))
    parser.add_argument("--only", nargs="+", help="contenders to run (default: all)")
    parser.add_argument("--repeats", type=int, default=1, help="rounds over the contenders")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-threads")
    parser.add_argument("--verb", default="train", choices=("train", "generate"))
    parser.add_argument("--tokens", type=int, default=500, help="new tokens per generate run")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    contenders: dict[str, int | None] = {"adaptive": None}
    contenders |= {f"fixed-{n}": n for n in range(cores, 0, -1)}
    contenders = {k: v for k, v in contenders.items() if not args.only or k in args.only}
    if args.verb == "generate":
        model = model_for_generate(args.out / "generate-model")
    if args.compile == "on":  # fill the compile cache of each contender first (keyed by threads)
        for name, threads in contenders.items():
            train(threads, ["--max_steps", "10"], "on", args.out / f"warm-{name}")
    runs: dict[tuple[str, str], list[float]] = {}
    for load in args.loads:
        burners = [
            subprocess.Popen([sys.executable, "-c", BUSY_LOOP])
            for _ in range(args.busy if load == "busy" else 0)
        ]
        try:
            for _ in range(args.repeats):  # alternating: a, b, a, b spreads the machine's drift
                for name, threads in contenders.items():
                    budget = ["--max_time", f"{args.seconds}s"]
                    if args.verb == "generate":
                        result = generate(threads, model, args.tokens)
                    else:
                        result = train(threads, budget, args.compile, args.out / f"{load}-{name}")
                    runs.setdefault((load, name), []).append(result["tokens_per_s"])
        finally:
            for burner in burners:
                burner.kill()
                burner.wait()
    rows = [
        {"load": load, "contender": name, "tokens_per_s": median(t), "runs": [round(x) for x in t]}
        for (load, name), t in runs.items()
    ]
    quiet = runs.get(("quiet", f"fixed-{cores}"))
    for row in rows:
        row["vs_quiet_all_cores"] = row["tokens_per_s"] / median(quiet) if quiet else None
    name = "threads" + ("_compiled" if args.compile == "on" else "")
    name += "_generate" if args.verb == "generate" else ""
    name += "" if set(args.loads) == {"quiet", "busy"} else "_" + "_".join(args.loads)
    emit(
        name,
        rows,
        {
            "verb": args.verb,
            "seconds": args.seconds if args.verb == "train" else None,
            "tokens": args.tokens if args.verb == "generate" else None,
            "busy_processes": args.busy,
            "compile": args.compile,
            "repeats": args.repeats,
        },
    )


if __name__ == "__main__":
    main()
