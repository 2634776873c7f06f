"""Int8 linear layers: one ``nn.Linear`` quantized by either backend, and what it holds.

A layer stores its weight as int8 with one fp32 scale per output row (symmetric:
``W ~ q * scale``, ``q`` in ``[-127, 127]``, ``scale = max|W_row| / 127``) and quantizes its
activations on the fly, per call: the int8 x int8 product is accumulated in int32 and rescaled
to fp32.

Two implementations (``backend``):

* ``"torch.ao"``: ``torch.ao.nn.quantized.dynamic.Linear``, PyTorch's built-in quantized kernels
  (FBGEMM / oneDNN on x86, QNNPACK on Arm; :func:`select_engine` picks them). Deprecated since
  torch 2.10 in favour of ``torchao`` but still shipped and fast in eager mode on a CPU.
* ``"torchao"``: the maintained ``torchao`` package, ``Int8DynamicActivationInt8WeightConfig``
  (int8 per-row weights, dynamic per-token activations): the weight becomes a tensor subclass of
  an ordinary ``nn.Linear``. Its CPU kernels are written for ``torch.compile``; run eagerly they
  are far slower than fp32 (see ``docs/performance.md``, "Quantization").

:data:`DEFAULT_BACKEND` is the one that met the targets on the measured CPU.
"""

from __future__ import annotations

import importlib.util
import platform
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from quillgpt.errors import QuillError

BACKENDS = ("torch.ao", "torchao")
DEFAULT_BACKEND = "torch.ao"
"""Chosen by ``benchmarks/bench_quantize.py`` on the measured CPU (see docs/performance.md)."""


def select_engine(engine: str | None = None) -> str:
    """Set ``torch.backends.quantized.engine`` (``engine``, or the best here); return its name.

    The best on Arm is QNNPACK (the mobile/Arm kernels); on x86, ``x86`` (which dispatches to
    FBGEMM or oneDNN per operation), else FBGEMM. The engine is global: it packs the weights when
    a layer is quantized and runs every quantized layer afterwards.

    Raises:
        QuillError: if ``engine`` (or any int8 engine) is not in this torch build.
    """
    supported = torch.backends.quantized.supported_engines
    if engine is not None:
        preferences: tuple[str, ...] = (engine,)
    elif platform.machine().lower() in ("arm64", "aarch64"):
        preferences = ("qnnpack",)
    else:
        preferences = ("x86", "fbgemm", "onednn")
    for name in preferences:
        if name in supported:
            torch.backends.quantized.engine = name
            return name
    raise QuillError(
        f"this torch build has no int8 engine {' or '.join(preferences)} for "
        f"{platform.machine()} (it supports {supported}); use --quantize none"
    )


def int8_per_row(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize ``weight`` ``(N, C)`` symmetrically per output row.

    Returns ``(q, scale)``: int8 ``(N, C)`` in ``[-127, 127]`` and fp32 ``(N,)`` with
    ``weight ~ q * scale[:, None]``. An all-zero row gets scale 1 (any scale reproduces it).
    """
    weight = weight.detach().float()
    amax = weight.abs().amax(dim=1)
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    q = torch.round(weight / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


def quantize_linear(
    linear: nn.Linear, backend: str = DEFAULT_BACKEND, scale: torch.Tensor | None = None
) -> nn.Module:
    """Return a dynamically quantized copy of ``linear`` (int8 weights, per-row scales).

    Args:
        linear: the fp32 layer.
        backend: ``"torch.ao"`` or ``"torchao"``.
        scale: per-row scales ``(N,)`` to use instead of ``max|row| / 127`` (when rebuilding a
            saved quantized layer from its dequantized weights).
    """
    weight = linear.weight.detach().float().cpu()
    bias = None if linear.bias is None else linear.bias.detach().float().cpu()
    if scale is None:
        _, scale = int8_per_row(weight)
    scale = scale.float()
    if backend == "torch.ao":
        return _torch_ao_linear(weight, bias, scale)
    if backend == "torchao":
        return _torchao_linear(weight, bias, scale)
    raise QuillError(f"unknown quantization backend {backend!r}; choose one of {BACKENDS}")


def _torch_ao_linear(
    weight: torch.Tensor, bias: torch.Tensor | None, scale: torch.Tensor
) -> nn.Module:
    with _quiet_deprecations():
        from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

        out_features, in_features = weight.shape
        zero_points = torch.zeros(out_features, dtype=torch.long)
        qweight = torch.quantize_per_channel(
            weight, scale.double(), zero_points, axis=0, dtype=torch.qint8
        )
        module = DynamicQuantizedLinear(
            in_features, out_features, bias_=bias is not None, dtype=torch.qint8
        )
        module.set_weight_bias(qweight, bias)
    return module


def _torchao_linear(
    weight: torch.Tensor, bias: torch.Tensor | None, scale: torch.Tensor
) -> nn.Module:
    if importlib.util.find_spec("torchao") is None:
        raise QuillError("the torchao backend needs the torchao package: pip install torchao")
    from torchao.quantization import Int8Tensor, PerRow
    from torchao.quantization.quantize_.workflows.int8.int8_tensor import (
        QuantizeTensorToInt8Kwargs,
    )

    out_features, in_features = weight.shape
    module = nn.Linear(in_features, out_features, bias=bias is not None)
    qweight = Int8Tensor.from_hp(
        weight,
        PerRow(),
        scale=scale[:, None],
        act_quant_kwargs=QuantizeTensorToInt8Kwargs(granularity=PerRow()),
    )
    module.weight = nn.Parameter(qweight, requires_grad=False)
    if bias is not None:
        module.bias = nn.Parameter(bias, requires_grad=False)
    return module


@contextmanager
def _quiet_deprecations() -> Iterator[None]:
    """Silence torch.ao's deprecation notices (the choice is documented, see the module doc)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*deprecated.*")
        yield


def int8_state(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Return ``(q int8 (N, C), scale fp32 (N,), bias or None)`` of a quantized linear layer."""
    if isinstance(module, nn.Linear):  # torchao: an nn.Linear holding an Int8Tensor weight
        weight = module.weight
        bias = None if module.bias is None else module.bias.detach()
        return weight.qdata, weight.scale.reshape(-1).float(), bias
    with _quiet_deprecations():
        qweight = module.weight()
        bias = module.bias()
    return qweight.int_repr(), qweight.q_per_channel_scales().float(), bias


def is_quantized_linear(module: nn.Module) -> bool:
    """Whether ``module`` is a linear layer quantized by either backend."""
    if isinstance(module, nn.Linear):
        return type(module.weight).__name__ == "Int8Tensor"  # torchao
    return type(module).__module__.startswith("torch.ao.nn.quantized.dynamic")
