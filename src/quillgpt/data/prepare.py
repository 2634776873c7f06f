"""The whole data pipeline in one call: corpus -> tokenizer -> token files, cached.

:func:`prepare_data` is what ``quill prepare`` runs. Its output folder is named after the corpus,
the tokenizer and a hash of everything that determines the ids, under ``<data_dir>/prepared/``;
when a complete folder with that name exists it is reused without loading the corpus at all.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokenizers import Tokenizer

from quillgpt.data.cache import (
    atomic_directory,
    check_data_dir,
    fingerprint,
    resolve_data_dir,
    scratch_folder,
)
from quillgpt.data.corpus import CorpusSpec, load_corpus
from quillgpt.data.tokenizer import (
    DEFAULT_BPE_VOCAB,
    check_bpe_vocab,
    eot_id,
    load_tokenizer,
    tokenizer_sha256,
    train_bpe,
    train_char,
)
from quillgpt.data.tokens import FORMAT, SPLITS, PreparedData, token_dtype, write_token_file
from quillgpt.errors import DataError

if TYPE_CHECKING:
    from datasets import Dataset

TokenizerChoice = str | os.PathLike[str] | Tokenizer


def prepare_data(
    corpus: CorpusSpec | str = "shakespeare",
    tokenizer: TokenizerChoice = "bpe",
    vocab_size: int | None = None,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    num_proc: int = 1,
    force: bool = False,
) -> PreparedData:
    """Load a corpus, train or load a tokenizer, and write the token files; reuse them if cached.

    Args:
        corpus: a :class:`CorpusSpec`, or just its ``source`` (``"shakespeare"``, a local path,
            a hub dataset name).
        tokenizer: ``"bpe"`` (byte-level BPE trained on the train split), ``"char"`` (every
            character of the corpus, both splits, so that all of it round-trips exactly: only the
            alphabet is shared, no statistics), the path of a ``tokenizer.json``, or a
            ``tokenizers.Tokenizer``.
        vocab_size: BPE vocabulary size (default :data:`DEFAULT_BPE_VOCAB`, 2048; at least
            257); BPE only.
        data_dir: root of all data files (default ``$QUILLGPT_DATA_DIR`` or ``./data``).
        num_proc: processes for ``Dataset.map`` while tokenizing. 1 (the default) never forks,
            which is safe inside a process that holds threads or a CUDA context, and still
            encodes on all cores (Rust threads); more also spreads the Arrow conversion and
            writing over cores (``quill prepare`` uses up to 4). The ids do not depend on it.
        force: rebuild even if a complete cached folder exists.

    Returns:
        The prepared folder; ``reused`` tells whether it came from the cache.

    Raises:
        DataError: any input that cannot be used, with what to do about it. Nothing is left
            half-written: the folder appears only once complete.
    """
    spec = CorpusSpec(source=corpus) if isinstance(corpus, str) else corpus
    if num_proc < 1:
        raise DataError(f"num_proc must be at least 1, got {num_proc}")
    tok_key, tok_slug, loaded = _tokenizer_choice(tokenizer, vocab_size)
    root = resolve_data_dir(data_dir)
    check_data_dir(root)
    key = {"format": FORMAT, "corpus": spec.cache_key(), "tokenizer": tok_key}
    out = root / "prepared" / f"{spec.slug}-{tok_slug}-{fingerprint(key)}"
    if not force:
        try:
            return replace(PreparedData.load(out), reused=True)
        except DataError:
            pass

    with _quiet_progress_bars(), scratch_folder(root) as scratch:
        return _build(spec, tok_key, loaded, root, out, key, num_proc, scratch)


def _build(
    spec: CorpusSpec,
    tok_key: dict[str, Any],
    loaded: Tokenizer | None,
    root: Path,
    out: Path,
    key: dict[str, Any],
    num_proc: int,
    scratch: Path,
) -> PreparedData:
    """Run the pipeline into ``out`` (atomically) and open the result.

    Local files are converted to Arrow in ``scratch``, deleted afterwards: the token files are
    the cache, and a file that fails to read leaves no half-converted copy behind.
    """
    start = time.perf_counter()
    splits = load_corpus(spec, data_dir=root, cache_dir=scratch)
    corpus_done = time.perf_counter()
    if loaded is not None:
        tok = loaded
    elif tok_key["kind"] == "char":
        tok = train_char(text for split in SPLITS for text in _texts(splits[split]))
    else:
        tok = train_bpe(_texts(splits["train"]), tok_key["vocab_size"])
    tokenizer_done = time.perf_counter()
    eot = eot_id(tok)
    vocab = tok.get_vocab_size(with_added_tokens=True)
    dtype = token_dtype(vocab)
    with atomic_directory(out) as tmp:
        tok.save(str(tmp / "tokenizer.json"))
        stats = {
            split: write_token_file(
                splits[split],
                tok,
                tmp / f"{split}.bin",
                eot=eot,
                dtype=dtype,
                num_proc=num_proc,
                scratch=tmp / "scratch",
            )
            for split in SPLITS
        }
        shutil.rmtree(tmp / "scratch")
        end = time.perf_counter()
        meta: dict[str, Any] = {
            "format": FORMAT,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "corpus": key["corpus"],
            "tokenizer": {**tok_key, "sha256": tokenizer_sha256(tok), "file": "tokenizer.json"},
            "vocab_size": vocab,
            "eot_id": eot,
            "dtype": dtype.name,
            "layout": "EOT, then every document followed by EOT",
            "bytes_definition": "UTF-8 bytes of the documents plus one per end-of-text target",
            "splits": stats,
            "validation_titles": _titles(splits["validation"]),
            "seconds": {
                "corpus": round(corpus_done - start, 3),
                "tokenizer": round(tokenizer_done - corpus_done, 3),
                "tokenize": round(end - tokenizer_done, 3),
                "total": round(end - start, 3),
            },
        }
        _write_json(tmp / "meta.json", meta)
    return PreparedData.load(out)


@contextmanager
def _quiet_progress_bars() -> Iterator[None]:
    """Silence ``datasets`` progress bars inside the block, restoring the previous setting."""
    from datasets.utils import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )

    was_disabled = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            enable_progress_bars()


def _tokenizer_choice(
    tokenizer: TokenizerChoice, vocab_size: int | None
) -> tuple[dict[str, Any], str, Tokenizer | None]:
    """Validate the tokenizer request before any work; return (cache key, folder slug, loaded)."""
    if isinstance(tokenizer, str) and tokenizer in ("bpe", "char"):
        if tokenizer == "bpe":
            size = DEFAULT_BPE_VOCAB if vocab_size is None else vocab_size
            check_bpe_vocab(size)
            return {"kind": "bpe", "vocab_size": size}, f"bpe{size}", None
        if vocab_size is not None:
            raise DataError("vocab_size applies to tokenizer='bpe' only; pass vocab_size=None")
        return {"kind": "char"}, "char", None
    if vocab_size is not None:
        raise DataError(
            "vocab_size applies to tokenizer='bpe' only, not to a given tokenizer; pass None"
        )
    tok = tokenizer if isinstance(tokenizer, Tokenizer) else load_tokenizer(tokenizer)
    eot_id(tok)
    digest = tokenizer_sha256(tok)
    return {"kind": "file", "sha256": digest}, f"tok{digest[:8]}", tok


def _texts(dataset: Dataset) -> Iterator[str]:
    """Yield the ``text`` of every row, reading Arrow in batches."""
    for batch in dataset.iter(batch_size=1024):
        yield from batch["text"]


def _titles(dataset: Dataset, limit: int = 64) -> list[str]:
    """Return the titles of a split of at most ``limit`` documents that has them, else ``[]``."""
    if "title" not in dataset.column_names or len(dataset) > limit:
        return []
    return list(dataset["title"])


def _write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON."""
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
