"""Training configuration: the :class:`TrainConfig` dataclass and config files.

A run is described by two dataclasses: :class:`~quillgpt.config.ModelConfig` (the network's
shape) and :class:`TrainConfig` (everything else: data, optimiser, schedule, budget, precision,
checkpoints). Both come from, in increasing priority:

1. the dataclass defaults,
2. a config file (TOML, YAML or JSON) with a ``[model]`` and a ``[train]`` section,
3. command-line overrides such as ``--n_layer 6 --lr 1e-3``.

A TOML preset looks like::

    [model]
    preset = "mini"          # optional: start from a ModelConfig preset
    n_layer = 4
    pos_encoding = "rope"

    [train]
    tokenizer = "bpe"
    max_time = "5m"
    lr = 2e-3

Every value is validated when the dataclass is built, and an error names the field and what to
change. :func:`field_docs` turns the ``Attributes:`` section of a dataclass docstring into the
``--help`` text of the command line, so the two cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from quillgpt.config import MODEL_PRESETS, ModelConfig, dataclass_from_dict
from quillgpt.errors import QuillError

SCHEDULES: tuple[str, ...] = ("cosine", "linear", "constant")
TOKENIZERS: tuple[str, ...] = ("bpe", "char")
COMPILE_MODES: tuple[str, ...] = ("auto", "on", "off")
PARALLEL_MODES: tuple[str, ...] = ("ddp", "fsdp")
OPTIMIZER_IMPLS: tuple[str, ...] = ("auto", "fused", "foreach", "for-loop")

_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(hours?|h|minutes?|min|m|seconds?|sec|s)?", re.I)
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0}


def parse_duration(value: str | float | int | None) -> float | None:
    """Turn ``"5m"``, ``"1h30m"``, ``"90s"``, ``"300"`` or a number into seconds.

    A bare number means seconds. ``None`` (or ``"none"``) means "no limit".

    Raises:
        ValueError: for text that is not a duration, or a duration that is not positive.
    """
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
        return None
    if isinstance(value, bool):
        raise ValueError(f"max_time must be a duration like '5m' or '300s', got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = value.strip()
        pos, seconds = 0, 0.0
        for match in _DURATION.finditer(text):
            if text[pos : match.start()].strip():
                break
            unit = (match.group(2) or "s")[0].lower()
            seconds += float(match.group(1)) * _UNIT_SECONDS[unit]
            pos = match.end()
        if pos == 0 or text[pos:].strip():
            raise ValueError(
                f"max_time must be a duration like '5m', '1h30m', '90s' or a number of seconds, "
                f"got {value!r}"
            )
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"max_time must be positive, got {value!r}")
    return seconds


@dataclass
class TrainConfig:
    """Everything about a training run that is not the model's shape.

    Attributes:
        data: the corpus: ``shakespeare`` (built in), a local text/json/parquet file or folder,
            or a Hugging Face hub dataset name.
        tokenizer: ``bpe`` (byte-level BPE trained on the training split), ``char``, or the
            path of an existing ``tokenizer.json``.
        tokenizer_vocab: vocabulary size of a trained BPE tokenizer (ignored for ``char``). The
            model's ``vocab_size`` is always taken from the tokenizer.
        data_dir: where prepared data is cached (default ``$QUILLGPT_DATA_DIR`` or ``./data``).
        out_dir: the run directory: checkpoints, metrics.jsonl, loss.png, samples.txt.
        batch_size: sequences per micro-batch on each process.
        grad_accum: micro-batches accumulated per optimiser step. The global batch is
            ``batch_size * grad_accum * world_size`` sequences of ``block_size`` tokens.
        max_steps: stop after this many optimiser steps (the schedule reaches its floor there).
        max_time: training-time budget, e.g. ``5m``, ``1h30m``, ``300`` (seconds). Compilation,
            periodic evaluation and checkpoints count; the final full evaluation does not. The
            schedule is fitted to the budget from the measured step time (docs/training.md).
        lr: peak learning rate of AdamW.
        min_lr_ratio: the schedule's floor as a fraction of ``lr``.
        warmup_steps: steps of linear warm-up from ``lr / warmup_steps`` to ``lr``.
        schedule: decay after warm-up: ``cosine``, ``linear`` (both to the floor at the last
            step) or ``constant``.
        weight_decay: AdamW decoupled weight decay, applied to weight matrices only (not to
            biases, norms or embeddings).
        beta1: AdamW first-moment decay.
        beta2: AdamW second-moment decay.
        eps: AdamW epsilon.
        grad_clip: clip the global gradient norm to this value (0 disables clipping; the norm is
            logged either way).
        optimizer_impl: AdamW kernel: ``auto`` (fused, or foreach where fused is unavailable
            and for FSDP-sharded parameters), ``fused``, ``foreach`` or ``for-loop``.
        eval_interval: evaluate every this many steps (and at the end).
        eval_tokens: size of the fixed validation sample used during training, in tokens:
            ``eval_tokens // block_size`` windows evenly spaced over the validation split
            (0 = the whole split every time).
        final_eval: evaluate on the whole validation split after training (not counted in
            ``max_time``); this is the figure to report.
        log_interval: write a metrics line every this many steps.
        ckpt_interval: save model.safetensors and train_state.pt every this many steps (0 = only
            at the end and on interruption).
        save_best: keep ``best/`` with the weights of the lowest validation loss.
        num_samples: generated samples written to samples.txt at each evaluation.
        sample_tokens: length of each sample, in tokens.
        sample_prompt: text the samples start from.
        sample_temperature: sampling temperature of the samples.
        device: ``auto``, ``cpu``, ``cuda``, ``xpu`` or ``mps``.
        precision: ``auto`` (bf16 where the device computes it natively, fp16 with loss
            scaling on older GPUs, else fp32), ``fp32``, ``bf16`` or ``fp16``.
        compile: ``torch.compile`` the model: ``on``, ``off``, or ``auto`` (on where a compiler
            toolchain is present; falls back to eager with a warning if compilation fails).
        gradient_checkpointing: recompute each block's activations in the backward pass
            (much less memory, about a third more compute).
        parallel: with several processes (``torchrun``): ``ddp`` (replicated model) or
            ``fsdp`` (FSDP2 ``fully_shard``: parameters, gradients and optimiser state sharded).
        max_nonfinite: stop after this many optimiser steps in a row with a non-finite loss or
            gradient (each one is skipped and counted).
        seed: seed of initialisation, data order and dropout.
        deterministic: ask PyTorch for deterministic kernels (slower on GPUs).
        threads: CPU threads for PyTorch (default: PyTorch's choice).
        tensorboard: also write TensorBoard event files to ``<out_dir>/tensorboard``.
        progress: show a progress bar.
    """

    data: str = "shakespeare"
    tokenizer: str = "bpe"
    tokenizer_vocab: int = 2048
    data_dir: str | None = None
    out_dir: str = "runs/default"
    batch_size: int = 32
    grad_accum: int = 1
    max_steps: int | None = None
    max_time: float | None = None
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0
    optimizer_impl: Literal["auto", "fused", "foreach", "for-loop"] = "auto"
    eval_interval: int = 250
    eval_tokens: int = 65536
    final_eval: bool = True
    log_interval: int = 10
    ckpt_interval: int = 500
    save_best: bool = True
    num_samples: int = 2
    sample_tokens: int = 200
    sample_prompt: str = "\n"
    sample_temperature: float = 0.8
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    compile: Literal["auto", "on", "off"] = "auto"
    gradient_checkpointing: bool = False
    parallel: Literal["ddp", "fsdp"] = "ddp"
    max_nonfinite: int = 10
    seed: int = 1337
    deterministic: bool = False
    threads: int | None = None
    tensorboard: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        self.max_time = parse_duration(self.max_time)
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field to change when the configuration is impossible."""
        _check_types(self)
        if self.tokenizer not in TOKENIZERS and not self.tokenizer.endswith(".json"):
            raise ValueError(
                f"TrainConfig.tokenizer must be 'bpe', 'char' or a tokenizer.json path, "
                f"got {self.tokenizer!r}"
            )
        positive = ("tokenizer_vocab", "batch_size", "grad_accum", "eval_interval", "log_interval")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"TrainConfig.{name} must be positive, got {getattr(self, name)}")
        non_negative = ("warmup_steps", "eval_tokens", "ckpt_interval", "num_samples")
        for name in (*non_negative, "sample_tokens", "max_nonfinite", "seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"TrainConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps <= 0:
            raise ValueError(f"TrainConfig.max_steps must be positive, got {self.max_steps}")
        if self.threads is not None and self.threads <= 0:
            raise ValueError(f"TrainConfig.threads must be positive, got {self.threads}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"TrainConfig.lr must be a positive number, got {self.lr}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"TrainConfig.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"TrainConfig.{name} must be in [0, 1), got {getattr(self, name)}")
        for name in ("weight_decay", "grad_clip", "eps"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ValueError(f"TrainConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.sample_temperature < 0:
            raise ValueError(
                f"TrainConfig.sample_temperature must be >= 0, got {self.sample_temperature}"
            )

    def to_dict(self) -> dict[str, Any]:
        """Return the configuration as a JSON-serialisable dict (``max_time`` in seconds)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build a config from a dict, rejecting unknown keys with the list of valid ones."""
        return dataclass_from_dict(cls, data)


def _check_types(obj: Any) -> None:
    """Check every field of dataclass ``obj`` against its annotation (ints, floats, Literals)."""
    hints = typing.get_type_hints(type(obj))
    name_of = type(obj).__name__
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        allowed = _allowed_types(hints[f.name])
        if value is None and type(None) in allowed:
            continue
        if literal := [a for a in allowed if typing.get_origin(a) is Literal]:
            choices = typing.get_args(literal[0])
            if value not in choices:
                raise ValueError(f"{name_of}.{f.name} must be one of {choices}, got {value!r}")
            continue
        if isinstance(value, bool) and bool not in allowed:
            raise ValueError(f"{name_of}.{f.name} must be a number, got {value!r}")
        if float in allowed and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
            setattr(obj, f.name, value)
        if not isinstance(value, tuple(a for a in allowed if isinstance(a, type))):
            expected = " or ".join(getattr(a, "__name__", str(a)) for a in allowed)
            raise ValueError(f"{name_of}.{f.name} must be {expected}, got {value!r}")


def _allowed_types(hint: Any) -> tuple[Any, ...]:
    """Flatten ``int | None`` into ``(int, NoneType)``; a ``Literal`` stays whole."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return tuple(arg for part in typing.get_args(hint) for arg in _allowed_types(part))
    return (hint,)


def field_docs(cls: type) -> dict[str, str]:
    """Return ``{field: description}`` parsed from the ``Attributes:`` section of a docstring."""
    docs: dict[str, str] = {}
    in_section, current = False, None
    for line in (cls.__doc__ or "").splitlines():
        stripped = line.strip()
        if stripped == "Attributes:":
            in_section = True
            continue
        if not in_section:
            continue
        if stripped and not line.startswith(" " * 8):
            break
        match = re.match(r"^ {8}(\w+): (.*)$", line)
        if match:
            current = match.group(1)
            docs[current] = match.group(2)
        elif current and stripped:
            docs[current] += " " + stripped
    return docs


def load_config_file(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read a TOML, YAML or JSON config file into ``{"model": {...}, "train": {...}}``.

    The format follows the file extension (``.toml``, ``.yaml``/``.yml``, ``.json``). A
    ``preset`` key in the model section expands to that :data:`~quillgpt.config.MODEL_PRESETS`
    entry, which the other model keys then override.

    Raises:
        QuillError: if the file is missing, unparsable, or has sections other than ``model``
            and ``train``.
    """
    path = Path(path)
    if not path.is_file():
        raise QuillError(f"config file {path} does not exist; see configs/ for presets")
    text = path.read_text()
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            if sys.version_info >= (3, 11):
                import tomllib
            else:  # pragma: no cover - exercised on Python 3.10 only
                import tomli as tomllib
            document = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            import yaml

            document = yaml.safe_load(text) or {}
        elif suffix == ".json":
            document = json.loads(text)
        else:
            raise QuillError(f"config file {path} must end in .toml, .yaml, .yml or .json")
    except QuillError:
        raise
    except Exception as exc:  # each parser raises its own error type
        raise QuillError(f"could not parse config file {path}: {exc}") from exc
    if not isinstance(document, dict):
        raise QuillError(f"config file {path} must hold a table with [model] and [train]")
    unknown = sorted(set(document) - {"model", "train"})
    if unknown:
        raise QuillError(
            f"config file {path} has unknown section(s) {unknown}; use [model] and [train]"
        )
    sections = {name: dict(document.get(name) or {}) for name in ("model", "train")}
    for name, section in sections.items():
        if not isinstance(section, dict):
            raise QuillError(f"config file {path}: [{name}] must be a table of key = value")
    preset = sections["model"].pop("preset", None)
    if preset is not None:
        if preset not in MODEL_PRESETS:
            raise QuillError(
                f"config file {path}: unknown model preset {preset!r}; "
                f"choose from {sorted(MODEL_PRESETS)}"
            )
        sections["model"] = {**MODEL_PRESETS[preset], **sections["model"]}
    return sections


def build_configs(
    model: dict[str, Any] | None = None, train: dict[str, Any] | None = None
) -> tuple[ModelConfig, TrainConfig]:
    """Build and validate both configs from plain dicts (the merged file and overrides).

    ``vocab_size`` may be absent from ``model``: the trainer sets it from the tokenizer.
    """
    model_cfg = ModelConfig.from_dict(dict(model or {}))
    train_cfg = TrainConfig.from_dict(dict(train or {}))
    return model_cfg, train_cfg


MODEL_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(ModelConfig))
TRAIN_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(TrainConfig))
assert not set(MODEL_FIELDS) & set(TRAIN_FIELDS), "model and train fields must not collide"
