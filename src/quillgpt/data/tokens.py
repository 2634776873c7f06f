"""Token files: one flat array of token ids per split, plus ``meta.json``, and how to read them.

A prepared folder holds::

    tokenizer.json     the tokenizer that produced the ids
    train.bin          raw little-endian uint16 (vocab <= 65536) or uint32 ids, no header
    validation.bin
    meta.json          source, tokenizer hash, dtype, and per split: documents, characters,
                       text_bytes, bytes, tokens, unknown_tokens

Each ``.bin`` is ``EOT doc_0 EOT doc_1 EOT ... doc_n EOT``: a leading end-of-text token, then
every document followed by one. So every document token and every document end is a prediction
target, and a model reading from the start sees the same context as at any document start.

Bits per byte divides a split's total loss over all ``tokens - 1`` targets by its ``bytes``:
the UTF-8 bytes of the documents (``text_bytes``) plus one byte per end-of-text target, as if
documents were joined by a one-byte separator. :attr:`PreparedData.val_bytes` is that number.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tokenizers import Tokenizer

from quillgpt.data.tokenizer import UNK, load_tokenizer
from quillgpt.errors import DataError

if TYPE_CHECKING:
    from datasets import Dataset

FORMAT = "quillgpt-tokens/1"
"""Version tag of the folder layout, stored in ``meta.json``."""

SPLITS = ("train", "validation")
"""Split names, as in ``datasets``; token files are ``<split>.bin``."""

_MAP_BATCH = 256


def token_dtype(vocab_size: int) -> np.dtype:
    """Return the narrowest unsigned dtype for ids below ``vocab_size``: uint16 or uint32."""
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def write_token_file(
    dataset: Dataset,
    tokenizer: Tokenizer,
    path: Path,
    *,
    eot: int,
    dtype: np.dtype,
    num_proc: int = 1,
    scratch: Path,
) -> dict[str, int]:
    """Tokenize ``dataset["text"]`` into ``path`` as ``EOT doc EOT doc ... EOT``; return counts.

    Documents are encoded with ``Dataset.map(batched=True, num_proc=num_proc)``; within one
    process ``encode_batch`` already runs on all cores (Rust threads), while more processes also
    parallelise the Arrow conversion around it. The mapped ids live in Arrow files under
    ``scratch`` (not in RAM), then are streamed into ``path`` chunk by chunk.

    Returns:
        ``documents``, ``characters``, ``text_bytes``, ``bytes`` (text bytes + one per document
        end), ``tokens`` (length of the file) and ``unknown_tokens`` (ids of ``<|unk|>``).
    """
    unk = tokenizer.token_to_id(UNK)

    def encode(batch: dict[str, list[str]]) -> dict[str, list[Any]]:
        texts = batch["text"]
        encodings = tokenizer.encode_batch(texts, add_special_tokens=False)
        ids = [np.array([*e.ids, eot], dtype=dtype) for e in encodings]
        return {
            "ids": ids,
            "characters": [len(t) for t in texts],
            "text_bytes": [len(t.encode("utf-8")) for t in texts],
            "unknown_tokens": [int((a == unk).sum()) if unk is not None else 0 for a in ids],
        }

    scratch.mkdir(parents=True, exist_ok=True)
    encoded = dataset.map(
        encode,
        batched=True,
        batch_size=_MAP_BATCH,
        num_proc=num_proc if num_proc > 1 else None,
        remove_columns=dataset.column_names,
        cache_file_name=str(scratch / f"{path.stem}.arrow"),
        new_fingerprint=f"quillgpt-{path.stem}",
    )
    tokens = 1
    with open(path, "wb") as handle:
        np.array([eot], dtype=dtype).tofile(handle)
        for chunk in encoded.data.column("ids").chunks:
            flat = chunk.flatten().to_numpy(zero_copy_only=False).astype(dtype, copy=False)
            flat.tofile(handle)
            tokens += flat.size
    table = encoded.data
    counts = {
        name: int(np.sum(table.column(name).to_numpy(), dtype=np.int64))
        for name in ("characters", "text_bytes", "unknown_tokens")
    }
    documents = len(encoded)
    return {
        "documents": documents,
        "characters": counts["characters"],
        "text_bytes": counts["text_bytes"],
        "bytes": counts["text_bytes"] + documents,
        "tokens": tokens,
        "unknown_tokens": counts["unknown_tokens"],
    }


@dataclass(frozen=True)
class PreparedData:
    """A prepared folder: tokenizer, token files and ``meta.json``, validated on load.

    Attributes:
        directory: the folder.
        meta: the parsed ``meta.json``.
        reused: ``True`` when :func:`~quillgpt.data.prepare_data` found it in the cache.
    """

    directory: Path
    meta: dict[str, Any]
    reused: bool = False

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> PreparedData:
        """Open a prepared folder, checking that every file is there and has the size it should.

        Raises:
            DataError: if the folder is missing, incomplete or from another format version.
        """
        directory = Path(directory)
        redo = "run `quill prepare` again"
        try:
            meta = json.loads((directory / "meta.json").read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise DataError(
                f"{directory} is not a prepared dataset (no meta.json); {redo}"
            ) from exc
        except (OSError, ValueError) as exc:
            raise DataError(f"{directory}/meta.json is unreadable ({exc}); {redo}") from exc
        if meta.get("format") != FORMAT:
            raise DataError(f"{directory} has format {meta.get('format')!r}, not {FORMAT}; {redo}")
        prepared = cls(directory, meta)
        if not prepared.tokenizer_path.is_file():
            raise DataError(f"{directory} has no tokenizer.json; {redo}")
        for split in SPLITS:
            path = prepared.path(split)
            expected = prepared.num_tokens(split) * prepared.dtype.itemsize
            actual = path.stat().st_size if path.is_file() else -1
            if actual != expected:
                raise DataError(
                    f"{path} holds {actual} bytes, expected {expected} from meta.json; {redo}"
                )
        return prepared

    @property
    def tokenizer_path(self) -> Path:
        """Path of ``tokenizer.json``."""
        return self.directory / "tokenizer.json"

    @property
    def vocab_size(self) -> int:
        """Number of token ids, special tokens included: the model's ``vocab_size``."""
        return int(self.meta["vocab_size"])

    @property
    def eot_id(self) -> int:
        """Id of the end-of-text token that separates documents."""
        return int(self.meta["eot_id"])

    @property
    def dtype(self) -> np.dtype:
        """Dtype of the token files (``uint16`` or ``uint32``)."""
        return np.dtype(self.meta["dtype"])

    def path(self, split: str) -> Path:
        """Return the token file of ``split`` (``"train"`` or ``"validation"``)."""
        return self.directory / f"{_check_split(split)}.bin"

    def num_tokens(self, split: str) -> int:
        """Return the length of ``split``'s token file, leading end-of-text token included."""
        return int(self.meta["splits"][_check_split(split)]["tokens"])

    def num_bytes(self, split: str) -> int:
        """Return the bits-per-byte denominator of ``split`` (see the module docstring)."""
        return int(self.meta["splits"][_check_split(split)]["bytes"])

    @property
    def train_tokens(self) -> int:
        """Length of the train token file."""
        return self.num_tokens("train")

    @property
    def val_tokens(self) -> int:
        """Length of the validation token file."""
        return self.num_tokens("validation")

    @property
    def val_bytes(self) -> int:
        """Bits-per-byte denominator of the validation split: ``nats / val_bytes / ln 2``."""
        return self.num_bytes("validation")

    def tokens(self, split: str) -> np.memmap:
        """Memory-map ``split``'s ids read-only, shape ``(num_tokens(split),)``."""
        return np.memmap(self.path(split), dtype=self.dtype, mode="r")

    def load_tokenizer(self) -> Tokenizer:
        """Load the tokenizer that produced the ids."""
        return load_tokenizer(self.tokenizer_path)


def _check_split(split: str) -> str:
    """Return ``split`` if it is a known split name, else raise :class:`DataError`."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    return split
