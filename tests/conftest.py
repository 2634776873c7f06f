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
def hub_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any attempt to reach the Hugging Face hub fail, for tests that must stay offline."""
    import datasets
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="session")
def data(tmp_path_factory):
    """The tiny char-level corpus of ``train_utils``, prepared once for the training tests."""
    from train_utils import prepare

    return prepare(tmp_path_factory.getbasetemp() / "train-data")


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
