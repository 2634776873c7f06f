"""Many processes through torchrun (gloo on CPU): DDP and FSDP2 match one process.

Two ranks accumulating 2 micro-batches of B each see exactly the windows that one process with
``4B`` sees (the sampler deals one stream of windows across ranks and micro-batches), and DDP
averages their gradients, so after a few steps the weights equal the one-process run's up to fp32
rounding. FSDP2 shards parameters, gradients and optimiser state, and must land in the same
place. Both hold with AdamW and with Muon (whose updates FSDP must orthogonalise whole).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from quillgpt.training import train
from quillgpt.training.metrics import read_metrics
from quillgpt.training.run_dir import load_train_state
from train_utils import cli_args, model_config, train_config

# Muon's Newton-Schulz in fp32: in bf16 it turns fp32 rounding differences into bf16-sized ones
SETTINGS = dict(max_steps=6, ckpt_interval=3, eval_interval=3, log_interval=1, muon_dtype="fp32")


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """One process, global batch 8: ``reference(optimizer)`` gives its weights and metrics."""
    runs: dict[str, tuple[dict[str, torch.Tensor], list[dict]]] = {}

    def run(optimizer: str) -> tuple[dict[str, torch.Tensor], list[dict]]:
        if optimizer not in runs:
            threads = torch.get_num_threads()
            out = tmp_path_factory.mktemp(f"ref-{optimizer}")
            cfg = train_config(out, batch_size=8, optimizer=optimizer, **SETTINGS)
            train(model_config(), cfg, data)
            torch.set_num_threads(threads)
            runs[optimizer] = (
                load_file(str(out / "model.safetensors")),
                read_metrics(out / "metrics.jsonl"),
            )
        return runs[optimizer]

    return run


def torchrun(
    args: list[str], log, target: tuple[str, ...] = ("-m", "quillgpt.cli", "train")
) -> int:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
               "2", *target, *args]  # fmt: skip
    with open(log, "wb") as handle:
        return subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env,
                              timeout=240).returncode  # fmt: skip


@pytest.mark.parametrize(
    ("parallel", "optimizer"),
    [("ddp", "adamw"), ("fsdp", "adamw"), ("ddp", "muon"), ("fsdp", "muon")],
)
def test_two_processes_equal_one_with_the_same_global_batch(
    data, reference, tmp_path, parallel, optimizer
):
    # With Muon under FSDP, each matrix's update is orthogonalised whole, not shard by shard.
    expected, expected_metrics = reference(optimizer)
    run = tmp_path / "run"
    # 2 ranks x 2 micro-batches of 2 = 8 sequences a step: accumulation skips the gradient
    # all-reduce on the first micro-batch (DDP no_sync / FSDP set_requires_gradient_sync)
    args = cli_args(data, run, batch_size=2, grad_accum=2, parallel=parallel,
                    optimizer=optimizer, **SETTINGS)  # fmt: skip
    code = torchrun(args, tmp_path / "log.txt")
    output = (tmp_path / "log.txt").read_text()
    assert code == 0, output[-4000:]
    got = load_file(str(run / "model.safetensors"))
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-5, msg=name)
    # rank 0 alone wrote: one metrics line per step, and the losses match the single process
    metrics = read_metrics(run / "metrics.jsonl")
    losses = [r["loss"] for r in metrics if r["kind"] == "train"]
    reference_losses = [r["loss"] for r in expected_metrics if r["kind"] == "train"]
    assert losses == pytest.approx(reference_losses, rel=1e-4)
    val = [r["val_loss"] for r in metrics if r["kind"] == "eval"]
    reference_val = [r["val_loss"] for r in expected_metrics if r["kind"] == "eval"]
    assert val == pytest.approx(reference_val, rel=1e-4)
    state = load_train_state(run)
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    assert state["loop"]["step"] == SETTINGS["max_steps"]


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads thread names from /proc")
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_shutdown_leaves_no_collective_threads_behind(data, tmp_path, parallel):
    # A gloo thread alive at interpreter exit can abort a finished run (SIGABRT): shutdown()
    # must free the process group so that its threads are joined first.
    child = Path(__file__).resolve().parent / "parallel_child.py"
    corpus = str(Path(data.meta["corpus"]["source"]))
    data_dir = str(Path(data.directory).parents[1])
    args = ["threads", parallel, corpus, data_dir, str(tmp_path / "run")]
    code = torchrun(args, tmp_path / "log.txt", target=(str(child),))
    output = (tmp_path / "log.txt").read_text()
    assert code == 0, output[-4000:]
    assert output.count("gloo threads after []") == 2, output[-4000:]


def test_a_stopped_muon_run_resumes_exactly_under_fsdp(data, tmp_path):
    # The two optimisers' states go through torch.distributed.checkpoint together (sharded);
    # without FSDP they are the one-process state dicts, checked by test_train_optim.py.
    child = Path(__file__).resolve().parent / "parallel_child.py"
    corpus = str(Path(data.meta["corpus"]["source"]))
    data_dir = str(Path(data.directory).parents[1])
    args = ["resume", "fsdp", corpus, data_dir, str(tmp_path)]
    code = torchrun(args, tmp_path / "log.txt", target=(str(child),))
    output = (tmp_path / "log.txt").read_text()
    assert code == 0, output[-4000:]
    assert output.count("resumed run equals reference") == 2, output[-4000:]
