"""Tokenizers: exact round trips, unknown characters, vocab limits, loading tokenizer.json."""

from __future__ import annotations

import re

import pytest

from quillgpt.data import (
    EOT,
    MIN_BPE_VOCAB,
    UNK,
    eot_id,
    load_tokenizer,
    tokenizer_sha256,
    train_bpe,
    train_char,
)
from quillgpt.errors import DataError

TEXTS = [
    "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n",
    "  leading spaces, trailing spaces   \n\n\ttabs\r\nCRLF and a final line without newline",
    "Unicode: café, naïve, Œuvre, 東京, Ελληνικά, emoji 😀🎭, combining e\u0301, zero\u200bwidth",
    "",
]


def roundtrip(tokenizer, text: str) -> str:
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    return tokenizer.decode(ids, skip_special_tokens=False)


@pytest.mark.parametrize("text", TEXTS)
def test_bpe_roundtrip_is_exact(text: str) -> None:
    tok = train_bpe(TEXTS * 3, vocab_size=320)
    assert roundtrip(tok, text) == text


def test_bpe_roundtrip_on_text_it_never_saw() -> None:
    tok = train_bpe(["only ascii here"], vocab_size=300)
    text = "Всё новое: 漢字 and ☃ — still exact"
    assert roundtrip(tok, text) == text


@pytest.mark.parametrize("text", TEXTS)
def test_char_roundtrip_is_exact(text: str) -> None:
    tok = train_char(TEXTS)
    assert roundtrip(tok, text) == text


def test_char_tokens_are_single_code_points() -> None:
    tok = train_char(TEXTS)
    text = "é😀\n 東"
    assert tok.encode(text).tokens == list(text)


def test_char_unknown_character_becomes_unk_token() -> None:
    tok = train_char(["abc "])
    ids = tok.encode("a☃b").ids
    assert ids == [tok.token_to_id("a"), tok.token_to_id(UNK), tok.token_to_id("b")]
    assert tok.decode(ids, skip_special_tokens=False) == f"a{UNK}b"


def test_char_vocab_layout() -> None:
    tok = train_char(["ba", "c"])
    assert tok.token_to_id(EOT) == 0
    assert tok.token_to_id(UNK) == 1
    assert [tok.id_to_token(i) for i in range(2, 5)] == ["a", "b", "c"]
    assert tok.get_vocab_size() == 5


def test_bpe_vocab_size_and_special_token() -> None:
    tok = train_bpe(TEXTS * 5, vocab_size=300)
    assert tok.get_vocab_size() <= 300
    assert eot_id(tok) == 0
    assert tok.encode(f"a{EOT}b").ids[1] == 0


def test_bpe_training_is_deterministic() -> None:
    a = train_bpe(TEXTS, vocab_size=300)
    b = train_bpe(list(reversed(TEXTS)), vocab_size=300)
    assert tokenizer_sha256(a) == tokenizer_sha256(b)


@pytest.mark.parametrize("size", [0, 100, MIN_BPE_VOCAB - 1])
def test_bpe_vocab_too_small_for_bytes_and_special_token(size: int) -> None:
    with pytest.raises(DataError, match=f"vocab_size of {MIN_BPE_VOCAB} or more"):
        train_bpe(TEXTS, vocab_size=size)


@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_save_and_load_tokenizer_json(tmp_path, kind: str) -> None:
    tok = train_bpe(TEXTS, 300) if kind == "bpe" else train_char(TEXTS)
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    loaded = load_tokenizer(path)
    assert tokenizer_sha256(loaded) == tokenizer_sha256(tok)
    for text in TEXTS:
        assert roundtrip(loaded, text) == text


def test_load_tokenizer_errors(tmp_path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_tokenizer(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="not a valid tokenizer.json"):
        load_tokenizer(bad)


def test_tokenizer_without_end_of_text_is_rejected() -> None:
    from tokenizers import Tokenizer, models

    tok = Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    with pytest.raises(DataError, match=re.escape(f"no {EOT} token")):
        eot_id(tok)
