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


@pytest.fixture
def svg_backend():
    """Switch matplotlib to the svg backend (standing for a notebook's inline one) for a test.

    Code that draws figures must leave it that way; the original backend comes back afterwards.
    """
    import matplotlib

    original = matplotlib.get_backend()
    matplotlib.use("svg")
    yield
    matplotlib.use(original)
