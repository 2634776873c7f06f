"""A tiny trained run directory shared by the inference tests (generate, eval, quantize)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from quillgpt.config import ModelConfig
from train_utils import prepare, train_config


def trained_run(base: Path) -> tuple[Path, Any, Any]:
    """Train a 2-layer char model for a few steps; return ``(run_dir, data, TrainResult)``."""
    from quillgpt.training import train

    data = prepare(base)
    config = ModelConfig(vocab_size=64, block_size=32, n_layer=2, n_head=2, n_embd=64)
    cfg = train_config(base / "run", max_steps=30, lr=1e-2, final_eval=True, batch_size=4)
    result = train(config, cfg, data)
    return base / "run", data, result
