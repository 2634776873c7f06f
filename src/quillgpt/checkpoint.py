"""Safe checkpoints: weights in ``safetensors``, configuration in JSON, atomic writes.

A checkpoint directory holds ``model.safetensors`` (tensors only: loading it cannot execute
code, unlike a pickle) and ``config.json`` (``{"model": {...}, ...}``; the trainer adds its own
sections). The model configuration is also stored inside the safetensors header, so a weights
file is self-describing and a weights/config mismatch is detected instead of silently loaded.

Every file is written to a temporary name in the same directory and renamed over the old one:
``os.replace`` is atomic, so a crash mid-save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from quillgpt.config import ModelConfig
from quillgpt.errors import CheckpointError, QuillError
from quillgpt.model.decoder import DecoderLM

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
_CONFIG_METADATA_KEY = "quillgpt_model_config"
_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` and atomically rename the result to ``path``.

    The temporary file lives in the destination directory (a rename is only atomic within one
    file system). If ``write`` raises, the temporary file is removed and ``path`` is untouched.
    The result gets the permissions of an ordinary new file (``0o666`` less the umask), not the
    owner-only mode that ``mkstemp`` gives its temporary files.
    """
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(text))


def check_new_directory(path: str | Path) -> Path:
    """Return ``path`` if it is free or an empty directory, else raise :class:`QuillError`."""
    path = Path(path)
    if path.is_file() or (path.is_dir() and any(path.iterdir())):
        raise QuillError(f"{path} already exists; remove it or choose another output directory")
    return path


def write_new_directory(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(staging_dir)`` and rename the result to ``path``, which must not hold files.

    The staging directory sits beside ``path`` and is removed if ``write`` fails, so a failed
    export or import leaves nothing at ``path``.

    Raises:
        QuillError: if ``path`` is a file or a non-empty directory (nothing is overwritten).
    """
    path = check_new_directory(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        write(staging)
        os.chmod(staging, 0o777 & ~_UMASK)  # mkdtemp makes it private; give the usual mode
        if path.is_dir():
            path.rmdir()  # empty, as checked above
        os.replace(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return path


def save_checkpoint(
    model: DecoderLM,
    path: str | Path,
    tokenizer: Any = None,
    *,
    extra_config: dict[str, Any] | None = None,
) -> Path:
    """Save ``model`` into directory ``path`` (created if needed); return the directory.

    Args:
        model: the model to save (any device or dtype; weights are written as they are).
        path: checkpoint directory.
        tokenizer: optional ``tokenizers.Tokenizer`` (anything with ``.save(path)``) or the path of
            a ``tokenizer.json`` to copy; stored as ``tokenizer.json``.
        extra_config: extra top-level sections for ``config.json`` (e.g. ``{"train": {...}}``).

    Raises:
        CheckpointError: if the directory cannot be written (the previous files are kept).
    """
    return save_state_dict(
        model.state_dict(), model.config, path, tokenizer, extra_config=extra_config
    )


def save_state_dict(
    state_dict: dict[str, torch.Tensor],
    config: ModelConfig,
    path: str | Path,
    tokenizer: Any = None,
    *,
    extra_config: dict[str, Any] | None = None,
) -> Path:
    """Save the weights ``state_dict`` of a model of shape ``config`` like :func:`save_checkpoint`.

    For weights that exist only as a state dict (gathered from FSDP shards on rank 0).
    """
    path = Path(path)
    state = {name: t.detach().contiguous() for name, t in state_dict.items()}
    if config.tie_weights:
        state.pop("lm_head.weight", None)  # the same tensor as tok_emb.embed.weight
    config_json = json.dumps(config.to_dict(), sort_keys=True)
    metadata = {"format": "pt", _CONFIG_METADATA_KEY: config_json}
    document = {"model": config.to_dict(), **(extra_config or {})}
    write_checkpoint_files(path, state, metadata, document, tokenizer)
    return path


def write_checkpoint_files(
    path: Path,
    tensors: dict[str, torch.Tensor],
    metadata: dict[str, str],
    document: dict[str, Any],
    tokenizer: Any = None,
) -> None:
    """Write ``model.safetensors``, ``config.json`` and the tokenizer into ``path``, atomically.

    Shared by fp32 and quantized checkpoints. ``tokenizer`` is as in :func:`save_checkpoint`.

    Raises:
        CheckpointError: if the directory cannot be written (the previous files are kept).
    """
    try:
        path.mkdir(parents=True, exist_ok=True)
        atomic_write(path / WEIGHTS_FILE, lambda tmp: save_file(tensors, str(tmp), metadata))
        atomic_write_text(path / CONFIG_FILE, json.dumps(document, indent=2) + "\n")
        if tokenizer is not None:
            if isinstance(tokenizer, (str, Path)):
                source = Path(tokenizer)
                atomic_write(path / TOKENIZER_FILE, lambda tmp: shutil.copyfile(source, tmp))
            else:
                atomic_write(path / TOKENIZER_FILE, lambda tmp: tokenizer.save(str(tmp)))
    except OSError as exc:
        raise CheckpointError(
            f"could not write checkpoint to {path}: {exc.strerror or exc}; "
            "free disk space or fix permissions (the previous checkpoint is unchanged)"
        ) from exc


def check_weight_names(expected: set[str], found: set[str], weights_path: Path) -> None:
    """Refuse a weights file whose tensor names are not those its config's model has.

    Raises:
        CheckpointError: naming (up to five of) the missing and the unexpected tensors.
    """
    missing, unexpected = sorted(expected - found), sorted(found - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"{weights_path} does not match its config: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )


def read_config(path: str | Path) -> dict[str, Any]:
    """Return the parsed ``config.json`` of the checkpoint directory ``path``.

    Raises:
        CheckpointError: if there is none, or it is not a JSON object (another program's file,
            or a damaged one).
    """
    config_path = Path(path) / CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointError(f"no {CONFIG_FILE} in {path}: is this a quillgpt checkpoint?")
    try:
        document = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{config_path} is not valid JSON ({exc}); re-save it") from exc
    if not isinstance(document, dict):
        raise CheckpointError(
            f"{config_path} is not a quillgpt checkpoint's config (not a JSON object); give "
            "the folder of a quillgpt run or checkpoint"
        )
    return document


def model_section(path: str | Path, document: dict[str, Any]) -> dict[str, Any]:
    """Return the ``model`` section of checkpoint ``path``'s config ``document``.

    Raises:
        CheckpointError: if it has none (another program's ``config.json``); a Hugging Face
            model folder is named as such, with the way to convert it.
    """
    model = document.get("model")
    if isinstance(model, dict) and "vocab_size" in model:
        return model
    where = Path(path) / CONFIG_FILE
    if "model_type" in document:
        raise CheckpointError(
            f"{where} is a Hugging Face transformers config, not a quillgpt one; convert the "
            "folder with quill import-hf"
        )
    raise CheckpointError(
        f"{where} is not a quillgpt checkpoint's config (it has no model section); give the "
        "folder of a quillgpt run or checkpoint"
    )


def load_checkpoint(
    path: str | Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
) -> DecoderLM:
    """Rebuild the :class:`DecoderLM` saved in directory ``path``.

    Only tensors and JSON are read; nothing is unpickled. The model is returned in eval mode.

    Raises:
        CheckpointError: if a file is missing, truncated or corrupt, or if the weights do not
            match the configuration.
    """
    path = Path(path)
    weights_path = path / WEIGHTS_FILE
    if not weights_path.is_file():
        raise CheckpointError(f"no {WEIGHTS_FILE} in {path}: is this a quillgpt checkpoint?")
    config = ModelConfig.from_dict(model_section(path, read_config(path)))
    try:
        with safe_open(str(weights_path), framework="pt", device=str(device)) as f:
            stored_config = (f.metadata() or {}).get(_CONFIG_METADATA_KEY)
            state = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{weights_path} is unreadable (truncated or corrupt: {exc}); "
            "use another checkpoint (e.g. best/) or re-save it"
        ) from exc
    if stored_config is not None and json.loads(stored_config) != config.to_dict():
        raise CheckpointError(
            f"{path / CONFIG_FILE} does not describe the weights in {weights_path}; "
            "the files come from different models"
        )
    model = DecoderLM(config)
    expected = set(model.state_dict())
    if config.tie_weights:
        expected.discard("lm_head.weight")
    check_weight_names(expected, set(state), weights_path)
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise CheckpointError(f"{weights_path} has tensors of the wrong shape: {exc}") from exc
    model.to(device=device, dtype=dtype)
    return model.eval()
