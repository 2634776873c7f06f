"""What the loop does at an evaluation: measure, report, keep the best weights, write samples.

During training the model is evaluated on a fixed sample of the validation split
(:func:`quillgpt.evaluation.evaluate_windows`): the same windows every time, so successive
figures compare. A new lowest loss updates ``best/``; generated text goes to ``samples.txt``; the
plot is redrawn. After training, the whole split is evaluated once: the figure to report.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from torch import nn

from quillgpt.evaluation import EvalResult, evaluate_windows
from quillgpt.training.report import Reporter, sample_text
from quillgpt.training.rng import preserved_rng
from quillgpt.training.run_dir import RunDir

if TYPE_CHECKING:
    pass


def validate(
    model: nn.Module,
    run: RunDir,
    report: Reporter,
    state: Any,
    lr: float | None,
    *,
    full: bool = False,
) -> EvalResult:
    """Evaluate ``model`` at ``state`` (the loop's counters); with ``full``, the whole split.

    On the sample it also writes the metrics line, ``best/`` (a new lowest loss), samples and
    the plot. Every rank must call it (the figures are summed over ranks). The global random
    streams are left as they were, so evaluating does not change the training that follows.
    """
    cfg, par, precision = run.cfg, run.par, run.precision
    started = time.perf_counter()
    with preserved_rng():
        result = evaluate_windows(
            model,
            run.data,
            sample_tokens=0 if full else cfg.eval_tokens,
            batch_size=cfg.batch_size,
            autocast=precision.autocast,
            rank=par.rank,
            world_size=par.world_size,
            sharded=par.sharded,
        )
        if full:
            seconds = time.perf_counter() - started
            report.final_line(state, result, seconds)
            report.plot()
            return result
        improved = state.best_val_loss is None or result.loss < state.best_val_loss
        if improved:
            state.best_val_loss = result.loss
        if improved and cfg.save_best:
            run.save_best(model, state, result, log=report.log)
        report.eval_line(state, result, improved, lr)
        if par.can_sample:
            report.samples(samples(model, run, state))
        report.plot()
    report.restart_meter(state.tokens)
    return result


def samples(model: Any, run: RunDir, state: Any) -> str:
    """``num_samples`` continuations of ``sample_prompt`` (fixed seeds) for ``samples.txt``."""
    cfg, tokenizer = run.cfg, run.tokenizer
    ids = tokenizer.encode(cfg.sample_prompt, add_special_tokens=False).ids or [run.data.eot_id]
    with run.precision.autocast():
        return sample_text(
            model,
            tokenizer,
            ids,
            count=cfg.num_samples,
            tokens=cfg.sample_tokens,
            temperature=cfg.sample_temperature,
            seed=cfg.seed,
            header=f"=== step {state.step} ({state.tokens:,} tokens) ===\n",
        )
