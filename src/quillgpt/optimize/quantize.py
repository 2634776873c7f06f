"""Dynamic int8 quantization of the linear layers, and quantized checkpoints without pickle.

*Dynamic* quantization stores each ``nn.Linear`` weight as int8 with one fp32 scale per output
row (symmetric: ``W ~ q * scale``, ``q`` in ``[-127, 127]``, ``scale = max|W_row| / 127``) and
quantizes the activations on the fly, per call: the int8 x int8 product is accumulated in int32
and rescaled to fp32. Nothing needs calibration data, and since decoding a token reads every
weight once, a quarter of the bytes means up to four times fewer memory reads per token.
Embeddings, LayerNorms and the attention arithmetic stay fp32.

Two implementations (``backend``):

* ``"torch.ao"``: ``torch.ao.nn.quantized.dynamic.Linear``, PyTorch's built-in quantized kernels
  (FBGEMM / oneDNN on x86, QNNPACK on Arm; :func:`select_engine` picks them). Deprecated since
  torch 2.10 in favour of ``torchao`` but still shipped and fast in eager mode on a CPU.
* ``"torchao"``: the maintained ``torchao`` package, ``Int8DynamicActivationInt8WeightConfig``
  (int8 per-row weights, dynamic per-token activations): the weight becomes a tensor subclass of
  an ordinary ``nn.Linear``. Its CPU kernels are written for ``torch.compile``; run eagerly they
  are far slower than fp32 (see ``docs/performance.md``, "Quantization").

:data:`DEFAULT_BACKEND` is the one that met the targets on the measured CPU.

Checkpoints (:func:`save_quantized`, :func:`load_quantized`) keep the usual run-directory layout
and stay pickle-free: ``model.safetensors`` holds the int8 weights ``<layer>.weight_int8``, their
scales ``<layer>.weight_scale`` and every other tensor as in an fp32 checkpoint; ``config.json``
gains a ``quantization`` section listing the quantized layers. Loading rebuilds the fp32 model
from the tensors and quantizes those layers again *with the stored scales*, which reproduces the
stored int8 values exactly (``round(q * s / s) = q``), for either backend.
"""

from __future__ import annotations

import importlib.util
import json
import platform
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from quillgpt.checkpoint import (
    WEIGHTS_FILE,
    read_config,
    write_checkpoint_files,
)
from quillgpt.config import ModelConfig
from quillgpt.errors import CheckpointError, QuillError
from quillgpt.model.decoder import DecoderLM

BACKENDS = ("torch.ao", "torchao")
DEFAULT_BACKEND = "torch.ao"
"""Chosen by ``benchmarks/bench_quantize.py`` on the measured CPU (see docs/performance.md)."""

METHOD = "int8-dynamic-per-row"
"""Name of the scheme, stored in ``config.json`` so a loader knows what it reads."""

_INT8_SUFFIX = ".weight_int8"
_SCALE_SUFFIX = ".weight_scale"


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


def quantizable_layers(model: DecoderLM, *, include_head: bool = True) -> list[str]:
    """Names of the ``nn.Linear`` layers :func:`quantize_int8` converts, in module order."""
    return [
        name
        for name, module in model.named_modules()
        if type(module) is nn.Linear and (include_head or name != "lm_head")
    ]


def quantize_int8(
    model: DecoderLM,
    *,
    backend: str = DEFAULT_BACKEND,
    include_head: bool = True,
    layers: list[str] | None = None,
    scales: dict[str, torch.Tensor] | None = None,
    engine: str | None = None,
) -> DecoderLM:
    """Quantize the linear layers of ``model`` (on the CPU) to dynamic int8, in place.

    Args:
        model: an fp32 model; it is moved to the CPU and put in eval mode.
        backend: ``"torch.ao"`` (default) or ``"torchao"``.
        include_head: also quantize the output head (``lm_head``), the largest matrix of a
            GPT-2-sized model. With tied weights the token embedding keeps its fp32 copy.
        layers: names of the layers to quantize; default :func:`quantizable_layers`.
        scales: per-layer row scales to reuse (used when loading a quantized checkpoint).
        engine: torch.ao's kernel library (``x86``, ``fbgemm``, ``onednn``, ``qnnpack``);
            default :func:`select_engine`'s choice for this machine.

    Returns:
        ``model``, with ``model.quantization`` describing what was done.
    """
    if backend not in BACKENDS:
        raise QuillError(f"unknown quantization backend {backend!r}; choose one of {BACKENDS}")
    engine = select_engine(engine) if backend == "torch.ao" else "torchao"
    model.float().cpu().eval()
    names = layers if layers is not None else quantizable_layers(model, include_head=include_head)
    for name in names:
        parent_name, _, child_name = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        linear = getattr(parent, child_name)
        if type(linear) is not nn.Linear:
            raise QuillError(f"{name} is not an nn.Linear layer; it cannot be quantized")
        scale = None if scales is None else scales[name]
        setattr(parent, child_name, quantize_linear(linear, backend, scale))
    model.quantization = {"method": METHOD, "backend": backend, "engine": engine, "layers": names}
    return model


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


def linear_weight_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes of the weights of every linear layer, by layer name.

    For a quantized layer: int8 data, scales and bias, what its kernel reads per call; for an
    fp32 ``nn.Linear``: its weight and bias.
    """
    sizes: dict[str, int] = {}
    for name, module in model.named_modules():
        if is_quantized_linear(module):
            q, scale, bias = int8_state(module)
            sizes[name] = q.nbytes + scale.nbytes + (0 if bias is None else bias.nbytes)
        elif isinstance(module, nn.Linear):
            sizes[name] = sum(p.nbytes for p in module.parameters(recurse=False))
    return sizes


def is_quantized_linear(module: nn.Module) -> bool:
    """Whether ``module`` is a linear layer quantized by either backend."""
    if isinstance(module, nn.Linear):
        return type(module.weight).__name__ == "Int8Tensor"  # torchao
    return type(module).__module__.startswith("torch.ao.nn.quantized.dynamic")


def save_quantized(
    model: DecoderLM,
    path: str | Path,
    *,
    tokenizer: str | Path | Any = None,
    extra_config: dict[str, Any] | None = None,
) -> Path:
    """Write a model quantized by :func:`quantize_int8` to checkpoint directory ``path``.

    Layout as in :func:`quillgpt.save_checkpoint` (``model.safetensors``, ``config.json``,
    ``tokenizer.json``); see the module docstring for the tensors. Nothing is pickled.
    """
    info = getattr(model, "quantization", None)
    if info is None:
        raise QuillError("the model is not quantized; call quantize_int8(model) first")
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    for name in info["layers"]:
        q, scale, bias = int8_state(model.get_submodule(name))
        tensors[name + _INT8_SUFFIX] = q.contiguous()
        tensors[name + _SCALE_SUFFIX] = scale.contiguous()
        if bias is not None:
            tensors[name + ".bias"] = bias.float().contiguous()
    prefixes = tuple(name + "." for name in info["layers"])
    for name, tensor in model.state_dict().items():
        if name.startswith(prefixes):
            continue  # packed parameters of a quantized layer, written above as int8 + scales
        if name == "lm_head.weight" and model.config.tie_weights:
            continue  # the same tensor as the token embedding
        tensors[name] = tensor.detach().contiguous()
    document = {"model": model.config.to_dict(), **(extra_config or {}), "quantization": info}
    metadata = {"format": "pt", "quillgpt_quantization": json.dumps(info, sort_keys=True)}
    write_checkpoint_files(path, tensors, metadata, document, tokenizer)
    return path


def is_quantized_checkpoint(path: str | Path) -> bool:
    """Whether the checkpoint directory ``path`` holds a model saved by :func:`save_quantized`."""
    return "quantization" in read_config(path)


def load_quantized(path: str | Path, *, backend: str | None = None) -> DecoderLM:
    """Rebuild a model saved by :func:`save_quantized`, on the CPU, in eval mode.

    Args:
        path: the checkpoint directory.
        backend: run the int8 layers with this backend; default the one it was saved with.

    Raises:
        CheckpointError: if a file is missing or corrupt, or the tensors do not match.
    """
    path = Path(path)
    document = read_config(path)
    info = document.get("quantization")
    if info is None or info.get("method") != METHOD:
        raise CheckpointError(f"{path} is not an int8 checkpoint written by `quill quantize`")
    config = ModelConfig.from_dict(document["model"])
    try:
        with safe_open(str(path / WEIGHTS_FILE), framework="pt", device="cpu") as f:
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path / WEIGHTS_FILE} is unreadable ({exc}); quantize the fp32 checkpoint again"
        ) from exc
    model = DecoderLM(config)
    scales: dict[str, torch.Tensor] = {}
    state: dict[str, torch.Tensor] = {}
    try:
        for name in info["layers"]:
            q = tensors.pop(name + _INT8_SUFFIX)
            scales[name] = tensors.pop(name + _SCALE_SUFFIX)
            state[name + ".weight"] = q.float() * scales[name][:, None]
            if name + ".bias" in tensors:
                state[name + ".bias"] = tensors.pop(name + ".bias")
    except KeyError as exc:
        raise CheckpointError(f"{path / WEIGHTS_FILE} lacks tensor {exc}; re-quantize") from exc
    state.update(tensors)
    expected = set(model.state_dict())
    if config.tie_weights and "lm_head" not in info["layers"]:
        expected.discard("lm_head.weight")
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"{path / WEIGHTS_FILE} does not match its config: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    if "lm_head.weight" in state and config.tie_weights:
        model.lm_head.weight = nn.Parameter(torch.empty_like(model.tok_emb.weight))  # untie
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise CheckpointError(f"{path} has tensors of the wrong shape: {exc}") from exc
    return quantize_int8(
        model, backend=backend or info["backend"], layers=info["layers"], scales=scales
    )
