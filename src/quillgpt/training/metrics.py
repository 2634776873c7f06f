"""What a run leaves for people to read: ``metrics.jsonl``, ``loss.png``, TensorBoard events.

``metrics.jsonl`` has one JSON object per line: a ``"kind": "train"`` line every
``log_interval`` steps (loss, learning rate, gradient norm, tokens/s, peak memory) and a
``"kind": "eval"`` line per evaluation (validation loss, perplexity, bits per byte). Every line
carries ``step``, ``tokens`` (training tokens seen) and ``elapsed`` (training seconds). The file is
appended to, line by line, so it survives a crash; a resumed run first drops the lines past the
step it resumes from, so the file reads as one uninterrupted run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from quillgpt.checkpoint import atomic_write, atomic_write_text
from quillgpt.errors import QuillError

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"


class MetricsLog:
    """Append-only ``metrics.jsonl`` writer (rank 0 only), with an optional TensorBoard mirror."""

    def __init__(self, run_dir: Path, *, tensorboard: bool = False) -> None:
        self.path = run_dir / METRICS_FILE
        self.writer = None
        if tensorboard:
            self.writer = require_tensorboard()(log_dir=str(run_dir / "tensorboard"))

    def truncate_after(self, step: int) -> None:
        """Drop lines with ``step`` greater than ``step`` (a resume from that step)."""
        if not self.path.is_file():
            return
        kept = [rec for rec in read_metrics(self.path) if rec.get("step", 0) <= step]
        atomic_write_text(self.path, "".join(json.dumps(rec) + "\n" for rec in kept))

    def write(self, record: dict[str, Any]) -> None:
        """Append one record (and mirror its numbers to TensorBoard)."""
        clean = {k: _finite_or_none(v) for k, v in record.items()}
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(clean) + "\n")
        if self.writer is not None:
            prefix = record.get("kind", "train")
            for key, value in clean.items():
                if isinstance(value, (int, float)) and key not in ("step", "kind"):
                    self.writer.add_scalar(f"{prefix}/{key}", value, record["step"])
            self.writer.flush()

    def close(self) -> None:
        """Flush and close the TensorBoard writer, if any."""
        if self.writer is not None:
            self.writer.close()


def require_tensorboard() -> Any:
    """Return TensorBoard's ``SummaryWriter`` class, or say in one line how to install it.

    Raises:
        QuillError: the optional ``tensorboard`` package is not installed.
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise QuillError(
            "--tensorboard needs the tensorboard package: pip install "
            "'quillgpt[tensorboard]' (or train without --tensorboard)"
        ) from exc
    return SummaryWriter


def _finite_or_none(value: Any) -> Any:
    """JSON has no NaN/inf: write them as ``null``."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Parse a ``metrics.jsonl`` file, ignoring a torn last line (a crash mid-write)."""
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def plot_losses(records: list[dict[str, Any]], path: Path, *, title: str = "") -> None:
    """Draw training and validation loss against tokens seen, with bits per byte on the right.

    Written atomically (a viewer never sees half a PNG). The figure is a
    :class:`matplotlib.figure.Figure` saved as PNG, never drawn through ``pyplot``: it works
    without a display and leaves the global state alone (the backend, ``pyplot``'s open figures),
    so inline plots in a notebook keep working.
    """
    from matplotlib.figure import Figure

    train = [r for r in records if r.get("kind") == "train" and r.get("loss") is not None]
    evals = [r for r in records if r.get("kind") == "eval" and r.get("val_loss") is not None]
    fig = Figure(figsize=(7, 4.2), dpi=110)
    ax = fig.subplots()
    if train:
        ax.plot([r["tokens"] for r in train], [r["loss"] for r in train], lw=1, label="train loss")
    if evals:
        ax.plot(
            [r["tokens"] for r in evals],
            [r["val_loss"] for r in evals],
            "o-",
            ms=3,
            label="validation loss",
        )
        last = evals[-1]
        if last.get("val_bpb") is not None and last["val_loss"] > 0:
            ratio = last["val_bpb"] / last["val_loss"]  # bits per byte per nat per token
            right = ax.secondary_yaxis(
                "right", functions=(lambda y: y * ratio, lambda b: b / ratio)
            )
            right.set_ylabel("validation bits per byte")
            title = f"{title}  sample: {last['val_bpb']:.3f} bits/byte"
    finals = [r for r in records if r.get("kind") == "final_eval" and r.get("val_bpb")]
    if finals:
        final = finals[-1]
        ax.plot([final["tokens"]], [final["val_loss"]], "*", ms=10, label="whole validation split")
        title = f"{title}, whole split: {final['val_bpb']:.3f}"
    ax.set_title(title.strip())
    ax.set_xlabel("training tokens")
    ax.set_ylabel("loss (nats per token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
