"""Learning-rate schedules (through ``torch.optim.lr_scheduler``) and fitting one to a time budget.

The schedule is a :class:`WarmupDecay` callable given to ``LambdaLR``: linear warm-up to the peak
learning rate, then cosine (or linear) decay that lands on the floor ``min_lr_ratio * lr`` at the
*last* step, ``max_steps - 1``. Because it is a callable object rather than a function,
``LambdaLR.state_dict()`` saves its attributes (``max_steps`` included) and ``load_state_dict``
restores them, so a resumed run continues on exactly the same curve.

With a time budget (``--max_time``) the number of steps is not known in advance.
:class:`TimeBudget` measures the pace (seconds per step, everything included) and sets
``max_steps`` so that the floor is reached when the budget runs out:

1. until calibrated, ``max_steps`` is ``None`` and the schedule holds the peak after warm-up;
2. after a few steps past compilation it measures the pace and sets ``max_steps``;
3. every few steps it corrects ``max_steps`` from the average pace since the first measurement,
   which includes evaluations, checkpoints and any slowdown of a shared machine (a correction
   moves the cosine by a fraction of a percent, not a visible jump).

The decision is made on rank 0 and shared with all ranks, and stored with the scheduler, so a
resume continues with the saved ``max_steps``.
"""

from __future__ import annotations

import math
import time

import torch
from torch.optim.lr_scheduler import LambdaLR


class WarmupDecay:
    """Multiplier of the peak learning rate at each step (the ``lr_lambda`` of ``LambdaLR``).

    Args:
        warmup_steps: steps ``0 .. warmup_steps - 1`` ramp linearly from ``1/warmup_steps`` to 1.
        max_steps: total number of steps; the last one, ``max_steps - 1``, runs at the floor.
            ``None`` until known (time budgets): the multiplier then stays at 1 after warm-up.
        min_ratio: the floor, as a fraction of the peak.
        shape: ``"cosine"``, ``"linear"`` or ``"constant"`` (no decay).
    """

    def __init__(
        self,
        warmup_steps: int,
        max_steps: int | None,
        min_ratio: float = 0.1,
        shape: str = "cosine",
    ) -> None:
        if shape not in ("cosine", "linear", "constant"):
            raise ValueError(f"unknown schedule {shape!r}; use cosine, linear or constant")
        self.warmup_steps = int(warmup_steps)
        self.max_steps = None if max_steps is None else int(max_steps)
        self.min_ratio = float(min_ratio)
        self.shape = shape

    def __call__(self, step: int) -> float:
        """Return the multiplier for (0-based) optimiser step ``step``."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.shape == "constant" or self.max_steps is None:
            return 1.0
        decay_steps = self.max_steps - 1 - self.warmup_steps
        progress = 1.0 if decay_steps <= 0 else min(1.0, (step - self.warmup_steps) / decay_steps)
        if self.shape == "cosine":
            fraction = 0.5 * (1.0 + math.cos(math.pi * progress))
        else:
            fraction = 1.0 - progress
        return self.min_ratio + (1.0 - self.min_ratio) * fraction


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    warmup_steps: int,
    max_steps: int | None,
    min_ratio: float,
    shape: str,
) -> LambdaLR:
    """Return a ``LambdaLR`` driving ``optimizer`` along a :class:`WarmupDecay` curve."""
    return LambdaLR(optimizer, WarmupDecay(warmup_steps, max_steps, min_ratio, shape))


def schedule_of(scheduler: LambdaLR) -> WarmupDecay:
    """Return the :class:`WarmupDecay` inside a scheduler made by :func:`build_scheduler`."""
    return scheduler.lr_lambdas[0]


class TimeBudget:
    """Converts a wall-clock budget into a step count for the schedule (see the module docs).

    Args:
        max_time: the budget in seconds, or ``None`` for no time limit.
        elapsed: training seconds already spent (a resumed run).
        skip_steps: steps ignored before the pace is measured (compilation, allocator warm-up).
        min_calibration_steps: steps measured before the first estimate.
        min_calibration_seconds: seconds measured before the first estimate (capped at 5% of the
            budget, so short budgets still calibrate early).
        recheck_steps: after calibration, re-estimate every this many steps.
        step_cap: an explicit ``max_steps`` that the estimate never exceeds.
    """

    def __init__(
        self,
        max_time: float | None,
        *,
        elapsed: float = 0.0,
        skip_steps: int = 5,
        min_calibration_steps: int = 10,
        min_calibration_seconds: float = 15.0,
        recheck_steps: int = 10,
        step_cap: int | None = None,
    ) -> None:
        self.max_time = max_time
        self.skip_steps = skip_steps
        self.min_calibration_steps = min_calibration_steps
        self.min_calibration_seconds = (
            min(min_calibration_seconds, 0.05 * max_time) if max_time else min_calibration_seconds
        )
        self.recheck_steps = recheck_steps
        self.step_cap = step_cap
        self._offset = elapsed
        self._start = time.perf_counter()
        self._steps_seen = 0
        self._mark: tuple[int, float] | None = None
        self._calibrated_at: int | None = None

    @property
    def calibrated(self) -> bool:
        """Whether the first estimate has been made."""
        return self._calibrated_at is not None

    def elapsed(self) -> float:
        """Training seconds spent so far, including those before a resume."""
        return self._offset + time.perf_counter() - self._start

    def expired(self) -> bool:
        """Whether the budget has run out."""
        return self.max_time is not None and self.elapsed() >= self.max_time

    def observe(self, step: int) -> int | None:
        """Record that optimiser step ``step`` (0-based) finished; maybe return a new max_steps.

        Returns a step count when the first calibration completes and then every
        ``recheck_steps`` steps; ``None`` otherwise, and always without a budget. The pace is the
        average since the mark (after the skipped steps), so evaluations and checkpoints are in
        it, while compilation is not.
        """
        if self.max_time is None:
            return None
        self._steps_seen += 1
        now = time.perf_counter()
        if self._mark is None:
            if self._steps_seen >= self.skip_steps:
                self._mark = (step, now)
            return None
        mark_step, mark_time = self._mark
        measured_steps = step - mark_step
        if self._calibrated_at is None:
            enough = (
                measured_steps >= self.min_calibration_steps
                and now - mark_time >= self.min_calibration_seconds
            )
            if not enough:
                return None
            self._calibrated_at = step
        elif (step - self._calibrated_at) % self.recheck_steps != 0:
            return None
        pace = (now - mark_time) / measured_steps
        remaining = max(0.0, self.max_time - self.elapsed())
        estimate = step + 1 + int(remaining / pace)
        return estimate if self.step_cap is None else min(estimate, self.step_cap)
