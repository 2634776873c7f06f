"""``quill sweep``: a grid of sizes trained for the same budget, a table, plots, reuse."""

from __future__ import annotations

import json

import pytest

from quillgpt.cli import main
from quillgpt.errors import QuillError
from quillgpt.tools.sweep import DEFAULT_GRID, heads_for, learning_rate, parse_grid, write_report
from train_utils import write_corpus


def test_grid_parsing_heads_and_learning_rates():
    assert parse_grid("2x64, 4X256") == [(2, 64), (4, 256)]
    for bad in ("2x", "x64", "2-64", "0x64", "2x64,"):
        with pytest.raises(QuillError, match="LAYERSxWIDTH"):
            parse_grid(bad)
    assert [heads_for(w) for w in (16, 64, 192, 384, 640, 200)] == [1, 1, 3, 6, 10, 2]
    assert learning_rate(128) == learning_rate(256) == 2e-3
    assert learning_rate(512) == pytest.approx(1e-3)
    assert len(DEFAULT_GRID) >= 6


def test_sweep_trains_each_size_and_reports(tmp_path, capsys):
    corpus = write_corpus(tmp_path / "corpus", docs=4, lines=40)
    args = ["sweep", "--grid", "1x16,1x32", "--budget", "3s", "--out", str(tmp_path / "runs"),
            "--report", str(tmp_path / "report")]  # fmt: skip
    options = [f"data={corpus}", "tokenizer=char", f"data_dir={tmp_path / 'data'}",
               "block_size=16", "batch_size=4", "compile=off", "device=cpu", "precision=fp32",
               "eval_interval=5", "eval_tokens=128", "threads=1"]  # fmt: skip
    for option in options:
        args += ["--train-arg", option]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "| 1x16 |" in captured.out and "| 1x32 |" in captured.out
    report = tmp_path / "report"
    assert {p.name for p in report.iterdir()} == {
        "sweep.md", "sweep.json", "sweep_bpb.png", "sweep_curves.png"
    }  # fmt: skip
    rows = json.loads((report / "sweep.json").read_text())["rows"]
    assert [r["size"] for r in rows] == ["1x16", "1x32"]
    assert rows[0]["parameters"] < rows[1]["parameters"]
    for row in rows:
        assert row["tokens_seen"] > 0 and row["tokens_per_s"] > 0 and row["val_bpb"] > 0
        assert row["peak_memory_mb"] > 0 and row["train_seconds"] > 0  # behaviour, not speed
    # a second sweep reuses the finished runs instead of training again; --fresh retrains
    assert main(args) == 0
    assert "training" not in capsys.readouterr().err
    assert main([*args, "--grid", "1x16", "--fresh"]) == 0
    assert "training 1x16" in capsys.readouterr().err
    (tmp_path / "runs" / "L1xC8").mkdir()
    assert main([*args, "--grid", "1x8"]) == 2
    assert "unfinished run" in capsys.readouterr().err


def test_bad_options_are_clear_errors(capsys):
    assert main(["sweep", "--grid", "2x"]) == 2
    assert "LAYERSxWIDTH" in capsys.readouterr().err
    assert main(["sweep", "--grid", "1x16", "--train-arg", "compile"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err


def test_bench_verb_lists_the_benchmarks(capfd):
    assert main(["bench", "--list"]) == 0
    out = capfd.readouterr().out
    assert "bench_decode.py" in out and "bench_quantize.py" in out


def test_report_plots_leave_the_matplotlib_backend_alone(tmp_path, svg_backend):
    import matplotlib

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    records = [
        {"kind": "train", "tokens": 64, "loss": 3.0, "elapsed": 1.0},
        {"kind": "eval", "tokens": 64, "val_bpb": 4.0, "elapsed": 1.0},
    ]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    row = {"size": "1x16", "parameters": 1000, "lr": 1e-3, "tokens_per_s": 64.0, "steps": 1}
    row |= {"tokens_seen": 64, "val_bpb": 4.0, "val_loss": 2.8, "peak_memory_mb": 1.0}
    row["run_dir"] = str(run_dir)
    paths = write_report([row], tmp_path / "report", "3s")
    assert matplotlib.get_backend() == "svg"
    for path in paths:
        if path.suffix == ".png":
            assert path.read_bytes().startswith(b"\x89PNG")
