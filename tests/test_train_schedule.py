"""Learning-rate schedule through torch.optim.lr_scheduler, and fitting it to a time budget."""

from __future__ import annotations

import math

import pytest
import torch

from quillgpt.training import schedule as schedule_module
from quillgpt.training.schedule import TimeBudget, WarmupDecay, build_scheduler, schedule_of


def test_warmup_then_cosine_to_the_floor_at_the_last_step():
    f = WarmupDecay(warmup_steps=10, max_steps=110, min_ratio=0.1, shape="cosine")
    assert f(0) == pytest.approx(0.1)
    assert f(4) == pytest.approx(0.5)
    assert f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)
    midpoint = 10 + (110 - 1 - 10) / 2
    assert f(midpoint) == pytest.approx(0.55)  # halfway down the cosine: (1 + 0.1) / 2
    assert f(109) == pytest.approx(0.1)  # the last step runs at the floor
    assert f(500) == pytest.approx(0.1)


def test_linear_and_constant_shapes():
    lin = WarmupDecay(0, 101, 0.0, "linear")
    assert [lin(s) for s in (0, 25, 50, 100)] == pytest.approx([1.0, 0.75, 0.5, 0.0])
    const = WarmupDecay(5, 100, 0.1, "constant")
    assert [const(s) for s in (0, 4, 50, 99)] == pytest.approx([0.2, 1.0, 1.0, 1.0])


def test_unknown_max_steps_holds_the_peak():
    f = WarmupDecay(3, None, 0.1)
    assert [f(s) for s in (0, 2, 3, 1000)] == pytest.approx([1 / 3, 1.0, 1.0, 1.0])


def test_lambda_lr_drives_the_optimizer_and_saves_max_steps():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([param], lr=1e-3)
    sched = build_scheduler(opt, warmup_steps=2, max_steps=None, min_ratio=0.1, shape="cosine")
    lrs = []
    for step in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        if step == 4:
            schedule_of(sched).max_steps = 12  # fitted to a budget mid-run
        sched.step()
    assert lrs[:2] == pytest.approx([5e-4, 1e-3])
    assert lrs[4] == pytest.approx(1e-3)
    assert lrs[11] == pytest.approx(1e-4)
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:], strict=False))

    state = sched.state_dict()
    assert state["lr_lambdas"][0]["max_steps"] == 12
    fresh_opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    fresh = build_scheduler(
        fresh_opt, warmup_steps=2, max_steps=None, min_ratio=0.1, shape="cosine"
    )
    fresh.load_state_dict(state)
    assert schedule_of(fresh).max_steps == 12 and fresh.last_epoch == 12


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_time_budget_fits_max_steps_to_the_measured_pace(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(schedule_module.time, "perf_counter", clock)
    budget = TimeBudget(
        100.0, skip_steps=2, min_calibration_steps=5, min_calibration_seconds=1, recheck_steps=10
    )
    estimates = []
    for step in range(40):
        clock.now += 5.0 if step == 0 else 0.5  # a slow first step (compilation), then 0.5 s
        estimates.append(budget.observe(step))
    first = next(e for e in estimates if e is not None)
    at = estimates.index(first)
    assert at == 6  # marked after step 1, then 5 measured steps
    # 5 s + 6 * 0.5 s spent at step 6; 92 s left at 0.5 s per step
    assert first == 7 + math.floor(92.0 / 0.5)
    rechecks = [i for i, e in enumerate(estimates) if e is not None]
    assert rechecks == [6, 16, 26, 36]
    assert all(estimates[i] == pytest.approx(first, abs=1) for i in rechecks)  # steady pace
    assert not budget.expired()
    clock.now += 100
    assert budget.expired()


def test_time_budget_corrects_when_the_pace_changes(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(schedule_module.time, "perf_counter", clock)
    budget = TimeBudget(
        60.0, skip_steps=1, min_calibration_steps=4, min_calibration_seconds=0, recheck_steps=5
    )
    estimates = []
    for step in range(30):
        clock.now += 0.5 if step < 10 else 1.0  # then twice as slow (a busy machine)
        estimates.append(budget.observe(step))
    made = [e for e in estimates if e is not None]
    assert made[-1] < made[0]
    assert made == sorted(made, reverse=True)


def test_time_budget_respects_an_explicit_step_cap_and_resumed_time(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(schedule_module.time, "perf_counter", clock)
    budget = TimeBudget(
        100.0, elapsed=40.0, skip_steps=1, min_calibration_steps=2, min_calibration_seconds=0,
        step_cap=50,
    )  # fmt: skip
    assert budget.elapsed() == pytest.approx(40.0)
    results = []
    for step in range(5):
        clock.now += 0.01
        results.append(budget.observe(step))
    assert 50 in results
    assert TimeBudget(None).observe(3) is None
