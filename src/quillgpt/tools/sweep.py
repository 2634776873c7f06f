"""Model-size sweep: train a grid of sizes for the same wall-clock budget and compare them.

Each grid point ``LxC`` (layers x width) is one ``quill train`` run, in its own process (so the
peak memory of one run does not leak into the next), with the same data, tokenizer, batch and
time budget: only the shape and the learning rate change. A larger model learns more per token
but processes fewer tokens per second, so for a fixed budget some size in between is best; the
sweep shows where.

The settings shared by every run are :data:`BASE_ARGS` (built-in Shakespeare, BPE 2048,
context 128, batch 32, rotary positions, no biases, tied head, cosine schedule), overridable with
extra ``quill train`` options. Heads are ``width / 64`` (head size 64, at least
one head); the learning rate is ``2e-3`` up to width 256 and ``2e-3 * 256 / width`` above, the
usual shrinking of Adam's step with width (a heuristic: the rate is not tuned per size).

:func:`run_sweep` returns one row per size and :func:`write_report` writes ``sweep.md`` (the
table), ``sweep.json``, ``sweep_bpb.png`` (validation bits per byte against parameters) and
``sweep_curves.png`` (training loss against tokens, validation bits per byte against time).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from quillgpt.errors import QuillError

DEFAULT_GRID: tuple[tuple[int, int], ...] = (
    (2, 64),
    (2, 128),
    (4, 192),
    (4, 256),
    (6, 384),
    (6, 512),
)
"""Six sizes from ~0.2M to ~20M parameters (with a 2048-token vocabulary)."""

BASE_ARGS: tuple[str, ...] = (
    "--data", "shakespeare", "--tokenizer", "bpe",  # of DEFAULT_BPE_VOCAB (2048) ids
    "--block_size", "128", "--batch_size", "32", "--pos_encoding", "rope", "--bias", "false",
    "--tie_weights", "true", "--dropout", "0", "--warmup_steps", "50", "--schedule", "cosine",
    "--min_lr_ratio", "0.1", "--weight_decay", "0.1", "--beta2", "0.95", "--grad_clip", "1.0",
    "--eval_interval", "25", "--eval_tokens", "16384", "--ckpt_interval", "0",
    "--num_samples", "0", "--progress", "false",
)  # fmt: skip
"""``quill train`` options shared by every run of the sweep."""


def parse_grid(text: str) -> list[tuple[int, int]]:
    """Parse ``"2x64,4x256"`` into ``[(2, 64), (4, 256)]``.

    Raises:
        QuillError: on anything else than comma-separated ``LAYERSxWIDTH`` positive pairs.
    """
    grid = []
    for item in text.split(","):
        layers, sep, width = item.strip().lower().partition("x")
        if not sep or not layers.isdigit() or not width.isdigit() or "0" in (layers, width):
            raise QuillError(f"bad grid entry {item!r}: use LAYERSxWIDTH, e.g. --grid 2x64,4x256")
        grid.append((int(layers), int(width)))
    return grid


def heads_for(width: int) -> int:
    """Attention heads for a width: head size 64 where it divides, else the nearest divisor."""
    target = max(1, width // 64)
    return min((d for d in range(1, width + 1) if width % d == 0), key=lambda d: abs(d - target))


def learning_rate(width: int, base: float = 2e-3) -> float:
    """Peak learning rate: ``base`` up to width 256, then ``base * 256 / width``."""
    return base * min(1.0, 256 / width)


def train_command(
    layers: int, width: int, budget: str, run_dir: Path, extra: Sequence[str]
) -> list[str]:
    """The ``quill train`` command line of one grid point."""
    return [
        sys.executable, "-m", "quillgpt.cli", "train", *BASE_ARGS,
        "--n_layer", str(layers), "--n_embd", str(width), "--n_head", str(heads_for(width)),
        "--lr", f"{learning_rate(width):.3g}", "--max_time", budget, "--out_dir", str(run_dir),
        *extra,
    ]  # fmt: skip


def summarize(run_dir: Path) -> dict[str, Any]:
    """One row of the table from a finished run directory (``config.json``, ``metrics.jsonl``)."""
    from quillgpt.config import ModelConfig
    from quillgpt.model import DecoderLM

    document = json.loads((run_dir / "config.json").read_text())
    config = ModelConfig.from_dict(document["model"])
    model = DecoderLM(config)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    final = [r for r in records if r["kind"] == "final_eval"]
    if not train or not final:
        raise QuillError(f"{run_dir} has no training or final evaluation records")
    rates = sorted(r["tokens_per_s"] for r in train[1:] or train)  # the first includes warm-up
    return {
        "size": f"{config.n_layer}x{config.n_embd}",
        "parameters": model.num_parameters(),
        "non_embedding": model.num_parameters(exclude_embeddings=True),
        "lr": document["train"]["lr"],
        "tokens_per_s": rates[len(rates) // 2],
        "tokens_seen": final[-1]["tokens"],
        "steps": final[-1]["step"],
        "val_loss": final[-1]["val_loss"],
        "val_bpb": final[-1]["val_bpb"],
        "peak_memory_mb": max(r.get("peak_memory_mb", 0.0) for r in train),
        "train_seconds": final[-1]["elapsed"],
        "run_dir": str(run_dir),
    }


def run_sweep(
    grid: Sequence[tuple[int, int]],
    *,
    budget: str,
    out_dir: str | Path,
    extra: Sequence[str] = (),
    reuse: bool = True,
    log: Any = print,
) -> list[dict[str, Any]]:
    """Train every ``(layers, width)`` of ``grid`` for ``budget``; return the table rows.

    Runs go to ``out_dir/L{layers}xC{width}``. With ``reuse``, a size whose run directory
    already holds a final evaluation is not trained again; without, that directory is deleted
    and the size retrained. A directory holding an unfinished run is never touched.

    Raises:
        QuillError: if a training run fails (its command is in the message).
    """
    out_dir = Path(out_dir)
    rows = []
    for layers, width in grid:
        run_dir = out_dir / f"L{layers}xC{width}"
        done = (run_dir / "metrics.jsonl").is_file() and '"final_eval"' in (
            run_dir / "metrics.jsonl"
        ).read_text()
        if not (reuse and done):
            if done:
                shutil.rmtree(run_dir)  # a finished run of this sweep, to be trained again
            elif run_dir.exists():
                raise QuillError(f"{run_dir} holds an unfinished run; delete it to train again")
            command = train_command(layers, width, budget, run_dir, extra)
            log(f"sweep: training {layers}x{width} for {budget} -> {run_dir}")
            start = time.perf_counter()
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0:
                tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-5:])
                raise QuillError(f"training {layers}x{width} failed:\n{tail}\n{' '.join(command)}")
            log(f"sweep: {layers}x{width} done in {time.perf_counter() - start:.0f}s")
        rows.append(summarize(run_dir))
    return rows


def markdown(rows: Sequence[dict[str, Any]], budget: str) -> str:
    """The sweep table in Markdown, best validation bits per byte in bold."""
    best = min(row["val_bpb"] for row in rows)
    lines = [
        f"Budget {budget} of training per size.",
        "",
        "| size (L x C) | parameters | lr | tokens/s | tokens seen | steps | val bpb | val loss "
        "| peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        bpb = f"{r['val_bpb']:.4f}"
        bpb = f"**{bpb}**" if r["val_bpb"] == best else bpb
        lines.append(
            f"| {r['size']} | {r['parameters'] / 1e6:.2f}M | {r['lr']:.3g} | "
            f"{r['tokens_per_s']:,.0f} | {r['tokens_seen'] / 1e6:.2f}M | {r['steps']} | {bpb} | "
            f"{r['val_loss']:.4f} | {r['peak_memory_mb']:,.0f} |"
        )
    return "\n".join(lines) + "\n"


def write_report(rows: Sequence[dict[str, Any]], out: str | Path, budget: str) -> list[Path]:
    """Write the table, the JSON and the two plots into folder ``out``; return the paths.

    The plots are :class:`matplotlib.figure.Figure` objects saved as PNG, never drawn through
    ``pyplot``: the global backend (and a notebook's inline plots) stay untouched.
    """
    from matplotlib.figure import Figure

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table, data = out / "sweep.md", out / "sweep.json"
    table.write_text(markdown(rows, budget), encoding="utf-8")
    data.write_text(json.dumps({"budget": budget, "rows": list(rows)}, indent=2) + "\n")

    fig = Figure(figsize=(5.5, 4))
    ax = fig.subplots()
    params = [r["parameters"] for r in rows]
    ax.plot(params, [r["val_bpb"] for r in rows], "o-")
    for r in rows:
        point = (r["parameters"], r["val_bpb"])
        ax.annotate(r["size"], point, textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("validation bits per byte")
    ax.set_title(f"Same budget ({budget}) per size")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    bpb_plot = out / "sweep_bpb.png"
    fig.savefig(bpb_plot, dpi=120)

    fig = Figure(figsize=(10, 4))
    left, right = fig.subplots(1, 2)
    for r in rows:
        records = [
            json.loads(line)
            for line in (Path(r["run_dir"]) / "metrics.jsonl").read_text().splitlines()
        ]
        train = [x for x in records if x["kind"] == "train"]
        evals = [x for x in records if x["kind"] == "eval"]
        left.plot([x["tokens"] for x in train], [x["loss"] for x in train], label=r["size"])
        right.plot([x["elapsed"] for x in evals], [x["val_bpb"] for x in evals], label=r["size"])
    left.set_xlabel("training tokens")
    left.set_ylabel("training loss (nats/token)")
    right.set_xlabel("training seconds")
    right.set_ylabel("validation bits per byte (sample)")
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    curves = out / "sweep_curves.png"
    fig.savefig(curves, dpi=120)
    return [table, data, bpb_plot, curves]
