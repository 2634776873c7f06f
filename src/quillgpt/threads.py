"""CPU threads that follow the machine's load: the thread count is chosen from measured steps.

PyTorch runs one thread per core, and every parallel operation waits for its slowest thread.
When another process keeps a core busy, the thread on that core runs only in time slices and
every operation waits for it: on 2 cores with one of them busy, a training step of the demo
takes several times longer with 2 threads than with 1 (docs/devices.md, "A busy machine").
Fewer threads than cores is then faster; once the other process ends, all of them are faster
again. Nothing tells a process which cores are busy, so :class:`AdaptiveThreads` measures: now
and then it runs a few steps at a neighbouring thread count and keeps whichever was faster, and
it looks at once when the steps suddenly get much slower.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import deque
from collections.abc import Callable

import torch

from quillgpt.errors import QuillError

STARTUP_THREADS = torch.get_num_threads()
"""PyTorch's own choice when quillgpt was imported: one per core, or ``OMP_NUM_THREADS``. The
default maximum, so that an earlier ``--threads 1`` run in the same process does not lower it."""


class AdaptiveThreads:
    """Chooses PyTorch's CPU thread count from the durations of the steps it is told about.

    Call :meth:`step_done` after every step of repeated, similar work (training steps) with its
    duration; the count changes between steps only. A *probe* runs ``probe_steps`` steps at one
    thread fewer or one more (alternately, within ``1..max_threads``) and keeps that count if
    their median is at least ``margin`` faster than the median of the ``window`` steps before.
    Probes come once the first window is measured, then after ``probe_interval`` seconds,
    doubling after each probe that changes nothing up to ``max_interval``, and at once when the
    steps get ``jump`` times slower than after the last probe (another job started: too many
    threads collapse by far more than that). A job that ends is found by the next probe; it
    does not make one thread per free core faster, so there is nothing to see before. On a quiet
    machine the cost is the probes' slower steps, rarer and rarer; the figures are in
    docs/devices.md (``benchmarks/bench_threads.py``).

    Args:
        max_threads: the most threads to use (default :data:`STARTUP_THREADS`).
        probe_interval: seconds of steps before the second probe, and after any change.
        max_interval: the longest wait between two probes.
        probe_steps: steps measured at the probed count (their median decides).
        window: recent steps at the current count that a probe is compared with.
        jump: a slow-down of the recent median that starts a probe at once.
        margin: how much faster a probed count must be to be kept.
        clock: seconds, for the interval (a parameter so that tests can drive it).
        set_threads: applies a count (``torch.set_num_threads``).
        adapt: ``False`` keeps ``max_threads`` throughout (:meth:`step_done` does nothing).
        log: called with a line when the count changes (not for probes).
    """

    def __init__(
        self,
        max_threads: int | None = None,
        *,
        probe_interval: float = 30.0,
        max_interval: float = 120.0,
        probe_steps: int = 3,
        window: int = 4,
        jump: float = 1.5,
        margin: float = 0.05,
        clock: Callable[[], float] = time.perf_counter,
        set_threads: Callable[[int], None] = torch.set_num_threads,
        adapt: bool = True,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.max_threads = max_threads or STARTUP_THREADS
        self.adapt = adapt and self.max_threads > 1  # one thread: nothing to choose
        self.first_interval, self.max_interval = probe_interval, max_interval
        self.probe_steps, self.jump, self.margin = probe_steps, jump, margin
        self.clock, self._apply, self.log = clock, set_threads, log
        self.threads = self.max_threads
        self.recent: deque[float] = deque(maxlen=window)  # the last steps at ``threads``
        self.reference: float | None = None  # their median after the last probe
        self.probing: int | None = None  # the count being probed
        self.probe_times: list[float] = []
        self.next_probe = -math.inf  # clock time; the first probe follows the first window
        self.interval = probe_interval
        self.direction = -1  # the next probe's side (-1: one thread fewer, +1: one more)
        self._apply(self.threads)

    def step_done(self, seconds: float) -> None:
        """Record one step's duration; maybe start or finish a probe (sets the thread count)."""
        if not self.adapt:
            return
        if self.probing is not None:
            self.probe_times.append(seconds)
            if len(self.probe_times) == self.probe_steps:
                self._decide()
            return
        self.recent.append(seconds)
        if len(self.recent) < self.recent.maxlen:  # type: ignore[operator]
            return
        slowed = self.reference is not None
        slowed = slowed and statistics.median(self.recent) > self.jump * self.reference
        if slowed:
            self.interval = self.first_interval
        if slowed or self.clock() >= self.next_probe:
            self._start_probe()

    def _start_probe(self) -> None:
        """Switch to a neighbouring count for the next ``probe_steps`` steps."""
        if not 1 <= self.threads + self.direction <= self.max_threads:
            self.direction = -self.direction  # at an end of the range: the other side
        self.probing, self.probe_times = self.threads + self.direction, []
        self._apply(self.probing)

    def _decide(self) -> None:
        """Keep the probed count if it was faster by ``margin``, else go back to the old one."""
        assert self.probing is not None
        probed, before = statistics.median(self.probe_times), statistics.median(self.recent)
        if probed < (1 - self.margin) * before:
            if self.log is not None:
                self.log(
                    f"threads {self.threads} -> {self.probing}: {probed:.3g} s a step instead of "
                    f"{before:.3g} (the machine's load changed; --threads N fixes the count)"
                )
            self.threads = self.probing  # the next probe goes on in the same direction
            self.recent.clear()
            self.recent.extend(self.probe_times)
            self.interval = self.first_interval
        else:
            self.direction = -self.direction  # the next probe tries the other side
            self.interval = min(2 * self.interval, self.max_interval)
        self.reference = statistics.median(self.recent)
        self.probing = None
        self.next_probe = self.clock() + self.interval
        self._apply(self.threads)


def set_threads(threads: int | None) -> None:
    """Use ``threads`` CPU threads in PyTorch; ``None`` keeps its default (one per core).

    For the verbs that do not adapt (``generate``, ``eval``, ``profile``): fewer threads than
    cores pays off when other processes keep cores busy (see the module docstring).

    Raises:
        QuillError: for ``threads < 1``.
    """
    if threads is None:
        return
    if threads < 1:
        raise QuillError(f"--threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)


def thread_policy(
    threads: int | None,
    device: torch.device,
    processes: int = 1,
    log: Callable[[str], None] | None = None,
) -> AdaptiveThreads:
    """``threads`` if given (fixed), else one per core adapted to the load, where that can work.

    Adapting needs a CPU run in one process: on a GPU the CPU threads only launch kernels, and
    under ``torchrun`` each process's step time includes waiting for the others, which says
    nothing about its own threads (torchrun sets one thread per process anyway).

    Raises:
        QuillError: for ``threads < 1``.
    """
    if threads is not None:
        set_threads(threads)  # checks it
        return AdaptiveThreads(threads, adapt=False)
    return AdaptiveThreads(adapt=device.type == "cpu" and processes == 1, log=log)
