"""The learning-rate schedule: a pure function of the step and of the budget spent.

The loop calls :func:`lr_at` before every optimiser step and writes the result into the
optimiser's parameter groups. There is no scheduler object and nothing to save: the learning
rate of a step follows from the step number and the fraction of the budget spent
(:func:`budget_progress`), so a resumed run gets the same rates as an uninterrupted one.

* **Warm-up**: step ``s`` (0-based) of the first ``warmup_steps`` runs at
  ``lr * (s + 1) / warmup_steps``.
* **Decay**: ``lr * (min_ratio + (1 - min_ratio) * f(p))`` where ``p`` is the fraction of the
  budget spent and ``f`` falls from 1 at ``p = 0`` to 0 at ``p = 1``: half a cosine, a line,
  or ``f = 1`` for ``constant``.
* The rate is the smaller of the two, so it ramps up, meets the decay curve and follows it.

The budget is steps, time, or both (whichever ends first). With ``max_steps`` the fraction is
``step / (max_steps - 1)``: the last step runs at the floor, and the curve is bit-for-bit the same
on every run. With ``max_time`` it is the measured training time over the budget (rank 0's clock,
shared with every rank), so the floor is reached when the time is up whatever the machine's pace.
"""

from __future__ import annotations

import math

from quillgpt.training.config import TrainConfig


def budget_progress(step: int, elapsed: float, cfg: TrainConfig) -> float:
    """Fraction of the budget spent, in ``[0, 1]``, before optimiser step ``step`` (0-based).

    Args:
        step: optimiser steps already taken.
        elapsed: training seconds already spent.
        cfg: gives ``max_steps`` and ``max_time`` (either may be ``None``, not both).
    """
    spent = 0.0
    if cfg.max_steps is not None:
        spent = step / max(cfg.max_steps - 1, 1)
    if cfg.max_time is not None:
        spent = max(spent, elapsed / cfg.max_time)
    return min(spent, 1.0)


def lr_at(cfg: TrainConfig, step: int, progress: float) -> float:
    """Learning rate of optimiser step ``step`` (0-based) with ``progress`` of the budget spent."""
    warmup = (step + 1) / cfg.warmup_steps if step < cfg.warmup_steps else 1.0
    if cfg.schedule == "cosine":
        remaining = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif cfg.schedule == "linear":
        remaining = 1.0 - progress
    else:
        remaining = 1.0
    decay = cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * remaining
    return cfg.lr * min(warmup, decay)


def budget_spent(step: int, elapsed: float, cfg: TrainConfig) -> str:
    """Why the run must stop now: ``max_steps``, ``max_time``, or ``""`` to go on."""
    if cfg.max_steps is not None and step >= cfg.max_steps:
        return "max_steps"
    if cfg.max_time is not None and elapsed >= cfg.max_time:
        return "max_time"
    return ""
