"""Tokenizers: trained byte-level BPE or characters, both Hugging Face ``tokenizers.Tokenizer``.

Both kinds save to, and load from, one ``tokenizer.json``, so any existing tokenizer file (GPT-2's,
for instance) is used the same way through :func:`load_tokenizer`.

* :func:`train_bpe` -- byte-level BPE (GPT-2 style): text is split by the GPT-2 regex, mapped to
  256 byte symbols, and merged. Every string is representable, so round trips are exact.
* :func:`train_char` -- one token per Unicode code point seen in training. A character never seen
  becomes the ``<|unk|>`` token (it decodes to the literal ``"<|unk|>"``), never an exception.

Both reserve ``<|endoftext|>`` (:data:`EOT`), which separates documents in token files. Decode with
``tokenizer.decode(ids, skip_special_tokens=False)`` to keep special tokens in the text;
``decode(encode(text).ids, skip_special_tokens=False) == text`` for any text a BPE tokenizer sees,
and for any text of the training characters with a char tokenizer.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from quillgpt.errors import DataError

EOT = "<|endoftext|>"
"""End-of-text special token: joins documents in token files."""

UNK = "<|unk|>"
"""Unknown-character token of char-level tokenizers."""

MIN_BPE_VOCAB = 256 + 1
"""Smallest byte-level BPE vocabulary: the 256 byte symbols plus :data:`EOT`."""

DEFAULT_BPE_VOCAB = 2048
"""BPE vocabulary size when none is given, in ``quill prepare``, ``quill train`` and Python alike:
the size the CPU presets train (4096 learned more per token but ran 15% slower, worse in 5
minutes; docs/performance.md)."""


def train_bpe(texts: Iterable[str], vocab_size: int = DEFAULT_BPE_VOCAB) -> Tokenizer:
    """Train a byte-level BPE tokenizer with ``vocab_size`` ids (256 bytes + EOT + merges).

    The vocabulary can come out smaller when the text runs out of pairs to merge. Training is
    deterministic: the same texts give the same ``tokenizer.json``, whatever their order.

    Raises:
        DataError: if ``vocab_size`` cannot hold the byte alphabet and the special token.
    """
    check_bpe_vocab(vocab_size)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def check_bpe_vocab(vocab_size: int) -> None:
    """Raise :class:`DataError` unless ``vocab_size`` holds 256 bytes + EOT and fits uint32."""
    if vocab_size < MIN_BPE_VOCAB:
        raise DataError(
            f"vocab_size {vocab_size} is too small: byte-level BPE needs 256 byte tokens plus "
            f"{EOT}, so use a vocab_size of {MIN_BPE_VOCAB} or more"
        )
    if vocab_size > 2**32:
        raise DataError(f"vocab_size {vocab_size} does not fit in uint32 token files")


def train_char(texts: Iterable[str]) -> Tokenizer:
    """Build a character-level tokenizer: ids 0, 1 are EOT and UNK, then characters by code point.

    The model is a BPE with no merges and no pre-tokenizer: it splits text into single code
    points (spaces and newlines included) and maps each to its id, or to ``<|unk|>``. That is
    exactly a character-level tokenizer, and faster in ``tokenizers`` than a ``WordLevel`` model
    fed one character at a time. A ``Fuse`` decoder joins tokens back without spaces.
    """
    alphabet: set[str] = set()
    for text in texts:
        alphabet.update(text)
    vocab = {EOT: 0, UNK: 1}
    for char in sorted(alphabet):
        vocab.setdefault(char, len(vocab))
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    tokenizer.decoder = decoders.Fuse()
    tokenizer.add_special_tokens([EOT, UNK])
    return tokenizer


def load_tokenizer(path: str | os.PathLike[str]) -> Tokenizer:
    """Load a ``tokenizer.json`` (ours, GPT-2's, any Hugging Face fast tokenizer file).

    Raises:
        DataError: if the file is missing or is not a tokenizer.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"tokenizer file not found: {path}")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # the Rust side raises a bare Exception
        raise DataError(f"{path} is not a valid tokenizer.json ({exc})") from exc


def eot_id(tokenizer: Tokenizer) -> int:
    """Return the id of :data:`EOT`.

    Raises:
        DataError: if the tokenizer has no such token.
    """
    token_id = tokenizer.token_to_id(EOT)
    if token_id is None:
        raise DataError(f"the tokenizer has no {EOT} token to separate documents; add it")
    return token_id


def tokenizer_sha256(tokenizer: Tokenizer) -> str:
    """Return the hex SHA-256 of the canonical tokenizer JSON: equal hashes, equal tokenization."""
    return hashlib.sha256(tokenizer.to_str().encode("utf-8")).hexdigest()
