"""Device resolution and mixed-precision policy, with device availability mocked."""

from __future__ import annotations

import pytest
import torch

from quillgpt import device as devices
from quillgpt.errors import QuillError


@pytest.fixture
def no_accelerators(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devices, "xpu_available", lambda: False)
    monkeypatch.setattr(devices, "mps_available", lambda: False)


def test_auto_prefers_cuda_then_xpu_then_mps_then_cpu(monkeypatch, no_accelerators):
    assert devices.resolve_device("auto").type == "cpu"
    monkeypatch.setattr(devices, "mps_available", lambda: True)
    assert devices.resolve_device("auto").type == "mps"
    monkeypatch.setattr(devices, "xpu_available", lambda: True)
    assert devices.resolve_device("auto").type == "xpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert devices.resolve_device("auto").type == "cuda"


@pytest.mark.parametrize("name", ["cuda", "xpu", "mps", "cuda:1"])
def test_missing_device_is_a_clear_error(no_accelerators, name):
    with pytest.raises(QuillError, match="not available"):
        devices.resolve_device(name)


def test_unknown_device_is_refused():
    with pytest.raises(QuillError, match="unknown device"):
        devices.resolve_device("tpu")
    assert devices.resolve_device("cpu") == torch.device("cpu")


def test_amp_dtype_per_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert devices.autocast_dtype(torch.device("cuda")) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert devices.autocast_dtype(torch.device("cuda")) == torch.float16
    assert devices.autocast_dtype(torch.device("cuda"), "fp16") == torch.float16
    assert devices.autocast_dtype(torch.device("xpu")) == torch.bfloat16
    assert devices.autocast_dtype(torch.device("mps")) == torch.float16
    assert devices.autocast_dtype(torch.device("cuda"), "fp32") is None


def test_cpu_uses_bf16_only_when_native(monkeypatch):
    monkeypatch.setattr(devices, "cpu_supports_bf16", lambda: False)
    assert devices.autocast_dtype(torch.device("cpu")) is None
    with pytest.warns(UserWarning, match="emulated"):
        assert devices.autocast_dtype(torch.device("cpu"), "bf16") is None
    monkeypatch.setattr(devices, "cpu_supports_bf16", lambda: True)
    assert devices.autocast_dtype(torch.device("cpu")) == torch.bfloat16
    assert devices.autocast_dtype(torch.device("cpu"), "bf16") == torch.bfloat16


def test_cpu_bf16_detection_reads_cpu_flags(monkeypatch):
    devices.cpu_supports_bf16.cache_clear()
    monkeypatch.setattr(devices.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(devices, "_cpu_flags_contain", lambda wanted: "amx_bf16" in wanted)
    assert devices.cpu_supports_bf16()
    devices.cpu_supports_bf16.cache_clear()
    monkeypatch.setattr(devices, "_cpu_flags_contain", lambda wanted: False)
    assert not devices.cpu_supports_bf16()
    devices.cpu_supports_bf16.cache_clear()


def test_only_fp16_needs_a_grad_scaler():
    assert devices.needs_grad_scaler(torch.float16)
    assert not devices.needs_grad_scaler(torch.bfloat16)
    assert not devices.needs_grad_scaler(None)


def test_unknown_precision_is_refused():
    with pytest.raises(QuillError, match="unknown precision"):
        devices.autocast_dtype(torch.device("cpu"), "int4")


def test_peak_memory_on_cpu_is_rss():
    assert devices.peak_memory_bytes(torch.device("cpu")) > 10 * 2**20


def test_ipex_is_skipped_when_not_installed():
    model = torch.nn.Linear(2, 2)
    _, _, applied = devices.ipex_optimize(model)
    assert applied is False
