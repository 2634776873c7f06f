"""Local corpora: text/json/parquet files or folders of them, and folders saved by ``datasets``.

:func:`load_files` reads ``.txt`` / ``.jsonl`` / ``.json`` / ``.parquet`` files (one format per
folder; each ``.txt`` file is one document), checking text files are UTF-8 first;
:func:`load_disk` reads a folder written by ``save_to_disk``. Both return the raw splits, before
:func:`~quillgpt.data.corpus.load_corpus` picks and normalises them.
"""

from __future__ import annotations

import codecs
from pathlib import Path
from typing import TYPE_CHECKING

from quillgpt.errors import DataError

if TYPE_CHECKING:
    from datasets import DatasetDict

LOCAL_BUILDERS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
"""``datasets`` builder for each local file suffix."""


def load_disk(source: str) -> DatasetDict:
    """Load a folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``."""
    from datasets import Dataset, DatasetDict, load_from_disk

    try:
        loaded = load_from_disk(str(Path(source).expanduser()))
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise DataError(f"could not load the saved dataset {source}: {exc}") from exc
    return DatasetDict(train=loaded) if isinstance(loaded, Dataset) else loaded


def load_files(source: str, cache_dir: Path) -> DatasetDict:
    """Load local text/json/parquet files with ``load_dataset(builder, data_files=...)``.

    ``datasets`` converts them to Arrow files under ``cache_dir``. Files with no bytes at all
    are refused first: there is nothing to learn from, and nothing needs converting to say so.
    """
    from datasets import load_dataset
    from datasets.exceptions import DatasetGenerationError

    path = Path(source).expanduser()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    files = [f for f in files if f.suffix.lower() in LOCAL_BUILDERS and not f.name.startswith(".")]
    if not files:
        raise DataError(f"no .txt, .jsonl, .json or .parquet files in {source}")
    builders = {LOCAL_BUILDERS[f.suffix.lower()] for f in files}
    if len(builders) > 1:
        raise DataError(f"{source} mixes file formats; put one format per folder")
    builder = builders.pop()
    if all(f.stat().st_size == 0 for f in files):
        raise DataError(f"{source} has no text (every file is empty); give files that hold text")
    if builder in ("text", "json"):
        for file in files:
            _check_utf8(file)
    options = {"sample_by": "document"} if builder == "text" else {}
    try:
        return load_dataset(
            builder,
            data_files={"train": [str(f) for f in files]},
            cache_dir=str(cache_dir),
            **options,
        )
    except (DatasetGenerationError, ValueError, OSError) as exc:
        cause = exc.__cause__ or exc
        raise DataError(f"could not read {source} as {builder}: {cause}") from exc


def _check_utf8(file: Path) -> None:
    """Raise :class:`DataError` naming the file and byte offset if ``file`` is not valid UTF-8."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    try:
        handle = open(file, "rb")  # noqa: SIM115 - closed by the with below
    except OSError as exc:
        raise DataError(
            f"cannot read {file}: {exc.strerror or exc}; check its permissions"
        ) from exc
    with handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            try:
                decoder.decode(block)
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"{file} is not UTF-8 text (byte 0x{block[exc.start]:02x} at offset "
                    f"{offset + exc.start}); convert it, e.g. iconv -f latin1 -t utf-8"
                ) from exc
            offset += len(block)
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError as exc:
            raise DataError(f"{file} is not UTF-8 text (it ends mid-character)") from exc
