"""Run under torchrun by test_distributed.py: train 2 steps, shut down, report leftover threads.

Exits with status 3 if gloo's threads outlive ``Parallel.shutdown()``: such a thread can abort
the process at interpreter exit (the flaky SIGABRT that parallel.shutdown's docstring explains),
so their absence is checked deterministically here rather than by hoping to hit the race.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from quillgpt.data import prepare_data  # noqa: E402
from quillgpt.training import train  # noqa: E402
from quillgpt.training.parallel import Parallel  # noqa: E402
from train_utils import model_config, train_config  # noqa: E402


def thread_names() -> list[str]:
    tasks = Path("/proc/self/task")
    return sorted((tasks / t / "comm").read_text().strip() for t in os.listdir(tasks))


def main() -> None:
    mode, corpus, data_dir, out = sys.argv[1:5]
    par = Parallel.start(torch.device("cpu"), mode)
    data = prepare_data(corpus, "char", data_dir=data_dir)  # prepared by the test already
    train(model_config(), train_config(out, max_steps=2, parallel=mode), data)
    before = thread_names()
    par.shutdown()
    left = [name for name in thread_names() if "gloo" in name]
    print(f"rank {par.rank}: threads before shutdown {before}, gloo threads after {left}")
    sys.exit(3 if left or not any("gloo" in name for name in before) else 0)


if __name__ == "__main__":
    main()
