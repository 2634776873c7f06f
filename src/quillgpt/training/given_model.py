"""What a model handed to :func:`~quillgpt.training.train` (``model=...``) must be.

A user may train a model they built or loaded themselves. It is trained in place, so it has to
be the plain module (not compiled, wrapped or quantized), with fp32 parameters (mixed precision is
the trainer's job), and its vocabulary has to be the tokenizer's. Each refusal says what to change.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from torch import nn

from quillgpt.config import ModelConfig
from quillgpt.errors import ConfigError
from quillgpt.model import DecoderLM

if TYPE_CHECKING:
    from quillgpt.data import PreparedData


def checked_model_config(
    model_config: ModelConfig | None, model: nn.Module | None, data: PreparedData
) -> ModelConfig:
    """The configuration of the model to train on ``data``, with the tokenizer's ``vocab_size``.

    Without ``model`` it is ``model_config``. With one, ``model`` must be trainable on ``data``
    and be the one ``model_config`` describes (if given; ``vocab_size`` is not compared).

    Raises:
        ConfigError: naming what to change: not a plain :class:`~quillgpt.DecoderLM` (compiled,
            wrapped or quantized), a ``vocab_size`` other than the tokenizer's, a configuration
            that differs from ``model_config``, or parameters that are not fp32.
    """
    if model is None:
        if model_config is None:
            raise ConfigError("train() needs a model_config, or a model to train (model=...)")
        return dataclasses.replace(model_config, vocab_size=data.vocab_size)
    if not isinstance(model, DecoderLM):
        raise ConfigError(
            f"model must be a quillgpt DecoderLM, got {type(model).__name__}; pass the plain "
            "model (not torch.compile'd or DDP-wrapped: set TrainConfig.compile and run under "
            "torchrun instead)"
        )
    if getattr(model, "quantization", None):
        raise ConfigError(
            "model is int8-quantized and cannot be trained; train the fp32 model (e.g. "
            "load_checkpoint of the run it came from) and quantize afterwards"
        )
    config = model.config
    if config.vocab_size != data.vocab_size:
        raise ConfigError(
            f"model.config.vocab_size is {config.vocab_size} but the tokenizer of "
            f"{data.directory} has {data.vocab_size} tokens; build the model with "
            f"ModelConfig(vocab_size={data.vocab_size}, ...) or prepare the data with the "
            "model's own tokenizer"
        )
    if model_config is not None:
        given = dataclasses.replace(model_config, vocab_size=config.vocab_size).to_dict()
        actual = config.to_dict()
        diff = sorted(k for k in given.keys() | actual.keys() if given.get(k) != actual.get(k))
        if diff:
            details = ", ".join(f"{k}={actual.get(k)!r} (config: {given.get(k)!r})" for k in diff)
            raise ConfigError(
                f"the model does not match model_config: {details}; pass model.config (or "
                "None) as model_config"
            )
    wrong = sorted(
        {str(p.dtype) for p in model.parameters() if p.is_floating_point()} - {"torch.float32"}
    )
    if wrong:
        raise ConfigError(
            f"the model has {', '.join(wrong)} parameters; train fp32 parameters (model.float()) "
            "and set TrainConfig.precision (bf16, fp16) for mixed precision"
        )
    return config
