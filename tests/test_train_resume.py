"""Never lose work: SIGKILL at any moment then --resume equals an uninterrupted run; SIGTERM saves.

These run ``quill train`` in subprocesses, as a user (or a cluster scheduler) would.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from quillgpt.training import train
from quillgpt.training.run_dir import TRAIN_STATE_FILE, load_train_state
from train_utils import cli_args, model_config, train_config

STEPS = 240
SETTINGS = dict(max_steps=STEPS, ckpt_interval=5, eval_interval=60, log_interval=10)


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def start(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "ab") as handle:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "quillgpt.cli", "train", *args],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=env,
        )


def saved_step(run: Path) -> int:
    try:
        return int(load_train_state(run)["loop"]["step"])
    except Exception:
        return -1


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_sigkill_at_any_moment_then_resume_is_bitwise_identical(data, tmp_path, optimizer):
    # With dropout on, so the resumed runs must also continue the random masks exactly; with
    # Muon, its momentum buffers and momentum warm-up too.
    model = model_config(dropout=0.1)
    settings = {**SETTINGS, "optimizer": optimizer, "muon_momentum_warmup": 100}
    train(model, train_config(tmp_path / "ref", **settings), data)
    expected = load_file(str(tmp_path / "ref" / "model.safetensors"))

    run = tmp_path / "run"
    args = [*cli_args(data, run, **settings), "--dropout", str(model.dropout)]
    log = tmp_path / "log.txt"
    rng = random.Random(1234)
    kills = []
    for attempt in range(3):
        proc = start(args + (["--resume"] if attempt else []), log)
        before = saved_step(run)
        deadline = time.monotonic() + 60
        if attempt == 0:
            time.sleep(rng.uniform(0.5, 2.0))  # maybe before the first checkpoint
        else:  # after at least one new checkpoint, at a random moment
            while saved_step(run) <= before and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.3))
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills.append(saved_step(run))
    assert kills, "the run finished before it could be killed; make it longer"
    final = start(args + ["--resume"], log)
    assert final.wait(timeout=120) == 0, log.read_text()[-3000:]
    assert saved_step(run) == STEPS
    got = load_file(str(run / "model.safetensors"))
    assert got.keys() == expected.keys()
    for name in expected:
        assert torch.equal(got[name], expected[name]), f"{name} differs after kills at {kills}"
    assert not list(run.glob(".*.tmp")), "a temporary file was left behind"


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(data, tmp_path):
    run = tmp_path / "run"
    log = tmp_path / "log.txt"
    proc = start(cli_args(data, run, max_steps=100_000, ckpt_interval=0, eval_interval=10_000), log)
    deadline = time.monotonic() + 60
    while not (run / "metrics.jsonl").is_file() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not (run / TRAIN_STATE_FILE).exists()  # no periodic checkpoints in this run
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    output = log.read_text()
    assert "SIGTERM: saved a checkpoint at step" in output and "--resume" in output
    assert "Traceback" not in output
    step = saved_step(run)
    assert step > 0
    assert load_file(str(run / "model.safetensors"))


def test_a_second_quill_train_in_a_live_run_directory_is_refused(data, tmp_path):
    run, log = tmp_path / "run", tmp_path / "log.txt"
    args = cli_args(data, run, max_steps=100_000, ckpt_interval=0, eval_interval=10_000)
    first = start(args, log)
    try:
        deadline = time.monotonic() + 60
        while not (run / "metrics.jsonl").is_file() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, log.read_text()[-3000:]
        metrics = (run / "metrics.jsonl").read_text()
        for extra in ([], ["--resume"]):  # a fresh start and a resume alike
            second = subprocess.run(
                [sys.executable, "-m", "quillgpt.cli", "train", *args, *extra],
                capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert second.returncode == 2, second.stderr[-2000:]
            assert "is in use" in second.stderr and f"process {first.pid}" in second.stderr
            assert len(second.stderr.strip().splitlines()) == 1
        assert (run / "metrics.jsonl").read_text().startswith(metrics)  # not restarted
        assert not (run / TRAIN_STATE_FILE).exists()
    finally:
        first.kill()
        first.wait()
