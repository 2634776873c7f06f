"""Run under torchrun by test_distributed.py: train, shut down, check.

``threads``: train 2 steps and exit with status 3 if gloo's threads outlive
``Parallel.shutdown()``: such a thread can abort the process at interpreter exit (the flaky
SIGABRT that parallel.shutdown's docstring explains), so their absence is checked
deterministically here rather than by hoping to hit the race.

``resume``: train 6 steps with Muon; stop another run at step 4 (SIGTERM), resume it, and exit
with status 4 unless it ends with exactly the weights of the uninterrupted one.
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
from train_utils import (  # noqa: E402
    fresh_model,
    model_config,
    sigterm_during_step,
    train_config,
)


def thread_names() -> list[str]:
    tasks = Path("/proc/self/task")
    return sorted((tasks / t / "comm").read_text().strip() for t in os.listdir(tasks))


def resume_is_exact(data, par: Parallel, out: Path) -> bool:
    """Whether a Muon run stopped at step 4 and resumed ends where an uninterrupted one does."""
    settings = dict(max_steps=6, parallel=par.mode, optimizer="muon", batch_size=2, grad_accum=2,
                    ckpt_interval=0, eval_interval=100)  # fmt: skip
    reference = fresh_model(data)
    train(None, train_config(out / "ref", **settings), data, model=reference)
    first = fresh_model(data)
    sigterm_during_step(first, 4, grad_accum=2)
    assert train(None, train_config(out / "run", **settings), data, model=first).stopped
    second = fresh_model(data, seed=99)  # the checkpoint replaces its weights
    train(None, train_config(out / "run", **settings), data, model=second, resume=True)
    expected, _ = par.full_state_dicts(reference, None)  # FSDP: gathered on rank 0
    got, _ = par.full_state_dicts(second, None)
    same = all(torch.equal(got[name], expected[name]) for name in expected)
    print(f"rank {par.rank}: resumed run {'equals' if same else 'differs from'} reference")
    return same


def main() -> None:
    check, mode, corpus, data_dir, out = sys.argv[1:6]
    par = Parallel.start(torch.device("cpu"), mode)
    data = prepare_data(corpus, "char", data_dir=data_dir)  # prepared by the test already
    if check == "resume":
        same = resume_is_exact(data, par, Path(out))
        par.shutdown()
        sys.exit(0 if same else 4)
    train(model_config(), train_config(out, max_steps=2, parallel=mode), data)
    before = thread_names()
    par.shutdown()
    left = [name for name in thread_names() if "gloo" in name]
    print(f"rank {par.rank}: threads before shutdown {before}, gloo threads after {left}")
    sys.exit(3 if left or not any("gloo" in name for name in before) else 0)


if __name__ == "__main__":
    main()
