"""``quill profile``: phases timed, top operators per phase, memory, a loadable Chrome trace."""

from __future__ import annotations

import copy
import json

import torch

from quillgpt import DecoderLM
from quillgpt.cli import main
from quillgpt.inference.quantize import quantize_int8
from quillgpt.tools.profile import PHASES, profile_model
from quillgpt.tools.profile_report import to_markdown


def test_profile_reports_every_phase(tiny_config, tmp_path):
    model = DecoderLM(tiny_config)
    report = profile_model(
        model,
        device=torch.device("cpu"),
        batch_size=2,
        seq_len=16,
        prompt_len=8,
        decode_tokens=4,
        precision="fp32",
        repeats=1,
        top=5,
        trace_path=tmp_path / "trace.json",
    )
    for key in ("train_tokens_per_s", "prefill_tokens_per_s", "decode_tokens_per_s"):
        assert report.speed[key] > 0
    assert list(report.top_ops) == list(PHASES)
    for ops in report.top_ops.values():
        assert 0 < len(ops) <= 5
        assert all(op["self_ms"] >= 0 and 0 <= op["percent"] <= 100 for op in ops)
    assert any("addmm" in op["name"] or "mm" in op["name"] for op in report.top_ops["decode"])
    params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    assert report.memory["parameter_bytes"] >= 4 * params
    cfg = tiny_config
    assert report.memory["kv_cache_bytes"] == 2 * cfg.n_layer * 2 * cfg.block_size * cfg.n_embd * 4
    assert report.memory["peak_rss_bytes"] > 0
    trace = json.loads((tmp_path / "trace.json").read_text())
    names = {e.get("name") for e in trace["traceEvents"]}
    assert set(PHASES) <= names
    markdown = to_markdown(report)
    assert "| decode |" in markdown and "Top operators by self time, train step" in markdown
    json.dumps(report.to_dict())


def test_int8_inference_model_and_sizes_that_do_not_fit(tiny_config):
    model = DecoderLM(tiny_config)
    int8 = quantize_int8(copy.deepcopy(model))
    report = profile_model(
        model,
        device=torch.device("cpu"),
        inference_model=int8,
        train=False,
        batch_size=1,
        prompt_len=100,
        decode_tokens=100,
        repeats=1,
    )
    assert list(report.top_ops) == ["prefill", "decode"]
    assert report.setup["inference_layers"] == "int8"
    assert report.setup["decode_tokens"] == tiny_config.block_size - 1
    assert report.setup["prompt_len"] == 1
    assert report.setup["model"]["parameters"] == model.num_parameters()
    names = [op["name"] for op in report.top_ops["decode"]]
    assert any("quantized" in name for name in names)


def test_profile_cli_writes_markdown_json_and_trace(tmp_path, capsys):
    out = tmp_path / "prof"
    code = main(
        [
            "profile",
            "--preset",
            "tiny",
            "--batch-size",
            "1",
            "--seq-len",
            "16",
            "--prompt-len",
            "8",
            "--decode-tokens",
            "4",
            "--repeats",
            "1",
            "--device",
            "cpu",
            "--precision",
            "fp32",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    assert "Top operators" in capsys.readouterr().out
    assert {p.name for p in out.iterdir()} == {"profile.md", "profile.json", "trace.json"}
    setup = json.loads((out / "profile.json").read_text())["setup"]
    assert setup["inference_layers"] == "nn.Linear"  # tiny layers are not worth converting
