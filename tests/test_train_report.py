"""What a run shows while it trains: TensorBoard events and the progress bar, read back."""

from __future__ import annotations

import io
import re
from collections import defaultdict

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from quillgpt.training import train
from quillgpt.training.metrics import read_metrics
from train_utils import model_config, train_config


def metrics_as_scalars(records: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """``metrics.jsonl`` as TensorBoard tags: ``<kind>/<key>`` -> [(step, value)]."""
    scalars: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for record in records:
        for key, value in record.items():
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            if numeric and key != "step":
                scalars[f"{record['kind']}/{key}"].append((record["step"], float(value)))
    return dict(scalars)


def test_tensorboard_events_hold_the_scalars_of_metrics_jsonl(data, tmp_path):
    cfg = train_config(tmp_path, max_steps=6, log_interval=2, eval_interval=3, tensorboard=True,
                       final_eval=True)  # fmt: skip
    train(model_config(), cfg, data)
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()  # TensorBoard's own reader of the event files
    logged = {
        tag: [(event.step, event.value) for event in events.Scalars(tag)]
        for tag in events.Tags()["scalars"]
    }
    expected = metrics_as_scalars(read_metrics(tmp_path / "metrics.jsonl"))
    assert {"train/loss", "train/lr", "eval/val_loss", "final_eval/val_bpb"} <= expected.keys()
    assert logged.keys() == expected.keys()
    for tag, points in expected.items():
        assert [step for step, _ in logged[tag]] == [step for step, _ in points], tag
        values = [value for _, value in logged[tag]]
        assert values == pytest.approx([v for _, v in points], rel=1e-6), tag  # stored as fp32


class Terminal(io.StringIO):
    """A captured stream that says it is a terminal, as the bar needs one to show."""

    def isatty(self) -> bool:
        return True


def test_progress_bar_counts_the_steps_up_to_the_total(data, tmp_path, monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    train(model_config(), train_config(tmp_path, max_steps=6, progress=True), data)
    frames = re.split(r"[\r\n]", terminal.getvalue())
    counts = [m.group(1, 2) for f in frames if (m := re.search(r"\| (\d+)/(\d+) \[", f))]
    assert counts[0] == ("0", "6") and counts[-1] == ("6", "6")
    assert all(total == "6" for _, total in counts)
    assert any("step/s" in f for f in frames)  # a step budget counts steps, not seconds
    # the log lines went through the bar (tqdm.write), not between its frames
    assert any(f.startswith("step 6: val loss") for f in frames)


def test_no_bar_without_a_terminal(data, tmp_path, monkeypatch):
    captured = io.StringIO()
    monkeypatch.setattr("sys.stderr", captured)
    train(model_config(), train_config(tmp_path, max_steps=4, progress=True), data)
    assert "step 4: loss" in captured.getvalue()  # a log line per log_interval instead
    assert "/4 [" not in captured.getvalue()
