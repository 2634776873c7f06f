"""Normalisation layers: LayerNorm or RMSNorm, chosen by ``ModelConfig.norm``."""

from __future__ import annotations

from torch import nn

from quillgpt.config import ModelConfig


def make_norm(config: ModelConfig, width: int, *, learnable: bool = True) -> nn.Module:
    """Return the config's normalisation over the last ``width`` features.

    ``layernorm`` subtracts the mean and divides by the standard deviation, then applies a gain
    (and a bias when ``config.bias``); ``rmsnorm`` only divides by the root mean square, then
    applies a gain. ``learnable=False`` drops the gain and bias (the per-head query/key norm).
    Shapes: ``(..., width) -> (..., width)``.
    """
    eps = config.layer_norm_eps
    if config.norm == "rmsnorm":
        return nn.RMSNorm(width, eps=eps, elementwise_affine=learnable)
    bias = config.bias and learnable
    return nn.LayerNorm(width, eps=eps, elementwise_affine=learnable, bias=bias)
