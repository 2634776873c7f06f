"""Training configuration: the :class:`TrainConfig` dataclass and config files.

A run is described by two typed dataclasses: :class:`~quillgpt.config.ModelConfig` (the
network's shape) and :class:`TrainConfig` (everything else: data, optimiser, schedule, budget,
precision, checkpoints; its data options are :class:`~quillgpt.data.DataOptions`, shared with
``quill prepare``). Both come from, in increasing priority:

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

Both configs are validated the same way (:func:`quillgpt.config.load_dataclass`): a wrong type,
an impossible value or an unknown key in the file or on the command line is one line naming the
field and where it came from.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field
from pydantic.dataclasses import dataclass

from quillgpt.config import MODEL_PRESETS, STRICT, ModelConfig, Positive, load_dataclass
from quillgpt.data.options import DataOptions
from quillgpt.errors import ConfigError, QuillError

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
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
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


def check_device_name(name: str) -> str:
    """Return ``name`` if it is ``auto|cpu|cuda|mps|xpu``, optionally ``:N``; else raise.

    Checked when the config is built, so ``cpu:x`` is one line naming the option rather than
    torch's ``RuntimeError`` at the first use. Whether the device exists here is checked later,
    by :func:`quillgpt.device.resolve_device`.

    Raises:
        ValueError: for any other text.
    """
    from quillgpt.device import DEVICE_CHOICES

    kind, sep, index = name.partition(":")
    if kind not in DEVICE_CHOICES or (sep and (kind == "auto" or not index.isdigit())):
        raise ValueError(
            f"unknown device {name!r}; choose one of {', '.join(DEVICE_CHOICES)}, "
            "or cuda:N / xpu:N for one of several GPUs"
        )
    return name


def require_budget(cfg: TrainConfig) -> None:
    """Refuse a run that could never end: neither ``max_steps`` nor ``max_time`` is set.

    Raises:
        QuillError: saying which option to add.
    """
    if cfg.max_steps is None and cfg.max_time is None:
        raise QuillError("set max_steps or max_time (e.g. --max_time 5m) so training can end")


Duration = Annotated[float | None, BeforeValidator(parse_duration)]
DeviceName = Annotated[str, AfterValidator(check_device_name)]
Count = Annotated[int, Field(ge=0)]
Rate = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Beta = Annotated[float, Field(ge=0, lt=1)]


@dataclass(config=STRICT)
class TrainConfig(DataOptions):
    """Everything about a training run that is not the model's shape (documented per field).

    The first fields are the data options, inherited from
    :class:`~quillgpt.data.DataOptions`: the same options as ``quill prepare``'s, so the same
    values name the same cached token files.
    """

    out_dir: str = "runs/default"
    """The run directory: checkpoints, metrics.jsonl, loss.png, samples.txt."""
    init_from: str | None = None
    """Start from the weights of a ``transformers`` GPT-2, GPT-NeoX or Arcee model: a
    ``save_pretrained`` directory (or, online, a hub name such as ``gpt2``). The model's shape
    and its ``tokenizer.json`` come from there; of the model options only ``dropout``,
    ``attention`` and a smaller ``block_size`` may be set."""
    batch_size: Positive = 32
    """Sequences per micro-batch on each process."""
    grad_accum: Positive = 1
    """Micro-batches accumulated per optimiser step. The global batch is ``batch_size *
    grad_accum * world_size`` sequences of ``block_size`` tokens."""
    max_steps: Positive | None = None
    """Stop after this many optimiser steps (the schedule reaches its floor at the last one)."""
    max_time: Duration = None
    """Training-time budget, e.g. ``5m``, ``1h30m``, ``300`` (seconds). Compilation, periodic
    evaluation and checkpoints count; the final full evaluation does not. The schedule follows
    the fraction of the budget spent (docs/training.md)."""
    lr: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 1e-3
    """Peak learning rate of AdamW."""
    min_lr_ratio: Annotated[float, Field(ge=0, le=1)] = 0.1
    """The schedule's floor as a fraction of ``lr``."""
    warmup_steps: Count = 100
    """Steps of linear warm-up from ``lr / warmup_steps`` to ``lr``."""
    schedule: Literal["cosine", "linear", "constant", "wsd"] = "cosine"
    """Decay after warm-up: ``cosine``, ``linear`` (both to the floor at the end of the budget),
    ``constant``, or ``wsd`` (warm-up, stable, decay: the peak rate until the last ``cooldown``
    of the budget, then a line to the floor)."""
    cooldown: Annotated[float, Field(gt=0, le=1)] = 0.4
    """With ``schedule=wsd``: the fraction of the budget (steps or time) spent decaying to the
    floor at the end. nanochat decays over the last 0.65 of its runs, the modded-nanogpt
    speedrun over 0.4 to 0.6."""
    weight_decay: Rate = 0.1
    """Decoupled weight decay of weight matrices only (not of biases, norms or embeddings):
    each step multiplies them by ``1 - rate * weight_decay``, with the rate of their optimiser
    (AdamW's, or Muon's with ``optimizer=muon``)."""
    beta1: Beta = 0.9
    """AdamW first-moment decay."""
    beta2: Beta = 0.95
    """AdamW second-moment decay."""
    eps: Rate = 1e-8
    """AdamW epsilon."""
    grad_clip: Rate = 1.0
    """Clip the global gradient norm to this value (0 disables clipping; the norm is logged
    either way)."""
    optimizer: Literal["adamw", "muon"] = "adamw"
    """``adamw`` for every parameter, or ``muon``: Muon (momentum orthogonalised by
    Newton-Schulz) for the weight matrices of the decoder blocks and AdamW (``lr``) for the
    embeddings, head, norms and biases (docs/training.md)."""
    muon_lr: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 0.02
    """Peak learning rate of Muon (``optimizer=muon``), on the same schedule as ``lr``; scaled
    per matrix by ``sqrt(max(1, rows / cols))``. 0.02 is the default of Keller Jordan's Muon and
    nanochat's rate for its matrices, with the same scaling."""
    muon_momentum: Beta = 0.95
    """Muon's Nesterov momentum after its warm-up."""
    muon_momentum_warmup: Count = 300
    """Steps over which Muon's momentum rises linearly from 0.85 to ``muon_momentum`` (as in the
    modded-nanogpt speedrun and nanochat); 0 starts at ``muon_momentum``."""
    muon_dtype: Literal["auto", "bf16", "fp32"] = "auto"
    """Dtype of Muon's Newton-Schulz orthogonalisation: ``auto`` (bf16 where the device computes
    it natively: GPUs, CPUs with AVX-512 BF16 or AMX; else fp32, as emulated bf16 is hundreds of
    times slower), ``bf16`` or ``fp32`` (slower, but two equivalent runs, such as one process and
    two, then agree to fp32 rounding rather than to bf16's)."""
    optimizer_impl: Literal["auto", "fused", "foreach", "for-loop"] = "auto"
    """AdamW kernel: ``auto`` (fused, or foreach where fused is unavailable and for
    FSDP-sharded parameters), ``fused``, ``foreach`` or ``for-loop``."""
    eval_interval: Positive = 250
    """Evaluate every this many steps (and at the end)."""
    eval_tokens: Count = 65536
    """Size of the fixed validation sample used during training, in tokens: ``eval_tokens //
    block_size`` windows evenly spaced over the validation split (0 = the whole split)."""
    final_eval: bool = True
    """Evaluate on the whole validation split after training (not counted in ``max_time``);
    this is the figure to report."""
    log_interval: Positive = 10
    """Write a metrics line every this many steps."""
    ckpt_interval: Count = 500
    """Save model.safetensors and train_state.pt every this many steps (0 = only at the end and
    on interruption)."""
    save_best: bool = True
    """Keep ``best/`` with the weights of the lowest validation loss."""
    num_samples: Count = 2
    """Generated samples written to samples.txt at each evaluation."""
    sample_tokens: Count = 200
    """Length of each sample, in tokens."""
    sample_prompt: str = "\n"
    """Text the samples start from."""
    sample_temperature: Rate = 0.8
    """Sampling temperature of the samples."""
    device: DeviceName = "auto"
    """``auto``, ``cpu``, ``cuda``, ``xpu`` or ``mps`` (or ``cuda:N``)."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """``auto`` (bf16 where the device computes it natively, fp16 with loss scaling on older
    GPUs, else fp32), ``fp32``, ``bf16`` or ``fp16``."""
    compile: Literal["auto", "on", "off"] = "auto"
    """``torch.compile`` the model: ``on``, ``off``, or ``auto`` (on where a compiler toolchain
    is present). If compiling fails on the first step, training goes on eagerly with a
    warning."""
    gradient_checkpointing: bool = False
    """Recompute each block's activations in the backward pass (much less memory, about a third
    more compute)."""
    parallel: Literal["ddp", "fsdp"] = "ddp"
    """With several processes (``torchrun``): ``ddp`` (replicated model) or ``fsdp`` (FSDP2
    ``fully_shard``: parameters, gradients and optimiser state sharded)."""
    max_nonfinite: Positive = 10
    """Stop after this many optimiser steps in a row with a non-finite loss or gradient (each one
    is skipped and counted)."""
    seed: Count = 1337
    """Seed of initialisation, data order and dropout."""
    deterministic: bool = False
    """Ask PyTorch for deterministic kernels (slower on GPUs)."""
    threads: Positive | None = None
    """CPU threads for PyTorch. Default: one per core, adapted to the machine's load while a CPU
    run trains (fewer while other jobs keep cores busy; docs/devices.md); a number fixes it."""
    tensorboard: bool = False
    """Also write TensorBoard event files to ``<out_dir>/tensorboard``."""
    progress: bool = True
    """Show a progress bar."""

    def to_dict(self) -> dict[str, Any]:
        """Return the configuration as a JSON-serialisable dict (``max_time`` in seconds)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "") -> TrainConfig:
        """Build a config from a dict (a config file's ``[train]`` table, a ``config.json``)."""
        return load_dataclass(cls, data, source=source)


def load_config_file(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read a TOML, YAML or JSON config file into ``{"model": {...}, "train": {...}}``.

    The format follows the file extension (``.toml``, ``.yaml``/``.yml``, ``.json``). A
    ``preset`` key in the model section expands to that :data:`~quillgpt.config.MODEL_PRESETS`
    entry, which the other model keys then override. Values are checked by
    :func:`build_configs`.

    Raises:
        QuillError: if the file is missing, unparsable, or not made of ``[model]`` and
            ``[train]`` tables.
    """
    path = Path(path)
    if not path.is_file():
        raise QuillError(f"config file {path} does not exist; see configs/ for presets")
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".yaml", ".yml", ".json"):
        raise QuillError(f"config file {path} must end in .toml, .yaml, .yml or .json")
    try:
        text = path.read_text(encoding="utf-8")
        if suffix == ".toml":
            if sys.version_info >= (3, 11):
                import tomllib
            else:  # pragma: no cover - exercised on Python 3.10 only
                import tomli as tomllib
            document = tomllib.loads(text)
        elif suffix == ".json":
            document = json.loads(text)
        else:
            import yaml

            document = yaml.safe_load(text) or {}
    except Exception as exc:  # unreadable, not UTF-8, or each parser's own error type
        raise QuillError(f"could not parse config file {path}: {exc}") from exc
    if not isinstance(document, dict):
        raise QuillError(f"config file {path} must hold a table with [model] and [train]")
    unknown = sorted(map(str, set(document) - {"model", "train"}))
    if unknown:
        raise QuillError(
            f"config file {path} has unknown section(s) {unknown}; use [model] and [train]"
        )
    sections: dict[str, dict[str, Any]] = {}
    for name in ("model", "train"):
        section = document.get(name) or {}
        if not isinstance(section, dict):
            raise QuillError(f"config file {path}: [{name}] must be a table of key = value")
        sections[name] = {str(key): value for key, value in section.items()}
    preset = sections["model"].pop("preset", None)
    if preset is not None:
        if not isinstance(preset, str) or preset not in MODEL_PRESETS:
            raise QuillError(
                f"config file {path}: unknown model preset {preset!r}; "
                f"choose from {sorted(MODEL_PRESETS)}"
            )
        sections["model"] = {**MODEL_PRESETS[preset], **sections["model"]}
    return sections


def build_configs(
    model: dict[str, Any] | None = None,
    train: dict[str, Any] | None = None,
    *,
    source: str = "",
    model_text: dict[str, str] | None = None,
    train_text: dict[str, str] | None = None,
) -> tuple[ModelConfig, TrainConfig]:
    """Build and validate both configs: typed values (from ``source``) and command-line text.

    ``vocab_size`` may be absent from ``model``: training sets it from the tokenizer.

    Raises:
        ConfigError: one line naming the field, ``source`` (or the ``--option``) and the fix.
    """
    return (
        load_dataclass(ModelConfig, model or {}, source=_section(source, "model"), text=model_text),
        load_dataclass(TrainConfig, train or {}, source=_section(source, "train"), text=train_text),
    )


def _section(source: str, name: str) -> str:
    return f"{source} [{name}]" if source else ""


MODEL_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(ModelConfig))
TRAIN_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(TrainConfig))
if set(MODEL_FIELDS) & set(TRAIN_FIELDS):  # one flat namespace of command-line options
    raise ConfigError("ModelConfig and TrainConfig fields must not share a name")
