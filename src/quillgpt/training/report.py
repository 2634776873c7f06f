"""What a run tells its user while it trains: log lines, the progress bar, metrics, samples, plot.

:class:`Reporter` is the loop's one handle for all of it. On rank 0 it writes ``metrics.jsonl``
(and TensorBoard events) through :class:`~quillgpt.training.metrics.MetricsLog`, appends
generated text to ``samples.txt``, redraws ``loss.png``, and shows either a tqdm bar (on a
terminal) or a log line per ``log_interval``. On the other ranks every method does nothing.
Tokens per second are measured over training steps only: the meter restarts after each
evaluation and checkpoint.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch

from quillgpt.device import peak_memory_bytes
from quillgpt.evaluation import EvalResult
from quillgpt.training.config import TrainConfig
from quillgpt.training.metrics import PLOT_FILE, MetricsLog, plot_losses, read_metrics

SAMPLES_FILE = "samples.txt"


class Progress(Protocol):
    """Where a run stands (the loop's :class:`~quillgpt.training.loop.LoopState` is one)."""

    step: int
    tokens: int
    elapsed: float
    nonfinite_total: int


class Reporter:
    """Progress lines, metrics and samples of one run (rank 0 only; silent elsewhere).

    Args:
        run_dir: the run directory.
        cfg: says whether to show a bar (``progress``, on a terminal) over which budget, and
            whether to mirror the metrics to TensorBoard.
        active: whether this process reports (rank 0).
        log: where lines go; default stderr (through tqdm while a bar is showing).
    """

    def __init__(
        self,
        run_dir: Path,
        cfg: TrainConfig,
        *,
        active: bool,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.run_dir, self.active, self._log = run_dir, active, log
        self.metrics = MetricsLog(run_dir, tensorboard=cfg.tensorboard) if active else None
        self.bar = None
        if active and cfg.progress and sys.stderr.isatty():
            from tqdm.auto import tqdm

            unit = "step" if cfg.max_steps else "s"  # a time budget counts seconds
            total = cfg.max_steps or cfg.max_time
            self.bar = tqdm(total=total, unit=unit, dynamic_ncols=True, file=sys.stderr)
        self._meter = (0, time.perf_counter())  # (tokens, clock) tokens per second count from

    def log(self, line: str) -> None:
        """Print a line (through tqdm when a progress bar is showing)."""
        if not self.active:
            return
        if self._log is not None:
            self._log(line)
            return
        from tqdm.auto import tqdm

        tqdm.write(line, file=sys.stderr)

    def run_line(self, model: Any, cfg: TrainConfig, tokens_per_step: int, where: str,
                 precision: str, compiled: bool) -> None:  # fmt: skip
        """Say what is about to run: model, tokens/step, device, precision, optimiser, budget."""
        c = model.config
        params = model.num_parameters(exclude_embeddings=True)
        budget = [f"{cfg.max_steps} steps"] if cfg.max_steps else []
        budget += [f"{cfg.max_time:.0f} s"] if cfg.max_time else []
        self.log(
            f"training {params / 1e6:.2f}M non-embedding parameters (L{c.n_layer} C{c.n_embd} "
            f"H{c.n_head} T{c.block_size} V{c.vocab_size}), {tokens_per_step:,} tokens/step, "
            f"{where}, {precision}, compile {'on' if compiled else 'off'}, {cfg.optimizer} "
            f"{cfg.schedule}, budget "
            f"{' or '.join(budget)} -> {self.run_dir}"
        )

    def restart_meter(self, tokens: int) -> None:
        """Count tokens per second from here (after an evaluation, a checkpoint, a resume)."""
        self._meter = (tokens, time.perf_counter())

    def advance(self, done: float) -> None:
        """Move the bar to ``done`` steps (or seconds)."""
        if self.bar is not None:
            self.bar.update(done - self.bar.n)

    def drop_after(self, step: int) -> None:
        """Forget metrics lines past ``step`` (a resume from there reads as one run)."""
        if self.metrics is not None:
            self.metrics.truncate_after(step)

    def train_line(
        self, state: Progress, loss: float, norm: float, lr: float, device: torch.device
    ) -> None:
        """Write a ``train`` metrics line and show it."""
        if self.metrics is None:
            return
        seen, since = self._meter
        tokens_per_s = (state.tokens - seen) / max(time.perf_counter() - since, 1e-9)
        self.restart_meter(state.tokens)
        self.metrics.write(
            {
                **_where("train", state),
                "loss": loss,
                "lr": lr,
                "grad_norm": norm,
                "tokens_per_s": round(tokens_per_s, 1),
                "peak_memory_mb": round(peak_memory_bytes(device) / 2**20, 1),
                "nonfinite_steps": state.nonfinite_total,
            }
        )
        if self.bar is not None:
            rate = f"{tokens_per_s:,.0f}"
            self.bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", tok_s=rate, refresh=False)
        else:
            self.log(
                f"step {state.step}: loss {loss:.4f}, lr {lr:.2e}, grad norm {norm:.3f}, "
                f"{tokens_per_s:,.0f} tok/s, {state.elapsed:.0f}s"
            )

    def eval_line(self, state: Progress, result: EvalResult, best: bool, lr: float | None) -> None:
        """Write an ``eval`` metrics line (the fixed validation sample) and show it."""
        if self.metrics is None:
            return
        figures = {"val_loss": result.loss, "val_ppl": result.perplexity, "val_bpb": result.bpb}
        self.metrics.write({**_where("eval", state), **figures, "lr": lr})
        self.log(
            f"step {state.step}: val loss {result.loss:.4f}, ppl {result.perplexity:.2f}, "
            f"{result.bpb:.4f} bits/byte{' (best)' if best else ''}, {state.tokens:,} tokens, "
            f"{state.elapsed:.0f}s"
        )

    def final_line(self, state: Progress, result: EvalResult, seconds: float) -> None:
        """Write the ``final_eval`` line (the whole validation split) and show it."""
        if self.metrics is None:
            return
        figures = {"val_loss": result.loss, "val_ppl": result.perplexity, "val_bpb": result.bpb}
        extra = {"val_targets": result.targets, "eval_seconds": round(seconds, 3)}
        self.metrics.write({**_where("final_eval", state), **figures, **extra})
        self.log(
            f"final: whole validation split ({result.targets:,} tokens): loss "
            f"{result.loss:.4f}, perplexity {result.perplexity:.2f}, {result.bpb:.4f} "
            f"bits/byte ({seconds:.0f} s, not counted in the budget)"
        )

    def samples(self, text: str) -> None:
        """Append generated text to ``samples.txt``."""
        if self.active and text:
            with open(self.run_dir / SAMPLES_FILE, "a", encoding="utf-8") as handle:
                handle.write(text)

    def plot(self) -> None:
        """Redraw ``loss.png`` from ``metrics.jsonl``; a failure is reported, not fatal."""
        if self.metrics is None:
            return
        try:
            plot_losses(
                read_metrics(self.metrics.path), self.run_dir / PLOT_FILE, title=self.run_dir.name
            )
        except OSError as exc:
            self.log(f"warning: could not draw {PLOT_FILE} ({exc})")

    def close(self) -> None:
        """Close the bar and the TensorBoard writer."""
        if self.bar is not None:
            self.bar.close()
        if self.metrics is not None:
            self.metrics.close()


def _where(kind: str, state: Progress) -> dict[str, Any]:
    """The fields every metrics line starts with."""
    return {
        "kind": kind,
        "step": state.step,
        "tokens": state.tokens,
        "elapsed": round(state.elapsed, 3),
    }


def sample_text(
    model: Any,
    tokenizer: Any,
    prompt_ids: list[int],
    *,
    count: int,
    tokens: int,
    temperature: float,
    seed: int,
    header: str,
) -> str:
    """``count`` continuations of ``prompt_ids`` (seeds ``seed, seed + 1, ...``) as text."""
    if count == 0 or tokens == 0:
        return ""
    device = next(model.parameters()).device
    prompt = torch.tensor([prompt_ids], device=device)
    parts = [header]
    for i in range(count):
        out = model.generate(prompt, tokens, temperature=temperature, top_k=200, seed=seed + i)
        text = tokenizer.decode(out[0].tolist(), skip_special_tokens=False)
        parts.append(f"--- sample {i + 1} ---\n{text}\n")
    return "".join(parts) + "\n"
