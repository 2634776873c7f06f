"""Shared fixtures: deterministic seeds and small model configs."""

from __future__ import annotations

import pytest
import torch

from quillgpt import ModelConfig


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def tiny_config() -> ModelConfig:
    return ModelConfig(vocab_size=97, block_size=32, n_layer=2, n_head=4, n_embd=32)
