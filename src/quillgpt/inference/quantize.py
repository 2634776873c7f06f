"""Dynamic int8 quantization of a model's linear layers.

*Dynamic* quantization stores each ``nn.Linear`` weight as int8 with one fp32 scale per output
row and quantizes the activations on the fly, per call (the layers and their two backends are in
:mod:`~quillgpt.inference.quantized_linear`). Nothing needs calibration data, and since decoding
a token reads every weight once, a quarter of the bytes means up to four times fewer memory reads
per token. Embeddings, LayerNorms and the attention arithmetic stay fp32.

Quantized models are saved and loaded, pickle-free, by
:mod:`~quillgpt.inference.quantized_checkpoint`.
"""

from __future__ import annotations

import torch
from torch import nn

from quillgpt.errors import QuillError
from quillgpt.inference.quantized_linear import (
    BACKENDS,
    DEFAULT_BACKEND,
    int8_state,
    is_quantized_linear,
    quantize_linear,
    select_engine,
)
from quillgpt.model.decoder import DecoderLM

METHOD = "int8-dynamic-per-row"
"""Name of the scheme, stored in ``config.json`` so a loader knows what it reads."""


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
