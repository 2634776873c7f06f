"""AdaptiveThreads against a simulated machine: step times that depend on threads and load."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from quillgpt.errors import QuillError
from quillgpt.threads import STARTUP_THREADS, AdaptiveThreads, thread_policy
from quillgpt.training import train
from train_utils import model_config, train_config

# Step seconds by thread count on 2 cores, quiet and with one core busy (the ratios measured on
# the demo in docs/devices.md: 2 threads collapse under load, 1 thread hardly notices it).
QUIET = {2: 0.10, 1: 0.175}
ONE_BUSY = {2: 0.37, 1: 0.18}


class Machine:
    """A fake clock and thread setting; ``run`` feeds a governor the step times of ``load``."""

    def __init__(self) -> None:
        self.now = 0.0
        self.threads = 0
        self.history: list[int] = []  # the count each step ran with

    def set_threads(self, n: int) -> None:
        self.threads = n

    def run(self, governor: AdaptiveThreads, steps: int, times: Callable[[int], float]) -> None:
        for _ in range(steps):
            seconds = times(self.threads)
            self.now += seconds
            self.history.append(self.threads)
            governor.step_done(seconds)


def governor_on(machine: Machine, max_threads: int = 2) -> AdaptiveThreads:
    return AdaptiveThreads(
        max_threads, probe_interval=30.0, clock=lambda: machine.now, set_threads=machine.set_threads
    )


def test_a_quiet_machine_keeps_every_core_and_probes_rarely():
    machine = Machine()
    governor = governor_on(machine)
    machine.run(governor, 3000, QUIET.get)  # ~300 s
    assert governor.threads == 2
    slow_steps = machine.history.count(1)
    assert 0 < slow_steps <= 3 * 4  # 3-step probes at 0, 30, 90 and 210 s: the gap doubles
    extra = slow_steps * (QUIET[1] - QUIET[2]) / machine.now
    assert extra < 0.01


def test_a_busy_core_moves_to_one_thread_at_once_and_back_when_it_is_free():
    machine = Machine()
    lines: list[str] = []
    governor = governor_on(machine)
    governor.log = lines.append
    machine.run(governor, 2000, QUIET.get)
    machine.run(governor, 12, ONE_BUSY.get)  # another job starts
    assert governor.threads == 1  # after a window and a probe, not at the next periodic probe
    assert len(lines) == 1 and lines[0].startswith("threads 2 -> 1: 0.18 s a step instead of")
    assert "--threads N fixes the count" in lines[0]
    machine.run(governor, 1000, ONE_BUSY.get)  # 180 s
    assert governor.threads == 1
    assert machine.history[-1000:].count(2) <= 3 * 3  # probes back to 2 at 30, 90 and 210 s
    machine.run(governor, 700, QUIET.get)  # the job ends: found by the next probe (<= 120 s)
    assert governor.threads == 2 and len(lines) == 2


def test_a_machine_busy_from_the_start_is_found_after_the_first_steps():
    machine = Machine()
    governor = governor_on(machine)
    machine.run(governor, 8, ONE_BUSY.get)
    assert governor.threads == 1 and machine.history == [2] * 4 + [1] * 4


def test_a_fixed_count_never_changes():
    machine = Machine()
    governor = AdaptiveThreads(2, adapt=False, clock=lambda: machine.now,
                               set_threads=machine.set_threads)  # fmt: skip
    machine.run(governor, 500, ONE_BUSY.get)
    assert set(machine.history) == {2}


def test_a_larger_machine_finds_the_best_count_step_by_step():
    times = {4: 0.30, 3: 0.11, 2: 0.14, 1: 0.26}.get  # one of 4 cores busy
    machine = Machine()
    governor = governor_on(machine, max_threads=4)
    machine.run(governor, 2000, times)
    assert governor.threads == 3
    assert machine.history[-200:].count(3) > 180


def test_one_core_has_nothing_to_choose():
    machine = Machine()
    governor = governor_on(machine, max_threads=1)
    machine.run(governor, 500, lambda n: 0.1)
    assert set(machine.history) == {1}


def test_the_policy_adapts_only_a_cpu_run_in_one_process_without_a_count():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    torch.set_num_threads(1)  # as an earlier --threads 1 run in the same process leaves it
    policy = thread_policy(None, cpu)
    assert policy.max_threads == STARTUP_THREADS == torch.get_num_threads()
    assert policy.adapt == (STARTUP_THREADS > 1)  # one core: nothing to choose
    assert not thread_policy(None, cpu, processes=2).adapt
    assert not thread_policy(None, cuda).adapt
    fixed = thread_policy(1, cpu)
    assert not fixed.adapt and fixed.threads == 1 and torch.get_num_threads() == 1
    with pytest.raises(QuillError, match="--threads must be >= 1, got 0"):
        thread_policy(0, cpu)


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_training_reports_every_step_to_the_policy_and_adapts_only_without_threads(
    data, tmp_path, monkeypatch
):
    seen: list[tuple[bool, float]] = []
    monkeypatch.setattr(
        AdaptiveThreads, "step_done", lambda self, seconds: seen.append((self.adapt, seconds))
    )
    train(model_config(), train_config(tmp_path / "adaptive", threads=None), data)
    adapting = [adapt for adapt, _ in seen]
    assert len(seen) == 8 and all(s > 0 for _, s in seen)  # every training step, timed
    assert adapting == [STARTUP_THREADS > 1] * 8
    seen.clear()
    train(model_config(), train_config(tmp_path / "fixed", threads=1), data)
    assert [adapt for adapt, _ in seen] == [False] * 8
