"""Everything a resumed run needs besides the weights: random states and ``train_state.pt``.

``train_state.pt`` is read back with ``torch.load(weights_only=True)``, which refuses arbitrary
pickled objects, so it holds only tensors, numbers, strings, lists and dicts. The random-number
generators of Python, NumPy and PyTorch are converted to that form here.

The file is self-contained: it carries the model weights next to the optimiser state, so one
atomic rename makes a consistent snapshot. (Two files written one after the other, weights then
optimiser, would disagree if the process were killed between the renames.)
``model.safetensors`` beside it is the same weights in the safe, portable format for users.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from quillgpt.checkpoint import atomic_write
from quillgpt.errors import CheckpointError

TRAIN_STATE_FILE = "train_state.pt"
FORMAT_VERSION = 1


def capture_rng_state() -> dict[str, Any]:
    """Return the states of Python's, NumPy's and PyTorch's global generators as plain data."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": {
            "version": py_version,
            "state": torch.tensor(py_state, dtype=torch.int64),
            "gauss": py_gauss,
        },
        "numpy": {
            "name": np_name,
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if hasattr(torch, "xpu") and torch.xpu.is_available():
        state["xpu"] = torch.xpu.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put the generators back in the state :func:`capture_rng_state` returned."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state(
        (npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
         npy["gauss"])
    )  # fmt: skip
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "xpu" in state and hasattr(torch, "xpu") and torch.xpu.is_available():
        torch.xpu.set_rng_state_all(state["xpu"])


def save_train_state(run_dir: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``run_dir/train_state.pt`` atomically.

    Raises:
        CheckpointError: if the file cannot be written; the previous one is left in place.
    """
    payload = {"format_version": FORMAT_VERSION, **state}
    try:
        atomic_write(run_dir / TRAIN_STATE_FILE, lambda tmp: torch.save(payload, tmp))
    except OSError as exc:
        raise CheckpointError(
            f"could not write {run_dir / TRAIN_STATE_FILE}: {exc.strerror or exc}; free disk "
            "space or fix permissions (the previous checkpoint is unchanged)"
        ) from exc


def load_train_state(run_dir: Path) -> dict[str, Any]:
    """Read ``run_dir/train_state.pt`` with ``weights_only=True`` (no arbitrary unpickling).

    Raises:
        CheckpointError: if the file is missing, corrupt, or from another format version.
    """
    path = run_dir / TRAIN_STATE_FILE
    if not path.is_file():
        raise CheckpointError(
            f"cannot resume: no {TRAIN_STATE_FILE} in {run_dir}; start a new run without --resume"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types for a damaged file
        raise CheckpointError(
            f"cannot resume: {path} is unreadable ({exc}); it may be truncated or corrupt"
        ) from exc
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"cannot resume: {path} is not a train state of format {FORMAT_VERSION}"
        )
    return state
