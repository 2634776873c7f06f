"""The prepared GPU script runs end to end on the CPU (--dry-run) and computes MFU correctly."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from quillgpt import DecoderLM, ModelConfig

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def gpu_check(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import gpu_check

    import common

    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: a second thread only adds synchronisation
    yield gpu_check
    torch.set_num_threads(threads)
    sys.modules.pop("gpu_check", None)


def test_dry_run_passes_every_check_and_writes_json(gpu_check, tmp_path, capsys):
    assert gpu_check.main(["--dry-run", "--steps", "2", "--name", "dry"]) == 0
    payload = json.loads((tmp_path / "dry.json").read_text())
    assert payload["dry_run"] is True
    assert [c["ok"] for c in payload["checks"]] == [True] * len(payload["checks"])
    row = payload["rows"][0]
    assert row["tokens_per_s"] > 0 and row["mfu"] is None and row["steps"] == 2
    assert "gradient checkpointing" in capsys.readouterr().out


def test_without_cuda_it_refuses_unless_dry_run(gpu_check, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main([]) == 2


def test_flops_and_peak(gpu_check):
    model = DecoderLM(ModelConfig.preset("gpt2"))
    non_embedding = model.num_parameters(exclude_embeddings=True)
    head = 50257 * 768
    attention = 12 * 12 * 1024 * 768
    assert gpu_check.flops_per_token(model, 1024) == 6 * (non_embedding + head) + attention
    assert gpu_check.flops_per_token(model, 1024, with_head=False) == 6 * non_embedding + attention
    assert gpu_check.peak_tflops(torch.device("cpu"), None) is None
    assert gpu_check.peak_tflops(torch.device("cpu"), 100.0) == 100.0


def test_a_row_per_batch_size_and_vocabulary_padding(gpu_check, tmp_path):
    args = ["--dry-run", "--steps", "1", "--batch-size", "1,2", "--vocab-multiple", "96"]
    assert gpu_check.main([*args, "--name", "rows"]) == 0
    rows = json.loads((tmp_path / "rows.json").read_text())["rows"]
    assert [row["batch_size"] for row in rows] == [1, 2]
    assert [row["vocab_size"] for row in rows] == [288, 288]  # the tiny preset's 256, padded
