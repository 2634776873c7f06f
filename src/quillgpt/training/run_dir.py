"""The run directory, and the resume state in ``train_state.pt``.

::

    config.json          {"model": ..., "train": ..., "data": ..., "state": {"step": ...}}
    tokenizer.json
    model.safetensors    latest weights (what ``quill generate`` loads)
    train_state.pt       everything for --resume, weights included (one atomic file)
    best/                weights with the lowest validation loss so far
    metrics.jsonl, loss.png, samples.txt      (written by :mod:`quillgpt.training.report`)

``train_state.pt`` is read back with ``torch.load(weights_only=True)``, which refuses arbitrary
pickled objects, so it holds only tensors, numbers, strings, lists and dicts (the random-number
generators are converted to that form by :mod:`~quillgpt.training.rng`). It carries the model
weights next to the optimiser state, so one atomic rename makes a consistent snapshot (two files
renamed one after the other would disagree if the process were killed between the renames).
``model.safetensors`` beside it is the same weights in the safe, portable format for users.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import pickle
import shutil
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import torch

from quillgpt.checkpoint import (
    CONFIG_FILE,
    TOKENIZER_FILE,
    atomic_write,
    atomic_write_text,
    save_state_dict,
)
from quillgpt.config import ModelConfig
from quillgpt.errors import CheckpointError, QuillError
from quillgpt.training.config import TrainConfig
from quillgpt.training.optim import MuonAndAdamW
from quillgpt.training.parallel import Parallel
from quillgpt.training.precision import Precision
from quillgpt.training.rng import capture_rng_state, restore_rng_state

if TYPE_CHECKING:
    from torch import nn

    from quillgpt.data import PreparedData
    from quillgpt.evaluation import EvalResult

TRAIN_STATE_FILE = "train_state.pt"
BEST_DIR = "best"
LOCK_FILE = ".lock"
FORMAT_VERSION = 2  # 2: the loop's counters are one "loop" dict; no scheduler state


class RunDir:
    """One run directory: what it holds, and how it is read and written (rank 0 writes).

    It knows what the run is (both configs, the data, the processes, the precision), so that
    ``config.json`` and ``train_state.pt`` always describe it fully.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        model_config: ModelConfig,
        data: PreparedData,
        par: Parallel,
        precision: Precision,
    ) -> None:
        self.path = Path(cfg.out_dir)
        self.cfg, self.model_config, self.data = cfg, model_config, data
        self.par, self.precision = par, precision
        self.tokenizer_sha256 = str(data.meta["tokenizer"]["sha256"])

    @functools.cached_property
    def tokenizer(self) -> Any:
        """The run's ``tokenizers.Tokenizer`` (read once, for the samples)."""
        return self.data.load_tokenizer()

    def open(self, *, resume: bool) -> dict[str, Any] | None:
        """Refuse to overwrite a run; with ``resume``, load and check its ``train_state.pt``.

        Returns the saved state, or ``None`` for a fresh start (also when there is nothing to
        resume yet: a run killed before its first checkpoint starts again).

        Raises:
            QuillError: the directory holds a run and ``resume`` is off, or it holds files of
                another program (:func:`check_out_dir`).
            CheckpointError: the saved run has another model config, tokenizer or optimiser, or
                is damaged.
        """
        check_out_dir(self.path, resume=resume)
        if not resume or not (self.path / TRAIN_STATE_FILE).exists():
            return None
        saved = load_train_state(self.path)
        if saved.get("tokenizer_sha256") != self.tokenizer_sha256:
            raise CheckpointError(
                f"cannot resume {self.path}: the tokenizer differs from the one it was trained "
                "with; use the same data and tokenizer options as the original run"
            )
        ours, theirs = self.model_config.to_dict(), saved.get("model_config", {})
        diff = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
        if diff:
            raise CheckpointError(
                f"cannot resume {self.path}: the model config differs from the checkpoint's in "
                f"{', '.join(diff)}; resume without model options (or with the same ones)"
            )
        optimizer = saved.get("train_config", {}).get("optimizer", "adamw")  # older: adamw
        if optimizer != self.cfg.optimizer:  # the saved state is another optimiser's
            raise CheckpointError(
                f"cannot resume {self.path}: it was trained with --optimizer {optimizer}, not "
                f"{self.cfg.optimizer}; resume with --optimizer {optimizer}"
            )
        return saved

    def document(self, loop: Any) -> dict[str, Any]:
        """The contents of ``config.json``: both configs, the data, and where the run stands."""
        data = self.data
        return {
            "model": self.model_config.to_dict(),
            "train": self.cfg.to_dict(),
            "data": {
                "prepared": str(data.directory),
                "tokenizer_sha256": self.tokenizer_sha256,
                "val_tokens": data.val_tokens,
                "val_bytes": data.val_bytes,
            },
            "state": {
                **asdict(loop),
                "world_size": self.par.world_size,
                "precision": self.precision.name,
            },
        }

    def write_config(self, loop: Any) -> None:
        """Write ``config.json`` and ``tokenizer.json``; sweep away leftovers of killed writes."""
        if not self.par.is_main:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        for stale in [*self.path.glob(".*.tmp"), *self.path.glob(f"{BEST_DIR}/.*.tmp")]:
            stale.unlink(missing_ok=True)  # a half-written file of a process that was killed
        atomic_write_text(self.path / CONFIG_FILE, json.dumps(self.document(loop), indent=2))
        shutil.copyfile(self.data.tokenizer_path, self.path / TOKENIZER_FILE)

    def save(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | MuonAndAdamW,
        loop: Any,
        *,
        final: bool,
        log: Callable[[str], None],
    ) -> None:
        """Checkpoint: ``train_state.pt``, then ``model.safetensors`` and ``config.json``.

        The resume state is the loop's counters (``loop``), the optimiser and grad-scaler
        states, every rank's random streams and the weights; :meth:`restore` puts it back. A
        failed periodic save is logged and training goes on (the previous checkpoint is
        intact); a failed ``final`` save raises :class:`~quillgpt.errors.CheckpointError`.
        """
        par = self.par
        model_state, optimizer_state = par.full_state_dicts(model, optimizer)  # FSDP: collective
        rng = par.gather(capture_rng_state())
        payload = {
            "format_version": FORMAT_VERSION,
            "loop": asdict(loop),
            "optimizer": optimizer_state,
            "scaler": self.precision.scaler.state_dict(),
            "rng": rng,
            "world_size": par.world_size,
            "model_config": self.model_config.to_dict(),
            "train_config": self.cfg.to_dict(),
            "tokenizer_sha256": self.tokenizer_sha256,
            "model": model_state,
        }
        error: CheckpointError | None = None
        if par.is_main:
            try:
                self._write_train_state(payload)
                self._save_weights(self.path, model_state, self.document(loop))
            except CheckpointError as exc:
                error = exc
        par.barrier()
        if error is not None and final:
            raise error
        if error is not None:
            log(f"warning: checkpoint at step {loop.step} failed: {error}")

    def restore(
        self,
        saved: dict[str, Any],
        model: nn.Module,
        optimizer: torch.optim.Optimizer | MuonAndAdamW,
    ) -> dict[str, Any]:
        """Load what :meth:`save` saved into the model, optimiser, scaler and random streams.

        Returns the loop's counters. Resumed on another number of processes, the random streams
        start anew (the data order and dropout masks then differ from an uninterrupted run).
        """
        self.par.load_full_state_dicts(model, optimizer, saved["model"], saved["optimizer"])
        self.precision.scaler.load_state_dict(saved["scaler"])
        if len(saved["rng"]) == self.par.world_size:
            restore_rng_state(saved["rng"][self.par.rank])
        return saved["loop"]

    def save_best(
        self, model: nn.Module, loop: Any, result: EvalResult, *, log: Callable[[str], None]
    ) -> None:
        """Write ``best/``: weights, config with a ``best`` section, tokenizer.

        A failure is logged, not fatal (training goes on; ``best/`` keeps its last good copy).
        """
        model_state, _ = self.par.full_state_dicts(model, None)  # with FSDP: a collective
        if not self.par.is_main:
            return
        document = self.document(loop)
        document["best"] = {"step": loop.step, "val_loss": result.loss, "val_bpb": result.bpb}
        try:
            self._save_weights(self.path / BEST_DIR, model_state, document)
        except CheckpointError as exc:
            log(f"warning: could not update {BEST_DIR}/: {exc}")

    def _write_train_state(self, payload: dict[str, Any]) -> None:
        path = self.path / TRAIN_STATE_FILE
        try:
            atomic_write(path, lambda tmp: torch.save(payload, tmp))
        except OSError as exc:
            raise CheckpointError(
                f"could not write {path}: {exc.strerror or exc}; free disk space or fix "
                "permissions, then continue with --resume (the previous checkpoint is unchanged)"
            ) from exc

    def _save_weights(
        self, path: Path, model_state: dict[str, Any], document: dict[str, Any]
    ) -> None:
        extra = {k: v for k, v in document.items() if k != "model"}
        save_state_dict(
            model_state, self.model_config, path, self.data.tokenizer_path, extra_config=extra
        )


@contextlib.contextmanager
def run_lock(path: str | Path) -> Iterator[None]:
    """Hold ``path/.lock`` while a run trains there; refuse if another process holds it.

    The lock is an ``flock`` on an open file: the system releases it when the process ends,
    however it ends, so the lock of a killed run never blocks ``--resume``. The file is removed
    when the block ends (while still locked), and a folder this call created is removed again
    if the block fails before writing anything into it: a refused run leaves no trace.

    Raises:
        QuillError: another live process is training in ``path``.
    """
    path = Path(path)
    created = _make_dirs(path)
    try:
        handle = _acquire(path / LOCK_FILE)
    except BaseException:
        _remove_empty(created)
        raise
    with handle:
        try:
            yield
        except BaseException:
            _release(handle, path / LOCK_FILE)
            _remove_empty(created)
            raise
        _release(handle, path / LOCK_FILE)


def _make_dirs(path: Path) -> list[Path]:
    """Create ``path`` and its missing parents; return those created, deepest first."""
    if path.exists() and not path.is_dir():
        raise QuillError(f"--out_dir {path} is a file; choose a folder for the run")
    missing = [p for p in (path, *path.parents) if not p.exists()]
    path.mkdir(parents=True, exist_ok=True)
    return missing


def _acquire(lock: Path) -> IO[str]:
    """Open and ``flock`` ``lock``; the open file, or :class:`QuillError` naming the holder.

    A run that ends removes its lock file: a process that opened the old file just before must
    not hold a lock on a file nobody else sees, so it checks it locked the file at that path.
    """
    while True:
        handle = open(lock, "a+", encoding="utf-8")  # noqa: SIM115 - returned open
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise QuillError(
                f"{lock.parent} is in use: {holder} is training there; wait for it to end (or "
                "stop it), or choose another --out_dir"
            ) from None
        try:
            if os.stat(lock).st_ino == os.fstat(handle.fileno()).st_ino:
                break
        except FileNotFoundError:
            pass
        handle.close()  # locked a file that was removed meanwhile: lock the new one
    handle.seek(0)
    handle.truncate()
    handle.write(f"process {os.getpid()}")
    handle.flush()
    return handle


def _release(handle: IO[str], lock: Path) -> None:
    """Remove the lock file, then unlock it (in that order: no one can lock a removed file)."""
    lock.unlink(missing_ok=True)
    fcntl.flock(handle, fcntl.LOCK_UN)


def _remove_empty(created: list[Path]) -> None:
    """Remove the folders of ``created`` (deepest first) that are still empty."""
    for folder in created:
        with contextlib.suppress(OSError):
            folder.rmdir()  # fails, as it should, on a folder that holds something


def check_out_dir(path: str | Path, *, resume: bool) -> None:
    """Refuse a run directory that cannot take this run, before anything is written there.

    A new or empty folder takes any run; a folder whose ``config.json`` is a quillgpt run's
    takes ``--resume`` (or a fresh start, if it has no ``train_state.pt`` yet). Anything else
    (a file, another program's folder, a plain checkpoint) would have files overwritten.

    Raises:
        QuillError: saying what the folder is and what to choose instead.
    """
    path = Path(path)
    if not path.exists():
        return
    if not path.is_dir():
        raise QuillError(f"--out_dir {path} is a file; choose a folder for the run")
    if not any(not p.name.startswith(".") for p in path.iterdir()):
        return  # empty, or only the leftovers of a killed write (swept when the run starts)
    if not is_run_config(path / CONFIG_FILE):
        what = (
            f"its {CONFIG_FILE} is not a quillgpt training run's"
            if (path / CONFIG_FILE).exists()
            else f"it holds files but no {CONFIG_FILE}"
        )
        raise QuillError(
            f"--out_dir {path} is not a quillgpt run directory ({what}), and training would "
            "write over its files; choose a new or empty folder"
        )
    if not resume and (path / TRAIN_STATE_FILE).exists():
        raise QuillError(
            f"{path} already holds a run (train_state.pt); pass --resume to continue it, or "
            "choose another --out_dir"
        )


def is_run_config(path: Path) -> bool:
    """Whether ``path`` is the ``config.json`` of a quillgpt training run (model and train)."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(document, dict) and all(
        isinstance(document.get(key), dict) for key in ("model", "train")
    )


def check_resume_data(path: str | Path, cfg: TrainConfig) -> None:
    """Refuse ``--resume`` with other data or tokenizer options than the saved run's.

    Every option that decides the token ids (:data:`~quillgpt.data.TOKEN_FIELDS`: the corpus,
    its configuration, splits, text column, held-out share and seed, the tokenizer and its
    size) must be the run's. Checked before the data is prepared, so that a wrong
    ``--tokenizer`` costs nothing and builds no token files; the tokenizer's hash in
    ``train_state.pt`` is checked again after.

    Raises:
        CheckpointError: naming the option, the run's value and the one given.
    """
    from quillgpt.data import TOKEN_FIELDS, token_options

    path = Path(path)
    if not (path / TRAIN_STATE_FILE).exists() or not is_run_config(path / CONFIG_FILE):
        return
    saved = token_options(json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))["train"])
    given = token_options(cfg.to_dict())
    for key in TOKEN_FIELDS:
        if not _same_value(saved[key], given[key]):
            run_value, new_value = (
                "none" if value is None else value for value in (saved[key], given[key])
            )
            raise CheckpointError(
                f"cannot resume {path}: it was trained with --{key} {run_value}, not "
                f"{new_value}; resume without --{key} (or with the run's own value)"
            )


def _same_value(saved: Any, given: Any) -> bool:
    """Equal, or two spellings of one existing path (``corpus`` and ``/abs/corpus``)."""
    if saved == given:
        return True
    if not isinstance(saved, str) or not isinstance(given, str):
        return False
    first, second = Path(saved).expanduser(), Path(given).expanduser()
    return first.exists() and second.exists() and first.resolve() == second.resolve()


def load_train_state(run_dir: str | Path) -> dict[str, Any]:
    """Read ``run_dir/train_state.pt`` (``weights_only=True``: no arbitrary unpickling).

    Raises:
        CheckpointError: if the file is missing, corrupt, or from another format version.
    """
    path = Path(run_dir) / TRAIN_STATE_FILE
    if not path.is_file():
        raise CheckpointError(
            f"cannot resume: no {TRAIN_STATE_FILE} in {run_dir}; start a new run without --resume"
        )
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types for a damaged file
        raise CheckpointError(
            f"cannot resume: {path} is truncated or corrupt ({_load_failure(path, exc)}); "
            "restore it from a copy, or start a new run with another --out_dir (nothing was "
            "changed in this one)"
        ) from exc
    if not isinstance(saved, dict) or saved.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"cannot resume: {path} is not a train state of format {FORMAT_VERSION} (an older "
            "quillgpt wrote it?); start a new run, or train on from its weights with "
            "train(..., model=load_checkpoint(run))"
        )
    return saved


def _load_failure(path: Path, exc: Exception) -> str:
    """``torch.load``'s reason in a few words: its messages run to paragraphs."""
    if path.stat().st_size == 0:
        return "the file is empty"
    # torch.save writes a zip archive: other bytes fail in whichever step meets them first, and
    # weights_only=True refuses a pickle of more than tensors with an UnpicklingError
    with open(path, "rb") as f:
        is_zip = f.read(4) == b"PK\x03\x04"  # a truncated archive still starts like one
    if not is_zip or isinstance(exc, pickle.UnpicklingError):
        return "not a file torch.save wrote, or one holding more than tensors and numbers"
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    first = first.split(". ", 1)[0].rstrip(".")
    return first[:160] or type(exc).__name__
