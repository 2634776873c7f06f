"""The training loop: :func:`train` turns a model and prepared data into a run directory.

One optimiser step (:func:`train_step`)::

    for each of grad_accum micro-batches (many processes: gradients reduced on the last only):
        with autocast: loss = cross_entropy(model(x), y)
        scaler.scale(loss / grad_accum).backward()
    scaler.unscale_(optimizer); norm = clip_grad_norm_(params, grad_clip)
    if the loss or the norm is not finite: skip the step (counted)
    else: optimizer.step()            (through the scaler with fp16)

Around it, :func:`train` sets the learning rate (a pure function of the step and the budget
spent, :mod:`~quillgpt.training.schedule`), logs, evaluates, checkpoints and stops (a budget
spent, a signal, too many bad steps). Everything it counts is one :class:`LoopState`, saved in
``train_state.pt`` with the weights, the optimiser, the grad scaler and every rank's random
states, so on a CPU with the same settings a resumed run ends bit-for-bit where an uninterrupted
one does. The other modules of the package each do one job for it: ``parallel`` (one process,
DDP, FSDP), ``run_dir`` (files and resume state), ``report`` (what the user sees), ``optim``,
``precision``, ``schedule``.
"""

from __future__ import annotations

import functools
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from quillgpt.config import ModelConfig
from quillgpt.data import PreparedData, make_train_loader
from quillgpt.data.token_windows import Batch
from quillgpt.device import resolve_device
from quillgpt.errors import QuillError
from quillgpt.evaluation import EvalResult
from quillgpt.model import DecoderLM
from quillgpt.threads import thread_policy
from quillgpt.training.compiling import compiled, first_compiled_step
from quillgpt.training.config import TrainConfig, require_budget
from quillgpt.training.given_model import checked_model_config
from quillgpt.training.optim import build_optimizer, set_rates
from quillgpt.training.parallel import Parallel
from quillgpt.training.precision import Precision
from quillgpt.training.report import Reporter
from quillgpt.training.run_dir import RunDir
from quillgpt.training.schedule import budget_progress, budget_spent, lr_factor, muon_momentum_at
from quillgpt.training.signals import GracefulStop
from quillgpt.training.validation import validate


@dataclass
class LoopState:
    """Everything the loop counts: saved in ``train_state.pt`` as one dict, restored as a whole.

    Attributes:
        step: optimiser steps taken.
        micro_step: micro-batches consumed: the position in the training data.
        tokens: training tokens processed (all ranks).
        elapsed: training seconds spent (rank 0's clock; the final evaluation not included).
        best_val_loss: lowest loss on the validation sample so far.
        nonfinite_streak: steps in a row skipped for a non-finite loss or gradient.
        nonfinite_total: steps skipped in all.
    """

    step: int = 0
    micro_step: int = 0
    tokens: int = 0
    elapsed: float = 0.0
    best_val_loss: float | None = None
    nonfinite_streak: int = 0
    nonfinite_total: int = 0


@dataclass
class TrainResult:
    """How a run ended.

    Attributes:
        run_dir: the run directory.
        state: the loop's counters at the end.
        stopped: ``max_steps`` or ``max_time`` (the budget is spent), or ``SIGINT`` / ``SIGTERM``
            (a resumable interruption). Too many non-finite steps raise :class:`NonFiniteError`.
        last_eval: the last evaluation on the fixed validation sample, if any.
        final_eval: the evaluation on the whole validation split, if run.
    """

    run_dir: Path
    state: LoopState
    stopped: str
    last_eval: EvalResult | None = None
    final_eval: EvalResult | None = None

    @property
    def interrupted(self) -> bool:
        """Whether a signal stopped the run (resume it with ``--resume``)."""
        return self.stopped in ("SIGINT", "SIGTERM")


class NonFiniteError(QuillError):
    """Too many optimiser steps in a row had a non-finite loss or gradient."""


def loss_of(model: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``model(x, y)``'s loss alone: what a training step computes and differentiates.

    Compiled, the logits are then not an output of the graph, so the step neither writes the
    ``(B, T, V)`` logits out nor gets a zero gradient for them back from autograd
    (docs/performance.md, "Step throughput against the matmul peak", measures the difference).
    """

    def loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return model(x, y)[1]

    return loss


def train_step(
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    micro_batches: list[Batch],
    precision: Precision,
    par: Parallel,
    grad_clip: float,
) -> tuple[float, float]:
    """One optimiser step over ``micro_batches``; return (mean loss, gradient norm).

    The norm is the global one before clipping; a non-finite loss or norm skips the update.
    """
    scaler, accum = precision.scaler, len(micro_batches)
    total = torch.zeros((), device=par.device)
    for i, (x, y) in enumerate(micro_batches):
        x, y = x.to(par.device, non_blocking=True), y.to(par.device, non_blocking=True)
        with par.grad_sync(model, last=i == accum - 1), precision.autocast():
            loss = loss_fn(x, y)
        total += loss.detach().float()
        scaler.scale(loss / accum).backward()  # the mean over micro-batches: one big batch
    scaler.unscale_(optimizer)  # clip the true gradients, not the fp16-scaled ones
    norm = par.clip_grad_norm(model, grad_clip if grad_clip > 0 else math.inf)
    if scaler.is_enabled():
        scaler.step(optimizer)  # skips the step itself if gradients overflowed
        scaler.update()
    elif math.isfinite(norm):  # a non-finite loss makes the norm non-finite too
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(total) / accum, norm


def train(
    model_config: ModelConfig | None,
    train_config: TrainConfig,
    data: PreparedData,
    *,
    model: DecoderLM | None = None,
    resume: bool = False,
    log: Callable[[str], None] | None = None,
    compile_backend: str | Callable[..., Any] = "inductor",
) -> TrainResult:
    """Train a fresh model of ``model_config`` (or ``model``, in place) on ``data``.

    Example::

        result = train(ModelConfig.preset("mini"), TrainConfig(max_time=300), data)
        result = train(None, TrainConfig(out_dir="runs/more", max_steps=100), data, model=model)

    Args:
        model_config: the shape of a fresh model (``vocab_size`` follows the tokenizer);
            ``None`` with ``model``.
        train_config: everything else; ``out_dir`` is the run directory.
        data: a prepared corpus (:func:`quillgpt.data.prepare_data`).
        model: a :class:`~quillgpt.DecoderLM` with fp32 parameters to train in place (moved to
            the device, left holding the final weights). Under torchrun every process must pass
            the same weights.
        resume: continue the run in ``out_dir`` from its ``train_state.pt`` (its model config
            and tokenizer must match; with ``model``, the checkpoint's weights are loaded into it).
        log: where progress lines go (rank 0 only); default stderr.
        compile_backend: the ``torch.compile`` backend when compiling (default inductor).

    Raises:
        NonFiniteError: after ``max_nonfinite`` non-finite steps in a row (the last good
            checkpoint is kept).
        QuillError: (or a subclass) for anything the user can fix: no budget, an existing run
            without ``resume``, a mismatching checkpoint, an unavailable device, a ``model`` that
            cannot be trained as configured.
    """
    cfg = train_config
    require_budget(cfg)
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it
        torch.use_deterministic_algorithms(True)
    par = Parallel.start(resolve_device(cfg.device), cfg.parallel)
    model_config = checked_model_config(model_config, model, data)
    precision = Precision.for_device(par.device, cfg.precision)
    run = RunDir(cfg, model_config, data, par, precision)
    saved = run.open(resume=resume)
    for seed in (random.seed, np.random.seed, torch.manual_seed):
        seed(cfg.seed)  # the same initial weights on every rank
    model = (model or DecoderLM(model_config)).to(par.device).train()
    model.gradient_checkpointing = cfg.gradient_checkpointing
    wrapped = par.wrap(model)  # DDP returns a wrapper; FSDP shards the model in place
    optimizer = build_optimizer(model, cfg)
    state = LoopState() if saved is None else LoopState(**run.restore(saved, model, optimizer))
    report = Reporter(run.path, cfg, active=par.is_main, log=log)
    threads = thread_policy(cfg.threads, par.device, par.world_size, log=report.log)
    eager_loss = loss_of(wrapped)  # through DDP's wrapper, which syncs the gradients
    loss_fn = compiled(eager_loss, cfg.compile, par.device, compile_backend, threads.adapt)
    compiling = loss_fn is not eager_loss
    run.write_config(state)
    report.drop_after(state.step if saved is not None else -1)
    if saved is not None:
        report.log(f"resumed {run.path} at step {state.step} ({state.tokens:,} tokens)")
    elif resume:
        report.log(f"nothing to resume in {run.path} (no train_state.pt): from step 0")
    step = functools.partial(
        train_step,
        model=model,
        optimizer=optimizer,
        precision=precision,
        par=par,
        grad_clip=cfg.grad_clip,
    )
    loader = make_train_loader(
        data,
        model_config.block_size,
        cfg.batch_size,
        seed=cfg.seed,
        start_step=state.micro_step,
        rank=par.rank,
        world_size=par.world_size,
    )
    batches = iter(loader)
    tokens_per_step = cfg.batch_size * cfg.grad_accum * par.world_size * model_config.block_size
    where = f"{par.device.type} x {par.world_size}"
    report.run_line(model, cfg, tokens_per_step, where, precision.name, compiling)
    started = time.perf_counter() - state.elapsed  # a resumed run's clock goes on
    report.restart_meter(state.tokens)
    last_eval: EvalResult | None = None

    stopped = budget_spent(state.step, state.elapsed, cfg)  # a resumed run may be done
    with GracefulStop() as stop:
        while not stopped:
            factor = lr_factor(cfg, state.step, budget_progress(state.step, state.elapsed, cfg))
            set_rates(optimizer, cfg, factor, muon_momentum_at(cfg, state.step))
            lr = cfg.lr * factor  # AdamW's rate (lr_at), the one logged
            micro = [next(batches) for _ in range(cfg.grad_accum)]
            if compiling:  # the first step compiles; only a compiler failure falls back
                loss_fn, (loss, norm) = first_compiled_step(
                    step, loss_fn, eager_loss, micro, optimizer
                )
                compiling = False
            else:
                began = time.perf_counter()
                loss, norm = step(loss_fn, micro_batches=micro)
                threads.step_done(time.perf_counter() - began)  # fewer threads if cores are busy
            state.step += 1
            state.micro_step += cfg.grad_accum
            state.tokens += tokens_per_step
            state.elapsed, signalled = par.agree(time.perf_counter() - started, stop.requested)
            finite = math.isfinite(norm)
            state.nonfinite_streak = 0 if finite else state.nonfinite_streak + 1
            state.nonfinite_total += 0 if finite else 1
            report.advance(state.step if cfg.max_steps else state.elapsed)
            if state.step % cfg.log_interval == 0:
                report.train_line(state, par.mean(loss), norm, lr, par.device)
            if state.nonfinite_streak >= cfg.max_nonfinite:
                report.close()
                raise NonFiniteError(
                    f"stopped at step {state.step}: {state.nonfinite_streak} optimiser steps in a "
                    f"row had a non-finite loss or gradient (they were skipped). The last good "
                    f"checkpoint in {run.path} is kept; lower --lr, raise --warmup_steps, set "
                    "--grad_clip, or use --precision fp32, then --resume"
                )
            stopped = budget_spent(state.step, state.elapsed, cfg)
            if signalled:  # on any rank: the others see no signal name
                stopped = stop.name or "SIGTERM"
            if stopped:
                break
            if state.step % cfg.eval_interval == 0:
                last_eval = validate(model, run, report, state, lr)
            # While steps are being skipped, keep the last good checkpoint instead.
            if cfg.ckpt_interval and state.step % cfg.ckpt_interval == 0 and finite:
                run.save(model, optimizer, state, final=False, log=report.log)
                report.restart_meter(state.tokens)

    result = TrainResult(run.path, state, stopped, last_eval)
    if result.interrupted:
        run.save(model, optimizer, state, final=False, log=report.log)
        report.log(
            f"{stopped}: saved a checkpoint at step {state.step} in {run.path}; "
            "continue with --resume"
        )
    else:
        result.last_eval = validate(model, run, report, state, optimizer.param_groups[0]["lr"])
        run.save(model, optimizer, state, final=True, log=report.log)
        if cfg.final_eval:
            result.final_eval = validate(model, run, report, state, None, full=True)
    report.close()
    par.barrier()
    return result
