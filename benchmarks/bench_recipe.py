"""Which parts of the modern recipe pay on a small CPU model: each change alone, then all together.

Every run is ``quill train`` on the demo's shape and data (``configs/shakespeare-bpe-cpu-v1.toml``,
today's recipe: GELU, LayerNorm, AdamW, cosine) for a fixed number of optimiser steps, with one
change from :data:`VARIANTS` (none for the baseline), in its own process, for each seed. The seed
sets the initialisation and the data order, so every variant sees the same batches for a given
seed. Each row gives the bits per byte on the **whole** held-out split (mean and spread over
seeds) and the median training tokens/s, so a change that learns more per step but runs slower
shows both sides; the 5-minute comparisons in docs/training.md settle time budgets.

    python benchmarks/bench_recipe.py [--steps 500] [--seeds 1337 1338] [--only relu2 muon]
                                      [--compile off] [--out runs/bench-recipe]

Runs already finished in ``--out`` are reused (delete the folder to start over). Results go to
``benchmarks/results/recipe.json`` and a table on stdout.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from quillgpt.tools.sweep import summarize

from common import emit

ROOT = Path(__file__).resolve().parent.parent
BASE_CONFIG = ROOT / "configs" / "shakespeare-bpe-cpu-v1.toml"

VARIANTS: dict[str, list[str]] = {
    "baseline": [],
    "relu2": ["--activation", "relu2"],
    "rmsnorm": ["--norm", "rmsnorm"],
    "qk_norm": ["--qk_norm", "true"],
    "logit_softcap": ["--logit_softcap", "15"],
    "zero_proj": ["--init", "zero_proj"],
    "wsd": ["--schedule", "wsd"],
    "muon": ["--optimizer", "muon"],
}
"""Each change alone, as ``quill train`` options on top of the baseline config."""
VARIANTS["all"] = [arg for name, args in VARIANTS.items() for arg in args]


def run_once(name: str, seed: int, steps: int, compile_mode: str, out: Path) -> dict[str, object]:
    """Train one variant with one seed (or reuse a finished run); return its summary row."""
    run_dir = out / f"{name}-seed{seed}"
    metrics = run_dir / "metrics.jsonl"
    if not (metrics.is_file() and '"final_eval"' in metrics.read_text()):
        command = [
            sys.executable, "-m", "quillgpt.cli", "train", "--config", str(BASE_CONFIG),
            "--max_steps", str(steps), "--max_time", "none", "--seed", str(seed),
            "--out_dir", str(run_dir), "--compile", compile_mode, "--eval_interval", "1000000",
            "--ckpt_interval", "0", "--save_best", "false", "--num_samples", "0",
            "--progress", "false", *VARIANTS[name],
        ]  # fmt: skip
        shutil.rmtree(run_dir, ignore_errors=True)  # an unfinished run starts over
        result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
        if result.returncode != 0:
            raise SystemExit(f"{name} seed {seed} failed:\n{result.stderr[-2000:]}")
    return summarize(run_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1337, 1338])
    parser.add_argument("--only", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--compile", choices=["auto", "on", "off"], default="off")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-recipe")
    args = parser.parse_args()

    rows: list[dict[str, object]] = []
    baseline: float | None = None
    for name in ["baseline", *[n for n in args.only if n != "baseline"]]:  # baseline first
        runs = [run_once(name, seed, args.steps, args.compile, args.out) for seed in args.seeds]
        bpb = [float(r["val_bpb"]) for r in runs]
        mean = statistics.fmean(bpb)
        baseline = mean if name == "baseline" else baseline
        rows.append(
            {
                "variant": name,
                "options": " ".join(VARIANTS[name]) or "(configs/shakespeare-bpe-cpu-v1.toml)",
                "val_bpb_mean": round(mean, 4),
                "val_bpb_spread": round(max(bpb) - min(bpb), 4),
                "vs_baseline": round(mean - baseline, 4) if baseline is not None else None,
                "val_bpb_per_seed": [round(b, 4) for b in bpb],
                "tokens_per_s": round(statistics.median(float(r["tokens_per_s"]) for r in runs)),
                "train_seconds": round(
                    statistics.fmean(float(r["train_seconds"]) for r in runs), 1
                ),
            }
        )
        print(rows[-1], flush=True)
    emit("recipe", rows, {"steps": args.steps, "seeds": args.seeds, "compile": args.compile})


if __name__ == "__main__":
    main()
