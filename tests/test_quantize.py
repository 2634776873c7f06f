"""Dynamic int8 quantization: accuracy, size, both backends, pickle-free save and exact reload."""

from __future__ import annotations

import copy
import importlib.util
import json
import platform

import pytest
import torch
from torch import nn

from quillgpt import DecoderLM, ModelConfig, save_checkpoint
from quillgpt.checkpoint import WEIGHTS_FILE
from quillgpt.cli import main
from quillgpt.errors import CheckpointError, QuillError
from quillgpt.inference.quantize import linear_weight_bytes, quantize_int8
from quillgpt.inference.quantized_checkpoint import (
    is_quantized_checkpoint,
    load_quantized,
    save_quantized,
)
from quillgpt.inference.quantized_linear import (
    int8_per_row,
    int8_state,
    is_quantized_linear,
    select_engine,
)

BACKENDS = [
    "torch.ao",
    pytest.param(
        "torchao",
        marks=pytest.mark.skipif(
            importlib.util.find_spec("torchao") is None, reason="torchao not installed"
        ),
    ),
]


@pytest.fixture
def model() -> DecoderLM:
    cfg = ModelConfig(vocab_size=101, block_size=32, n_layer=2, n_head=4, n_embd=64)
    return DecoderLM(cfg).eval()


def test_int8_per_row_is_symmetric_and_accurate():
    weight = torch.randn(5, 40)
    weight[3] = 0.0
    codes, scale = int8_per_row(weight)
    assert codes.dtype == torch.int8 and scale.shape == (5,)
    assert codes.abs().max() == 127 and codes.min() >= -127
    assert scale[3] == 1.0 and not codes[3].any()
    error = (codes.float() * scale[:, None] - weight).abs()
    assert (error <= scale[:, None] / 2 + 1e-7).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_quantized_model_is_close_smaller_and_generates(model, backend, monkeypatch):
    monkeypatch.setattr("quillgpt.model.decode_layout.MIN_BYTES", 0)  # converts what it may
    idx = torch.randint(0, 101, (2, 12))
    reference = model(idx)[0]
    fp32 = linear_weight_bytes(model)
    quantized = quantize_int8(copy.deepcopy(model), backend=backend)
    assert quantized.quantization["layers"] == list(fp32)
    assert all(is_quantized_linear(quantized.get_submodule(n)) for n in fp32)
    logits = quantized(idx)[0]
    assert (logits - reference).abs().max() < 0.05 * reference.abs().max()
    int8 = linear_weight_bytes(quantized)
    assert sum(int8.values()) <= 0.30 * sum(fp32.values())
    out = quantized.generate(idx, 6)
    assert out.shape == (2, 18) and torch.equal(out, quantized.generate(idx, 6))


def test_head_can_stay_fp32_and_tied(model):
    quantized = quantize_int8(copy.deepcopy(model), include_head=False)
    assert type(quantized.lm_head) is nn.Linear
    assert quantized.lm_head.weight is quantized.tok_emb.weight
    assert "lm_head" not in quantized.quantization["layers"]


@pytest.mark.parametrize("include_head", [True, False])
@pytest.mark.parametrize("backend", BACKENDS)
def test_save_load_exact_no_pickle(model, tmp_path, monkeypatch, backend, include_head):
    quantized = quantize_int8(copy.deepcopy(model), backend=backend, include_head=include_head)
    save_quantized(quantized, tmp_path / "int8", extra_config={"train": {"lr": 1.0}})
    assert sorted(p.name for p in (tmp_path / "int8").iterdir()) == ["config.json", WEIGHTS_FILE]
    document = json.loads((tmp_path / "int8" / "config.json").read_text())
    assert document["train"] == {"lr": 1.0} and document["quantization"]["backend"] == backend

    def no_pickle(*args, **kwargs):
        raise AssertionError("torch.load must not be used")

    monkeypatch.setattr(torch, "load", no_pickle)
    loaded = load_quantized(tmp_path / "int8")
    assert is_quantized_checkpoint(tmp_path / "int8")
    for name in quantized.quantization["layers"]:
        a, b = int8_state(quantized.get_submodule(name)), int8_state(loaded.get_submodule(name))
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]), name
    assert torch.equal(loaded.tok_emb.weight, model.tok_emb.weight)
    idx = torch.randint(0, 101, (1, 9))
    assert torch.equal(loaded(idx)[0], quantized(idx)[0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_other_backend_loads_the_same_int8_weights(model, tmp_path, backend):
    save_quantized(quantize_int8(copy.deepcopy(model)), tmp_path)
    loaded = load_quantized(tmp_path, backend=backend)
    assert loaded.quantization["backend"] == backend
    codes, _ = int8_per_row(model.blocks[0].attn.qkv.weight)
    assert torch.equal(int8_state(loaded.blocks[0].attn.qkv)[0], codes)


def test_loading_errors_are_clear(model, tmp_path):
    save_checkpoint(model, tmp_path / "fp32")
    with pytest.raises(CheckpointError, match="not an int8 checkpoint"):
        load_quantized(tmp_path / "fp32")
    with pytest.raises(QuillError, match="not quantized"):
        save_quantized(model, tmp_path / "x")
    save_quantized(quantize_int8(copy.deepcopy(model)), tmp_path / "int8")
    weights = tmp_path / "int8" / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="unreadable"):
        load_quantized(tmp_path / "int8")
    with pytest.raises(QuillError, match="unknown quantization backend"):
        quantize_int8(model, backend="int4")


def test_engine_follows_the_platform(monkeypatch):
    previous = torch.backends.quantized.engine
    try:
        monkeypatch.setattr(platform, "machine", lambda: "aarch64")
        if "qnnpack" in torch.backends.quantized.supported_engines:
            assert select_engine() == "qnnpack"
        monkeypatch.setattr(platform, "machine", lambda: "x86_64")
        assert select_engine() in ("x86", "fbgemm", "onednn")
        assert select_engine("fbgemm") == torch.backends.quantized.engine == "fbgemm"
        with pytest.raises(QuillError, match="no int8 engine tpu"):
            select_engine("tpu")
    finally:
        torch.backends.quantized.engine = previous


def test_quantize_cli_writes_a_smaller_checkpoint(model, tmp_path, capsys):
    save_checkpoint(model, tmp_path / "fp32")
    assert main(["quantize", str(tmp_path / "fp32"), str(tmp_path / "int8")]) == 0
    assert "linear layers" in capsys.readouterr().out
    fp32_size = (tmp_path / "fp32" / WEIGHTS_FILE).stat().st_size
    assert (tmp_path / "int8" / WEIGHTS_FILE).stat().st_size < 0.6 * fp32_size
    assert main(["quantize", str(tmp_path / "int8"), str(tmp_path / "again")]) == 2
    assert "already int8" in capsys.readouterr().err
