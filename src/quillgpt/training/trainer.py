"""The training loop: a :class:`Trainer` that turns a model and prepared data into a run directory.

One optimiser step is::

    for each of grad_accum micro-batches (DDP: no gradient all-reduce but on the last):
        with autocast: loss = cross_entropy(model(x), y)
        scaler.scale(loss / grad_accum).backward()
    scaler.unscale_(optimizer); norm = clip_grad_norm_(params, grad_clip)
    if the loss or the norm is not finite: skip the step and count it
    else: optimizer.step()            (through the scaler with fp16)
    scheduler.step()                  (warm-up, then cosine/linear decay to the floor)

around which the trainer evaluates, writes metrics, samples and checkpoints, watches the time
budget and the stop signals, and can resume from ``train_state.pt`` *exactly*: the weights,
AdamW's moments, the scheduler (with its fitted ``max_steps``), the grad scaler, the random states
of Python, NumPy and PyTorch of every rank, the data position and the counters all come back, so
on a CPU with the same settings a resumed run ends bit-for-bit where an uninterrupted one does.

The run directory (see ``docs/training.md``)::

    config.json          {"model": ..., "train": ..., "data": ..., "state": {"step": ...}}
    tokenizer.json
    model.safetensors    latest weights (what ``quill generate`` loads)
    train_state.pt       everything for --resume, weights included (one atomic file)
    best/                weights with the lowest validation loss so far
    metrics.jsonl        one JSON object per log or evaluation step
    loss.png             training and validation curves
    samples.txt          generated text at each evaluation
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from quillgpt.checkpoint import CONFIG_FILE, TOKENIZER_FILE, atomic_write_text, save_checkpoint
from quillgpt.config import ModelConfig
from quillgpt.errors import CheckpointError, QuillError
from quillgpt.model import DecoderLM
from quillgpt.optimize.devices import peak_memory_bytes, resolve_device
from quillgpt.training import distributed as dist_utils
from quillgpt.training.config import TrainConfig
from quillgpt.training.evaluate import (
    EvalResult,
    eval_mode,
    evaluate,
    sample_batches,
    sample_starts,
)
from quillgpt.training.metrics import MetricsLog, plot_losses, read_metrics
from quillgpt.training.optim import build_optimizer
from quillgpt.training.precision import Precision
from quillgpt.training.schedule import TimeBudget, build_scheduler, schedule_of
from quillgpt.training.signals import GracefulStop
from quillgpt.training.state import (
    TRAIN_STATE_FILE,
    capture_rng_state,
    load_train_state,
    restore_rng_state,
    save_train_state,
)

if TYPE_CHECKING:
    from quillgpt.data import PreparedData

SAMPLES_FILE = "samples.txt"
BEST_DIR = "best"

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class TrainResult:
    """How a run ended.

    Attributes:
        run_dir: the run directory.
        step: optimiser steps completed.
        tokens: training tokens processed (all ranks).
        elapsed: training seconds (the budget's clock: the final evaluation is not included).
        stopped: why the loop ended: ``max_steps`` (the configured step count was reached),
            ``max_time`` (the time budget is spent: the last step of the schedule fitted to it
            was reached, or the clock ran out first), ``SIGINT`` or ``SIGTERM`` (a resumable
            interruption). (Too many non-finite steps raise :class:`NonFiniteError` instead.)
        last_eval: the last evaluation on the fixed validation sample, if any.
        final_eval: the evaluation on the whole validation split, if run.
        best_val_loss: lowest validation loss on the sample.
        nonfinite_steps: optimiser steps skipped for a non-finite loss or gradient.
    """

    run_dir: Path
    step: int
    tokens: int
    elapsed: float
    stopped: str
    last_eval: EvalResult | None = None
    final_eval: EvalResult | None = None
    best_val_loss: float | None = None
    nonfinite_steps: int = 0

    @property
    def interrupted(self) -> bool:
        """Whether a signal stopped the run (resume it with ``--resume``)."""
        return self.stopped in ("SIGINT", "SIGTERM")


class NonFiniteError(QuillError):
    """Too many optimiser steps in a row had a non-finite loss or gradient."""


class Trainer:
    """Trains a :class:`~quillgpt.DecoderLM` on prepared data into a run directory.

    Example::

        data = prepare_data("shakespeare", tokenizer="bpe", vocab_size=2048)
        trainer = Trainer(ModelConfig.preset("mini"), TrainConfig(max_time=300), data)
        result = trainer.fit()

        # or train a model you built or loaded yourself (in place):
        model = load_checkpoint("runs/pretrained")
        result = Trainer(None, TrainConfig(out_dir="runs/tuned", max_steps=200), data,
                         model=model).fit()

    Args:
        model_config: the model's shape; ``vocab_size`` is replaced by the tokenizer's. May be
            ``None`` when ``model`` is given (its ``config`` is used).
        train_config: everything else.
        data: a prepared corpus (:func:`quillgpt.data.prepare_data`).
        model: train this :class:`~quillgpt.DecoderLM` instead of building a fresh one from
            ``model_config``. It is trained in place: moved to the training device, switched to
            training mode, and left holding the final weights. Its ``config`` must agree with
            ``model_config`` (if given) and its ``vocab_size`` with the tokenizer of ``data``;
            its parameters must be fp32 (``precision`` sets mixed precision). Under ``torchrun``
            every process must pass the same weights.
        resume: continue the run in ``train_config.out_dir`` from its ``train_state.pt``. The
            model configuration and the tokenizer must match the checkpoint's. With ``model``,
            the checkpoint's weights are loaded into it.
        log: where progress lines go (rank 0 only); default stderr.
        compile_backend: ``torch.compile`` backend (default inductor); tests use it to
            exercise the fallback to eager.

    Raises:
        ValueError: if ``model`` cannot be trained as configured (the message says what to
            change), or neither ``model_config`` nor ``model`` is given.
        QuillError: (or a subclass) for anything the user can fix: an existing run directory
            without ``--resume``, a mismatching checkpoint, an unavailable device.
    """

    def __init__(
        self,
        model_config: ModelConfig | None,
        train_config: TrainConfig,
        data: PreparedData,
        *,
        model: DecoderLM | None = None,
        resume: bool = False,
        log: Callable[[str], None] | None = None,
        compile_backend: str | Callable[..., Any] = "inductor",
    ) -> None:
        self.cfg = train_config
        self.data = data
        if model is not None:
            _check_given_model(model, data, model_config)
            model_config = model.config
        elif model_config is None:
            raise ValueError("Trainer needs a model_config, or a model to train (model=...)")
        self.model_config = dataclasses.replace(model_config, vocab_size=data.vocab_size)
        self.run_dir = Path(train_config.out_dir)
        self._log_fn = log
        self._compile_backend = compile_backend
        if train_config.threads is not None:
            torch.set_num_threads(train_config.threads)
        if train_config.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
        device = resolve_device(train_config.device)
        self.dist, self.device = dist_utils.init_distributed(device)
        self.is_main = self.dist.is_main
        self.sharded = self.dist.enabled and train_config.parallel == "fsdp"
        self.tokenizer = data.load_tokenizer()
        self.tokenizer_sha256 = str(data.meta["tokenizer"]["sha256"])

        state = self._check_run_dir(resume)
        self.precision = Precision.for_device(self.device, train_config.precision)
        self._seed_everything(train_config.seed)
        if model is None:
            model = DecoderLM(self.model_config)
        self.model = model.to(self.device).train()
        self.model.gradient_checkpointing = train_config.gradient_checkpointing
        self.wrapped = self._wrap(self.model)
        self.optimizer = build_optimizer(
            self.model,
            lr=train_config.lr,
            weight_decay=train_config.weight_decay,
            betas=(train_config.beta1, train_config.beta2),
            eps=train_config.eps,
            device=self.device,
            impl=train_config.optimizer_impl,
        )
        self.scheduler = build_scheduler(
            self.optimizer,
            warmup_steps=train_config.warmup_steps,
            max_steps=train_config.max_steps,
            min_ratio=train_config.min_lr_ratio,
            shape=train_config.schedule,
        )
        self.step = 0
        self.micro_step = 0
        self.tokens = 0
        self.elapsed = 0.0
        self.best_val_loss: float | None = None
        self.nonfinite_streak = 0
        self.nonfinite_total = 0
        self.last_eval: EvalResult | None = None
        if state is not None:
            self._load_state(state)
        self.forward = self._maybe_compile(self.wrapped)
        if self.is_main:
            self._write_config()
        self.metrics = MetricsLog(
            self.run_dir, tensorboard=train_config.tensorboard and self.is_main
        )
        if self.is_main:
            self.metrics.truncate_after(self.step if state is not None else -1)

    # ------------------------------------------------------------------ set-up

    def _log(self, line: str) -> None:
        """Print a line on rank 0 (through tqdm when a progress bar is showing)."""
        if not self.is_main:
            return
        if self._log_fn is not None:
            self._log_fn(line)
            return
        from tqdm.auto import tqdm

        tqdm.write(line, file=sys.stderr)

    def _check_run_dir(self, resume: bool) -> dict[str, Any] | None:
        """Refuse to overwrite a run; on resume, load and check its ``train_state.pt``."""
        state_path = self.run_dir / TRAIN_STATE_FILE
        if not resume:
            if state_path.exists():
                raise QuillError(
                    f"{self.run_dir} already holds a run (train_state.pt); pass --resume to "
                    "continue it, or choose another --out_dir"
                )
            return None
        if not state_path.exists():
            self._log(f"nothing to resume in {self.run_dir} (no {TRAIN_STATE_FILE}): from step 0")
            return None
        state = load_train_state(self.run_dir)
        if state.get("tokenizer_sha256") != self.tokenizer_sha256:
            raise CheckpointError(
                f"cannot resume {self.run_dir}: the tokenizer differs from the one it was trained "
                "with; use the same data and tokenizer options as the original run"
            )
        saved_model = state.get("model_config", {})
        if saved_model != self.model_config.to_dict():
            diff = sorted(
                k
                for k in set(saved_model) | set(self.model_config.to_dict())
                if saved_model.get(k) != self.model_config.to_dict().get(k)
            )
            raise CheckpointError(
                f"cannot resume {self.run_dir}: the model config differs from the checkpoint's in "
                f"{', '.join(diff)}; resume without model options (or with the same ones)"
            )
        if state.get("world_size") != self.dist.world_size:
            self._log(
                f"note: resuming on {self.dist.world_size} process(es), saved with "
                f"{state.get('world_size')}: data order and random streams will differ"
            )
        return state

    def _seed_everything(self, seed: int) -> None:
        """Seed Python, NumPy and PyTorch (identically on every rank, for identical init)."""
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    def _wrap(self, model: DecoderLM) -> nn.Module:
        """Wrap for multi-process training (DDP or FSDP2); the model itself for one process."""
        if not self.dist.enabled:
            return model
        if self.sharded:
            return dist_utils.wrap_fsdp(model)
        return dist_utils.wrap_ddp(model, self.device)

    def _maybe_compile(self, module: nn.Module) -> Callable[..., Any]:
        """``torch.compile`` the module if asked (or ``auto`` and worth it); else return it."""
        mode = self.cfg.compile
        if mode == "auto":
            mode = "on" if _compile_pays_off(self.device) else "off"
        if mode == "off":
            return module
        return torch.compile(module, backend=self._compile_backend)

    def _load_state(self, state: dict[str, Any]) -> None:
        """Restore everything :meth:`_train_state` saved."""
        model_state = state["model"] if self.is_main or not self.sharded else {}
        optim_state = state["optimizer"] if self.is_main or not self.sharded else {}
        dist_utils.load_full_state_dicts(
            self.model, self.optimizer, model_state, optim_state, sharded=self.sharded
        )
        self.scheduler.load_state_dict(state["scheduler"])
        if self.cfg.max_steps is not None and self.cfg.max_time is None:
            schedule_of(self.scheduler).max_steps = self.cfg.max_steps
        self.precision.scaler.load_state_dict(state["scaler"])
        for key in ("step", "micro_step", "tokens", "nonfinite_streak", "nonfinite_total"):
            setattr(self, key, int(state[key]))
        self.elapsed = float(state["elapsed"])
        self.best_val_loss = state["best_val_loss"]
        rng = state["rng"]
        if len(rng) == self.dist.world_size:
            restore_rng_state(rng[self.dist.rank])
        self._log(f"resumed {self.run_dir} at step {self.step} ({self.tokens:,} tokens)")

    def _write_config(self) -> None:
        """Write ``config.json`` and ``tokenizer.json``; sweep away leftovers of killed writes."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for stale in [*self.run_dir.glob(".*.tmp"), *self.run_dir.glob(f"{BEST_DIR}/.*.tmp")]:
            stale.unlink(missing_ok=True)  # a half-written file of a process that was killed
        atomic_write_text(self.run_dir / CONFIG_FILE, json.dumps(self._config_document(), indent=2))
        shutil.copyfile(self.data.tokenizer_path, self.run_dir / TOKENIZER_FILE)

    def _config_document(self) -> dict[str, Any]:
        """The sections of ``config.json`` besides ``model``."""
        return {
            "model": self.model_config.to_dict(),
            "train": self.cfg.to_dict(),
            "data": {
                "prepared": str(self.data.directory),
                "tokenizer_sha256": self.tokenizer_sha256,
                "val_tokens": self.data.val_tokens,
                "val_bytes": self.data.val_bytes,
            },
            "state": {
                "step": self.step,
                "tokens": self.tokens,
                "max_steps": schedule_of(self.scheduler).max_steps,
                "world_size": self.dist.world_size,
                "precision": self.precision.name,
            },
        }

    # ------------------------------------------------------------------ the loop

    @property
    def tokens_per_step(self) -> int:
        """Training tokens per optimiser step, all ranks together."""
        cfg = self.cfg
        return cfg.batch_size * cfg.grad_accum * self.dist.world_size * self.model_config.block_size

    def _train_batches(self) -> Iterator[Batch]:
        """Training batches from the current data position (``micro_step``), for this rank.

        Starting a ``DataLoader`` iterator draws its workers' base seed from torch's global
        generator. The batches do not depend on it (the sampler is seeded), but the draw would
        shift the dropout masks of a resumed run against an uninterrupted one, so the global
        streams are left as they were.
        """
        from quillgpt.data import make_train_loader

        loader = make_train_loader(
            self.data,
            self.model_config.block_size,
            self.cfg.batch_size,
            seed=self.cfg.seed,
            start_step=self.micro_step,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
        )
        with _preserved_rng():
            return iter(loader)

    def fit(self) -> TrainResult:
        """Train until ``max_steps``, the end of ``max_time``, a signal, or too many bad steps.

        Raises:
            NonFiniteError: after ``max_nonfinite`` non-finite steps in a row (the last good
                checkpoint is kept).
            CheckpointError: if the final checkpoint cannot be written.
        """
        cfg = self.cfg
        if cfg.max_steps is None and cfg.max_time is None:
            raise QuillError("set max_steps or max_time (e.g. --max_time 5m) so training can end")
        schedule = schedule_of(self.scheduler)
        budget = TimeBudget(
            cfg.max_time,
            elapsed=self.elapsed,
            step_cap=cfg.max_steps,
        )
        batches = self._train_batches()
        bar = self._progress_bar(schedule.max_steps)
        stopped = ""
        window = _Window(self.tokens, budget.elapsed())
        try:
            with GracefulStop() as stop:
                while True:
                    if schedule.max_steps is not None and self.step >= schedule.max_steps:
                        stopped = self._steps_reason()
                        break
                    if budget.expired():  # a resumed run whose budget was already spent
                        stopped = "max_time"
                        break
                    loss, norm = self._optimizer_step(batches)
                    self.step += 1
                    self.tokens += self.tokens_per_step
                    eval_due = self.step % cfg.eval_interval == 0
                    new_max = budget.observe(self.step - 1)
                    flags = [float(stop.requested), float(budget.expired()), float(new_max or 0)]
                    signal_flag, expired, new_max_all = dist_utils.all_reduce_max(
                        flags, self.device
                    )
                    if new_max_all:
                        schedule.max_steps = max(int(new_max_all), self.step)
                        if bar is not None:
                            bar.total = schedule.max_steps
                    self.scheduler.step()
                    self.elapsed = budget.elapsed()
                    if bar is not None:
                        bar.update(1)
                    if self.step % cfg.log_interval == 0:
                        self._log_train(loss, norm, window, budget, bar)
                    if math.isfinite(norm):
                        self.nonfinite_streak = 0
                    else:
                        self.nonfinite_streak += 1
                        self.nonfinite_total += 1
                        if self.nonfinite_streak >= cfg.max_nonfinite:
                            stopped = "nonfinite"
                            break
                    if signal_flag:
                        stopped = stop.name or "SIGTERM"
                        break
                    finishing = bool(expired) or (
                        schedule.max_steps is not None and self.step >= schedule.max_steps
                    )
                    if eval_due and not finishing:
                        self._evaluate_and_report(budget)
                        window.restart(self.tokens, budget.elapsed())
                    periodic = cfg.ckpt_interval and self.step % cfg.ckpt_interval == 0
                    # While steps are being skipped, keep the last good checkpoint instead.
                    if periodic and not finishing and self.nonfinite_streak == 0:
                        self._save(final=False)
                        window.restart(self.tokens, budget.elapsed())
                    if expired:
                        stopped = "max_time"
                        break
        finally:
            if bar is not None:
                bar.close()
        return self._finish(stopped, budget)

    def _steps_reason(self) -> str:
        """Why the loop reached the schedule's ``max_steps``: ``max_steps`` or ``max_time``.

        With a time budget the schedule's ``max_steps`` is fitted to the budget (and capped by
        an explicit ``max_steps``): reaching it means the time is up, unless it is the cap.
        """
        if self.cfg.max_steps is not None and self.step >= self.cfg.max_steps:
            return "max_steps"
        return "max_time" if self.cfg.max_time is not None else "max_steps"

    def _finish(self, stopped: str, budget: TimeBudget) -> TrainResult:
        """Final evaluation, checkpoint, plot and summary for each way the loop can end."""
        self.elapsed = budget.elapsed()
        if stopped == "nonfinite":
            self.metrics.close()
            raise NonFiniteError(
                f"stopped at step {self.step}: {self.nonfinite_streak} optimiser steps in a row "
                "had a non-finite loss or gradient (they were skipped). The last good checkpoint "
                f"in {self.run_dir} is kept; lower --lr, raise --warmup_steps, set --grad_clip, "
                "or use --precision fp32, then --resume"
            )
        if stopped in ("SIGINT", "SIGTERM"):
            self._save(final=False)
            self._log(
                f"{stopped}: saved a checkpoint at step {self.step} in {self.run_dir}; continue "
                "with --resume"
            )
            self.metrics.close()
            return self._result(stopped)
        self._evaluate_and_report(budget)
        self._save(final=True)
        result = self._result(stopped)
        if self.cfg.final_eval:
            start = time.perf_counter()
            with _preserved_rng():
                result.final_eval = self._run_eval(full=True)
            seconds = time.perf_counter() - start
            if self.is_main:
                final = result.final_eval
                self.metrics.write(
                    {
                        "kind": "final_eval",
                        "step": self.step,
                        "tokens": self.tokens,
                        "elapsed": round(self.elapsed, 3),
                        "val_loss": final.loss,
                        "val_ppl": final.perplexity,
                        "val_bpb": final.bpb,
                        "val_targets": final.targets,
                        "eval_seconds": round(seconds, 3),
                    }
                )
                self._plot()
                self._log(
                    f"final: whole validation split ({final.targets:,} tokens): loss "
                    f"{final.loss:.4f}, perplexity {final.perplexity:.2f}, "
                    f"{final.bpb:.4f} bits/byte ({seconds:.0f} s, not counted in the budget)"
                )
        self.metrics.close()
        dist_utils.barrier()
        return result

    def _result(self, stopped: str) -> TrainResult:
        return TrainResult(
            run_dir=self.run_dir,
            step=self.step,
            tokens=self.tokens,
            elapsed=self.elapsed,
            stopped=stopped,
            last_eval=self.last_eval,
            best_val_loss=self.best_val_loss,
            nonfinite_steps=self.nonfinite_total,
        )

    def _optimizer_step(self, batches: Iterator[Batch]) -> tuple[float, float]:
        """Run one optimiser step over ``grad_accum`` micro-batches; return (loss, grad norm).

        If the compiled model fails (a missing compiler, an unsupported operation), the step is
        redone in eager mode with a warning, and the run continues eagerly.
        """
        micro = [next(batches) for _ in range(self.cfg.grad_accum)]
        self.micro_step += len(micro)
        if self.forward is self.wrapped:
            return self._step_on(micro, self.wrapped)
        try:
            return self._step_on(micro, self.forward)
        except Exception as exc:  # compilation errors come in many types
            warnings.warn(
                f"torch.compile failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
                "continuing without compilation (--compile off silences this)",
                stacklevel=2,
            )
            self.optimizer.zero_grad(set_to_none=True)
            self.forward = self.wrapped
            return self._step_on(micro, self.wrapped)

    def _step_on(self, micro: list[Batch], forward: Callable[..., Any]) -> tuple[float, float]:
        """Forward/backward over ``micro``, clip, and step (or skip a non-finite step)."""
        scaler = self.precision.scaler
        accum = len(micro)
        total = torch.zeros((), device=self.device)
        for i, (x, y) in enumerate(micro):
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            with self._grad_sync(last=i == accum - 1), self.precision.autocast():
                _, loss = forward(x, y)
            total += loss.detach().float()
            scaler.scale(loss / accum).backward()
        scaler.unscale_(self.optimizer)
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        if hasattr(norm, "full_tensor"):  # a DTensor under FSDP
            norm = norm.full_tensor()
        norm_value = float(norm)
        loss_value = float(total) / accum
        if scaler.is_enabled():
            scaler.step(self.optimizer)  # skips the step itself if gradients overflowed
            scaler.update()
        elif math.isfinite(norm_value):  # a non-finite loss makes the gradients non-finite too
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_value, norm_value

    def _grad_sync(self, *, last: bool) -> contextlib.AbstractContextManager[object]:
        """Skip the gradient all-reduce on all micro-batches but the last of a step."""
        if not self.dist.enabled:
            return contextlib.nullcontext()
        if self.sharded:
            self.model.set_requires_gradient_sync(last)  # type: ignore[operator]
            return contextlib.nullcontext()
        return contextlib.nullcontext() if last else self.wrapped.no_sync()  # type: ignore[operator]

    # ------------------------------------------------------------------ reporting

    def _progress_bar(self, total: int | None) -> Any:
        """A tqdm bar on rank 0 when ``progress`` is on and stderr is a terminal."""
        if not (self.is_main and self.cfg.progress and sys.stderr.isatty()):
            return None
        from tqdm.auto import tqdm

        return tqdm(
            total=total, initial=self.step, unit="step", dynamic_ncols=True, file=sys.stderr
        )

    def _log_train(
        self, loss: float, norm: float, window: _Window, budget: TimeBudget, bar: Any
    ) -> None:
        """Write a ``train`` metrics line (and update the bar or print the line)."""
        (loss_sum,) = dist_utils.all_reduce_sum([loss], self.device)
        loss = loss_sum / self.dist.world_size
        if not self.is_main:
            return
        now = budget.elapsed()
        tokens_per_s = window.rate(self.tokens, now)
        lr = self.scheduler.get_last_lr()[0]
        record = {
            "kind": "train",
            "step": self.step,
            "tokens": self.tokens,
            "elapsed": round(now, 3),
            "loss": loss,
            "lr": lr,
            "grad_norm": norm,
            "tokens_per_s": round(tokens_per_s, 1),
            "peak_memory_mb": round(peak_memory_bytes(self.device) / 2**20, 1),
            "nonfinite_steps": self.nonfinite_total,
        }
        self.metrics.write(record)
        if bar is not None:
            bar.set_postfix(
                loss=f"{loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_s:,.0f}", refresh=False
            )
        else:
            self._log(
                f"step {self.step}: loss {loss:.4f}, lr {lr:.2e}, grad norm {norm:.3f}, "
                f"{tokens_per_s:,.0f} tok/s, {now:.0f}s"
            )

    def _run_eval(self, *, full: bool) -> EvalResult:
        """Evaluate the current weights on the fixed sample or on the whole validation split."""
        from quillgpt.data import TokenWindows, make_eval_loader

        data, T = self.data, self.model_config.block_size
        tokens_per_byte = (data.val_tokens - 1) / data.val_bytes
        eval_model = self.wrapped if self.sharded else self.model
        if full or self.cfg.eval_tokens == 0:
            loader = make_eval_loader(
                data,
                T,
                self.cfg.batch_size,
                rank=self.dist.rank,
                world_size=self.dist.world_size,
            )
            batches: Any = loader
            count = len(loader)
        else:
            windows = TokenWindows(data.path("validation"), data.dtype, T)
            starts = sample_starts(data.val_tokens, T, max(1, self.cfg.eval_tokens // T))
            offsets = sample_batches(
                starts, self.cfg.batch_size, rank=self.dist.rank, world_size=self.dist.world_size
            )
            batches = (windows.__getitems__(o) for o in offsets)
            count = len(offsets)
        with eval_mode(eval_model):
            return evaluate(
                lambda x: eval_model(x)[0],
                batches,
                device=self.device,
                autocast=self.precision.autocast,
                tokens_per_byte=tokens_per_byte,
                num_batches=count,
                sharded=self.sharded,
            )

    def _evaluate_and_report(self, budget: TimeBudget) -> None:
        """Evaluate on the sample; write the metrics line, samples, plot; update ``best/``."""
        with _preserved_rng():
            result = self._run_eval(full=False)
        self.last_eval = result
        improved = self.best_val_loss is None or result.loss < self.best_val_loss
        if improved:
            self.best_val_loss = result.loss
        if improved and self.cfg.save_best:
            self._save_best(result)
        if not self.is_main:
            return
        self.metrics.write(
            {
                "kind": "eval",
                "step": self.step,
                "tokens": self.tokens,
                "elapsed": round(budget.elapsed(), 3),
                "val_loss": result.loss,
                "val_ppl": result.perplexity,
                "val_bpb": result.bpb,
                "lr": self.scheduler.get_last_lr()[0],
            }
        )
        self._log(
            f"step {self.step}: val loss {result.loss:.4f}, ppl {result.perplexity:.2f}, "
            f"{result.bpb:.4f} bits/byte{' (best)' if improved else ''}, "
            f"{self.tokens:,} tokens, {budget.elapsed():.0f}s"
        )
        self._write_samples_and_plot()

    def _write_samples_and_plot(self) -> None:
        """Append samples to ``samples.txt`` and redraw ``loss.png`` (rank 0)."""
        if not self.is_main:
            return
        with _preserved_rng():
            # Under FSDP the weights are sharded: sampling would need every rank (docs/training.md).
            text = "" if self.sharded else self._samples()
        if text:
            with open(self.run_dir / SAMPLES_FILE, "a", encoding="utf-8") as handle:
                handle.write(text)
        self._plot()

    def _plot(self) -> None:
        """Redraw ``loss.png`` from ``metrics.jsonl``; a failure is reported, not fatal."""
        try:
            plot_losses(
                read_metrics(self.metrics.path), self.run_dir / "loss.png", title=self.run_dir.name
            )
        except OSError as exc:
            self._log(f"warning: could not draw loss.png ({exc})")

    def _samples(self) -> str:
        """Generate ``num_samples`` continuations of ``sample_prompt`` (fixed seeds)."""
        cfg = self.cfg
        if cfg.num_samples == 0 or cfg.sample_tokens == 0:
            return ""
        ids = self.tokenizer.encode(cfg.sample_prompt, add_special_tokens=False).ids
        prompt = torch.tensor([ids or [self.data.eot_id]], device=self.device)
        header = f"=== step {self.step} ({self.tokens:,} tokens) ===\n"
        parts = [header]
        with self.precision.autocast():
            for i in range(cfg.num_samples):
                out = self.model.generate(
                    prompt,
                    cfg.sample_tokens,
                    temperature=cfg.sample_temperature,
                    top_k=200,
                    seed=cfg.seed + i,
                )
                text = self.tokenizer.decode(out[0].tolist(), skip_special_tokens=False)
                parts.append(f"--- sample {i + 1} ---\n{text}\n")
        return "".join(parts) + "\n"

    # ------------------------------------------------------------------ checkpoints

    def _train_state(self, model_state: dict[str, Any], optim_state: dict[str, Any]) -> dict:
        """Everything :meth:`_load_state` needs (tensors and plain data only)."""
        return {
            "step": self.step,
            "micro_step": self.micro_step,
            "tokens": self.tokens,
            "elapsed": self.elapsed,
            "best_val_loss": self.best_val_loss,
            "nonfinite_streak": self.nonfinite_streak,
            "nonfinite_total": self.nonfinite_total,
            "world_size": self.dist.world_size,
            "model_config": self.model_config.to_dict(),
            "train_config": self.cfg.to_dict(),
            "tokenizer_sha256": self.tokenizer_sha256,
            "model": model_state,
            "optimizer": optim_state,
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.precision.scaler.state_dict(),
            "rng": dist_utils.gather_objects(capture_rng_state()),
        }

    def _save(self, *, final: bool) -> None:
        """Write ``train_state.pt``, then ``model.safetensors`` and ``config.json`` (rank 0).

        A failed periodic save is reported and training goes on (the previous checkpoint is
        intact); a failed final save raises :class:`CheckpointError`.
        """
        model_state, optim_state = dist_utils.full_state_dicts(
            self.model, self.optimizer, sharded=self.sharded
        )
        state = self._train_state(model_state, optim_state)
        error: CheckpointError | None = None
        if self.is_main:
            try:
                save_train_state(self.run_dir, state)
                save_checkpoint(
                    self._host_model(model_state),
                    self.run_dir,
                    tokenizer=self.data.tokenizer_path,
                    extra_config=self._config_document_extra(),
                )
            except CheckpointError as exc:
                error = exc
        dist_utils.barrier()
        if error is None:
            return
        if final:
            raise error
        self._log(f"warning: checkpoint at step {self.step} failed: {error}")

    def _save_best(self, result: EvalResult) -> None:
        """Write ``best/`` (weights, config, tokenizer) for a new lowest validation loss."""
        model_state = dist_utils.full_model_state_dict(self.model) if self.sharded else None
        if not self.is_main:
            return
        extra = self._config_document_extra()
        extra["best"] = {"step": self.step, "val_loss": result.loss, "val_bpb": result.bpb}
        try:
            save_checkpoint(
                self._host_model(model_state),
                self.run_dir / BEST_DIR,
                tokenizer=self.data.tokenizer_path,
                extra_config=extra,
            )
        except CheckpointError as exc:
            self._log(f"warning: could not update {BEST_DIR}/: {exc}")

    def _config_document_extra(self) -> dict[str, Any]:
        document = self._config_document()
        document.pop("model")
        return document

    def _host_model(self, model_state: dict[str, Any] | None) -> DecoderLM:
        """The plain model to save: itself, or (FSDP) a CPU copy built from the full state."""
        if not self.sharded or model_state is None:
            return self.model
        host = DecoderLM(self.model_config)
        host.load_state_dict(model_state)
        return host


class _Window:
    """Training tokens per second since the previous log line (evaluations and saves excluded)."""

    def __init__(self, tokens: int, now: float) -> None:
        self.restart(tokens, now)

    def restart(self, tokens: int, now: float) -> None:
        """Start measuring from here (after an evaluation or a checkpoint)."""
        self.tokens, self.time = tokens, now

    def rate(self, tokens: int, now: float) -> float:
        """Tokens per second since the last call or restart, then restart."""
        value = (tokens - self.tokens) / max(now - self.time, 1e-9)
        self.restart(tokens, now)
        return value


@contextlib.contextmanager
def _preserved_rng() -> Iterator[None]:
    """Run the block without disturbing the global random streams (exact resume)."""
    state = capture_rng_state()
    try:
        yield
    finally:
        restore_rng_state(state)


def _compile_pays_off(device: torch.device) -> bool:
    """Whether ``compile=auto`` turns ``torch.compile`` on for ``device``.

    On CUDA and XPU it does. On a CPU, inductor generates C++ and needs a compiler; it paid
    off on the measured CPU (see docs/performance.md). MPS support is still experimental: off.
    """
    if device.type in ("cuda", "xpu"):
        return True
    if device.type == "cpu":
        compilers = (os.environ.get("CXX", "g++"), "clang++")
        return any(shutil.which(c) is not None for c in compilers)
    return False


def _check_given_model(
    model: nn.Module, data: PreparedData, model_config: ModelConfig | None = None
) -> None:
    """Check that ``model`` can be trained on ``data`` (and is the one ``model_config`` describes).

    Args:
        model: the model to train.
        data: the prepared corpus it is to be trained on.
        model_config: the configuration it was given with, if any; ``vocab_size`` is not
            compared (the trainer takes it from the tokenizer).

    Raises:
        ValueError: naming what to change: not a plain :class:`~quillgpt.DecoderLM` (compiled,
            wrapped or quantized), a ``vocab_size`` other than the tokenizer's, a configuration
            that differs from ``model_config``, or parameters that are not fp32.
    """
    if not isinstance(model, DecoderLM):
        raise ValueError(
            f"model must be a quillgpt DecoderLM, got {type(model).__name__}; pass the plain "
            "model (not torch.compile'd or DDP-wrapped: set TrainConfig.compile and run under "
            "torchrun instead)"
        )
    if getattr(model, "quantization", None):
        raise ValueError(
            "model is int8-quantized and cannot be trained; train the fp32 model (e.g. "
            "load_checkpoint of the run it came from) and quantize afterwards"
        )
    config = model.config
    if config.vocab_size != data.vocab_size:
        raise ValueError(
            f"model.config.vocab_size is {config.vocab_size} but the tokenizer of "
            f"{data.directory} has {data.vocab_size} tokens; build the model with "
            f"ModelConfig(vocab_size={data.vocab_size}, ...) or prepare the data with the "
            "model's own tokenizer"
        )
    if model_config is not None:
        given = dataclasses.replace(model_config, vocab_size=config.vocab_size).to_dict()
        actual = config.to_dict()
        diff = sorted(k for k in given.keys() | actual.keys() if given.get(k) != actual.get(k))
        if diff:
            details = ", ".join(f"{k}={actual.get(k)!r} (config: {given.get(k)!r})" for k in diff)
            raise ValueError(
                f"the model does not match model_config: {details}; pass model.config (or "
                "None) as model_config"
            )
    wrong = sorted(
        {str(p.dtype) for p in model.parameters() if p.is_floating_point()} - {"torch.float32"}
    )
    if wrong:
        raise ValueError(
            f"the model has {', '.join(wrong)} parameters; train fp32 parameters (model.float()) "
            "and set TrainConfig.precision (bf16, fp16) for mixed precision"
        )


def train(
    model_config: ModelConfig | None,
    train_config: TrainConfig,
    data: PreparedData,
    *,
    model: DecoderLM | None = None,
    resume: bool = False,
) -> TrainResult:
    """Build a :class:`Trainer` and run it; a shortcut for scripts and notebooks.

    Example::

        result = train(ModelConfig.preset("mini"), TrainConfig(max_time=300), data)
        result = train(None, TrainConfig(out_dir="runs/more", max_steps=100), data, model=model)

    Args:
        model_config: the shape of a fresh model; ``None`` with ``model``.
        train_config: everything else.
        data: a prepared corpus (:func:`quillgpt.data.prepare_data`).
        model: a :class:`~quillgpt.DecoderLM` to train in place instead of a fresh one (see
            :class:`Trainer` for what it must agree with).
        resume: continue the run in ``train_config.out_dir`` (with ``model``: into it).

    Returns:
        How the run ended (:class:`TrainResult`).

    Raises:
        ValueError: if ``model`` does not fit the data or ``model_config`` (the message says
            what to change).
    """
    return Trainer(model_config, train_config, data, model=model, resume=resume).fit()
