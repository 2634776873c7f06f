"""The schedules: pure functions of the step and of the budget spent.

Before every optimiser step the loop asks :func:`lr_factor` for the fraction of the peak rate
to use and :func:`~quillgpt.training.optim.set_rates` multiplies each optimiser's own peak by it
(``lr`` for AdamW, ``muon_lr`` for Muon: both follow the same shape). There is no scheduler
object and nothing to save: the rates of a step follow from the step number and the fraction of
the budget spent (:func:`budget_progress`), so a resumed run gets the same rates as an
uninterrupted one.

* **Warm-up**: step ``s`` (0-based) of the first ``warmup_steps`` runs at
  ``(s + 1) / warmup_steps`` of the peak.
* **Decay**: ``min_ratio + (1 - min_ratio) * f(p)`` where ``p`` is the fraction of the budget
  spent and ``f`` falls from 1 at ``p = 0`` to 0 at ``p = 1``: half a cosine, a line, ``f = 1``
  for ``constant``, or for ``wsd`` (warm-up, stable, decay) 1 until ``p = 1 - cooldown`` and then
  a line to 0: the peak rate for most of the run, a short decay to the floor at the end.
* The factor is the smaller of the two, so it ramps up, meets the decay curve and follows it.

The budget is steps, time, or both (whichever ends first). With ``max_steps`` the fraction is
``step / (max_steps - 1)``: the last step runs at the floor, and the curve is bit-for-bit the same
on every run. With ``max_time`` it is the measured training time over the budget (rank 0's clock,
shared with every rank), so the floor is reached when the time is up whatever the machine's pace
(and a ``wsd`` cooldown starts when ``1 - cooldown`` of the time is spent).

Muon's momentum warms up too (:func:`muon_momentum_at`): a line from 0.85 to ``muon_momentum``
over ``muon_momentum_warmup`` steps, as in the modded-nanogpt speedrun: a low momentum at first
follows the fast-changing early gradients more closely.
"""

from __future__ import annotations

import math

from quillgpt.training.config import TrainConfig

MUON_MOMENTUM_START = 0.85  # modded-nanogpt's and nanochat's


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


def lr_factor(cfg: TrainConfig, step: int, progress: float) -> float:
    """Fraction of the peak rate for optimiser step ``step`` (0-based), ``progress`` spent."""
    warmup = (step + 1) / cfg.warmup_steps if step < cfg.warmup_steps else 1.0
    if cfg.schedule == "cosine":
        remaining = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif cfg.schedule == "linear":
        remaining = 1.0 - progress
    elif cfg.schedule == "wsd":
        remaining = min(1.0, (1.0 - progress) / cfg.cooldown)
    else:
        remaining = 1.0
    decay = cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * remaining
    return min(warmup, decay)


def lr_at(cfg: TrainConfig, step: int, progress: float) -> float:
    """AdamW's learning rate (``lr`` times :func:`lr_factor`): the rate the loop logs."""
    return cfg.lr * lr_factor(cfg, step, progress)


def muon_momentum_at(cfg: TrainConfig, step: int) -> float:
    """Muon's momentum for optimiser step ``step`` (0-based): 0.85 rising to ``muon_momentum``."""
    if step >= cfg.muon_momentum_warmup:
        return cfg.muon_momentum
    ramp = step / cfg.muon_momentum_warmup
    return MUON_MOMENTUM_START + ramp * (cfg.muon_momentum - MUON_MOMENTUM_START)


def budget_spent(step: int, elapsed: float, cfg: TrainConfig) -> str:
    """Why the run must stop now: ``max_steps``, ``max_time``, or ``""`` to go on."""
    if cfg.max_steps is not None and step >= cfg.max_steps:
        return "max_steps"
    if cfg.max_time is not None and elapsed >= cfg.max_time:
        return "max_time"
    return ""
