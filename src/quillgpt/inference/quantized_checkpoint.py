"""Quantized checkpoints: save and load a model quantized by ``quantize_int8``, without pickle.

Checkpoints (:func:`save_quantized`, :func:`load_quantized`) keep the usual run-directory layout
and stay pickle-free: ``model.safetensors`` holds the int8 weights ``<layer>.weight_int8``, their
scales ``<layer>.weight_scale`` and every other tensor as in an fp32 checkpoint; ``config.json``
gains a ``quantization`` section listing the quantized layers. Loading rebuilds the fp32 model
from the tensors and quantizes those layers again *with the stored scales*, which reproduces the
stored int8 values exactly (``round(q * s / s) = q``), for either backend.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from quillgpt.checkpoint import (
    WEIGHTS_FILE,
    check_weight_names,
    read_config,
    write_checkpoint_files,
)
from quillgpt.config import ModelConfig
from quillgpt.errors import CheckpointError, QuillError
from quillgpt.inference.quantize import METHOD, quantize_int8
from quillgpt.inference.quantized_linear import int8_state
from quillgpt.model.decoder import DecoderLM

_INT8_SUFFIX = ".weight_int8"
_SCALE_SUFFIX = ".weight_scale"


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
    check_weight_names(expected, set(state), path / WEIGHTS_FILE)
    if "lm_head.weight" in state and config.tie_weights:
        model.lm_head.weight = nn.Parameter(torch.empty_like(model.tok_emb.weight))  # untie
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise CheckpointError(f"{path} has tensors of the wrong shape: {exc}") from exc
    return quantize_int8(
        model, backend=backend or info["backend"], layers=info["layers"], scales=scales
    )
