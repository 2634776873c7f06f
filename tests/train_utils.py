"""Helpers for the training tests: a tiny synthetic corpus, prepared once per session."""

from __future__ import annotations

import os
import random
import signal
from pathlib import Path
from typing import Any

import torch

from quillgpt.config import ModelConfig
from quillgpt.training import TrainConfig

WORDS = ("the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "and", "cat", "sat",
         "on", "mat", "with", "hat")  # fmt: skip


def write_corpus(directory: Path, seed: int = 0, docs: int = 8, lines: int = 60) -> Path:
    """Write ``docs`` small text files of short, repetitive sentences (easy to learn)."""
    rng = random.Random(seed)
    words = WORDS if seed == 0 else [w.upper() for w in WORDS]  # another alphabet
    directory.mkdir(parents=True, exist_ok=True)
    for d in range(docs):
        text = "\n".join(
            " ".join(rng.choice(words) for _ in range(rng.randint(4, 9))) + "."
            for _ in range(lines)
        )
        (directory / f"doc{d}.txt").write_text(text + "\n")
    return directory


def prepare(base: Path, seed: int = 0) -> Any:
    """Prepare (or reuse) the char-level corpus under ``base``."""
    from quillgpt.data import prepare_data

    corpus = base / f"corpus{seed}"
    if not corpus.exists():
        write_corpus(corpus, seed)
    return prepare_data(str(corpus), "char", data_dir=base / "data")


def model_config(**overrides: Any) -> ModelConfig:
    # No biases: a key bias gets an exactly-zero gradient in theory (softmax ignores a constant
    # shift), so its rounding noise would be amplified by Adam and make comparisons flaky.
    fields = dict(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32, bias=False)
    return ModelConfig(**{**fields, **overrides})


def train_config(out_dir: Path, **overrides: Any) -> TrainConfig:
    """A fast, deterministic configuration: fp32, eager, one thread, no samples."""
    fields: dict[str, Any] = dict(
        out_dir=str(out_dir),
        batch_size=4,
        max_steps=8,
        lr=3e-3,
        warmup_steps=2,
        eval_interval=4,
        eval_tokens=256,
        log_interval=2,
        ckpt_interval=4,
        num_samples=0,
        precision="fp32",
        compile="off",
        device="cpu",
        progress=False,
        final_eval=False,
        threads=1,
    )
    return TrainConfig(**{**fields, **overrides})


def cli_args(data: Any, out_dir: Path, **overrides: Any) -> list[str]:
    """``quill train`` options equivalent to :func:`train_config` on the prepared corpus."""
    cfg = train_config(out_dir, **overrides)
    corpus = cfg.data if "data" in overrides else str(Path(data.meta["corpus"]["source"]))
    options = {
        "data": corpus,
        "tokenizer": "char",
        "data_dir": str(Path(data.directory).parents[1]),
        "block_size": 16,
        "n_layer": 2,
        "n_head": 2,
        "n_embd": 32,
        "bias": False,
        **{
            k: v
            for k, v in cfg.to_dict().items()
            if k not in ("data", "tokenizer", "data_dir", "tokenizer_vocab")
        },
    }
    args = []
    for key, value in options.items():
        if value is None:
            continue
        args += [f"--{key}", str(value)]
    return args


def sigterm_during_step(model: torch.nn.Module, step: int, grad_accum: int = 1) -> None:
    """Make the process receive SIGTERM during the forward pass of optimiser step ``step``.

    ``train`` handles the signal once that step completes: it checkpoints and stops. With
    gradient accumulation a step makes ``grad_accum`` forward passes; the signal comes in the
    first of them. Evaluation passes (the model in eval mode) are not counted.
    """
    calls = {"n": 0}
    first_pass = (step - 1) * grad_accum + 1

    def hook(module: torch.nn.Module, args: Any) -> None:
        if not module.training:
            return
        calls["n"] += 1
        if calls["n"] == first_pass:
            os.kill(os.getpid(), signal.SIGTERM)

    model.register_forward_pre_hook(hook)


def fresh_model(data: Any, seed: int = 1337, **overrides: Any) -> Any:
    """A model for ``data``'s tokenizer, initialised as ``train`` would with ``seed``."""
    from quillgpt import DecoderLM

    torch.manual_seed(seed)
    return DecoderLM(model_config(vocab_size=data.vocab_size, **overrides))


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of ``model``'s state dict."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], exact: bool = True):
    """Assert two state dicts are equal: bit for bit, or within fp32 rounding."""
    assert a.keys() == b.keys()
    for name in a:
        if exact:
            assert torch.equal(a[name], b[name]), name
        else:
            torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)
