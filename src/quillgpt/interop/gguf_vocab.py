"""A tokenizer as llama.cpp's ``gpt2`` BPE tokenizer model stores it in a GGUF file.

A byte-level BPE (quillgpt's ``--tokenizer bpe``, GPT-2's) goes in as it is: llama.cpp applies
the same GPT-2 regex (pre-tokenizer ``gpt-2``) and byte alphabet. A char tokenizer goes in
through the same byte-level form: each character is spelt by its UTF-8 bytes, with merges that
join them back (UTF-8 is prefix-free, so merges never cross characters, and text of the
training alphabet tokenizes to the same ids). Anything llama.cpp would tokenize differently (a
normalizer, another pre-tokenizer, byte fallback) is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from quillgpt.data.tokenizer import EOT
from quillgpt.errors import QuillError

# GGUF token types (gguf.TokenType), written as plain ints.
NORMAL, CONTROL, UNUSED = 1, 3, 5

NEVER_MERGE = "\ufffd \ufffd"
"""The merge list of a tokenizer without merges: llama.cpp requires the key and gguf cannot write
an empty array. U+FFFD is no byte symbol, so no text ever holds this pair."""


@dataclass(frozen=True)
class GGUFVocab:
    """A tokenizer as llama.cpp's ``gpt2`` (byte-level BPE) tokenizer model stores it.

    Attributes:
        tokens: the text of every id ``0..V-1``, in the byte-level alphabet (a space is ``Ġ``);
            special tokens as plain text; ids past the tokenizer's size as ``[PAD<i>]``.
        types: the GGUF token type of each id (normal, control, unused).
        merges: ``"left right"`` in priority order.
        eot_id: the ``<|endoftext|>`` id: llama.cpp's BOS and EOS (never added automatically).
        unk_id: the char tokenizer's ``<|unk|>`` id, else ``None``.
    """

    tokens: list[str]
    types: list[int]
    merges: list[str]
    eot_id: int
    unk_id: int | None = None


def gguf_vocab(tokenizer: Any, vocab_size: int) -> GGUFVocab:
    """The GGUF form of a ``tokenizers.Tokenizer`` for a model of ``vocab_size`` ids.

    Byte-level BPE (quillgpt's, GPT-2's) and quillgpt's char tokenizers have one; any other
    tokenizer is refused rather than written as something that tokenizes differently.

    Raises:
        QuillError: the tokenizer is of another kind, or has more ids than the model.
    """
    spec = json.loads(tokenizer.to_str())
    model = spec.get("model") or {}
    added = {t["id"]: t for t in spec.get("added_tokens") or []}
    plain = [t["content"] for t in added.values() if not t.get("special")]
    if model.get("type") != "BPE" or plain:
        raise QuillError(
            "the tokenizer is not a BPE with only special added tokens; GGUF export supports "
            "byte-level BPE (quill prepare --tokenizer bpe, GPT-2's) and char tokenizers"
        )
    if _is_char_tokenizer(spec):
        texts, merges = _char_tokens(tokenizer, added)
    else:
        _check_byte_level(spec)
        texts = {i: t for t, i in tokenizer.get_vocab(with_added_tokens=True).items()}
        merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    if max(texts) >= vocab_size:
        raise QuillError(
            f"the tokenizer has {max(texts) + 1} ids but the model only {vocab_size}; export "
            "the run's own tokenizer.json"
        )
    eot_id = tokenizer.token_to_id(EOT)
    if eot_id is None:
        raise QuillError(f"the tokenizer has no {EOT} token for llama.cpp's end of text; add it")
    tokens, types = [], []
    for i in range(vocab_size):  # ids the tokenizer never produces pad the vocabulary
        tokens.append(texts.get(i, f"[PAD{i}]"))
        types.append(CONTROL if i in added else NORMAL if i in texts else UNUSED)
    unk = model.get("unk_token")
    return GGUFVocab(tokens, types, merges, eot_id, tokenizer.token_to_id(unk) if unk else None)


def _byte_symbols() -> dict[int, str]:
    """GPT-2's map from each byte to the printable character byte-level BPE spells it with.

    Printable Latin-1 bytes stand for themselves; the others (controls, space, ...) are shifted
    to ``chr(256 + n)`` in byte order, so a space is ``Ġ`` and a newline ``Ċ``.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {b: chr(b) for b in printable}
    shifted = (b for b in range(256) if b not in table)
    table.update({b: chr(256 + n) for n, b in enumerate(shifted)})
    return table


BYTE_SYMBOLS = _byte_symbols()


def _is_char_tokenizer(spec: dict[str, Any]) -> bool:
    """Whether ``spec`` is quillgpt's char tokenizer: a merge-free BPE over single characters."""
    model = spec["model"]
    special = {t["content"] for t in spec.get("added_tokens") or []}
    return (
        not model.get("merges")
        and spec.get("pre_tokenizer") is None
        and spec.get("normalizer") is None
        and spec.get("post_processor") is None
        and (spec.get("decoder") or {}).get("type") == "Fuse"
        and all(len(t) == 1 for t in model.get("vocab", {}) if t not in special)
    )


def _char_tokens(tokenizer: Any, added: dict[int, Any]) -> tuple[dict[int, str], list[str]]:
    """The byte-level spelling of a char tokenizer's ids, and the merges that rebuild them.

    A character of ``n`` UTF-8 bytes gets the merges ``(bytes[:k], bytes[k])``, k = 1..n-1,
    shorter prefixes first. Each joins a prefix that starts with a lead byte to a continuation
    byte; a character is never followed by a continuation byte, so merges never reach across
    characters, and every character of the alphabet becomes its own token again.
    """
    texts: dict[int, str] = {}
    merges: list[tuple[int, str]] = []
    for token, i in tokenizer.get_vocab(with_added_tokens=True).items():
        if i in added:
            texts[i] = token  # special tokens are matched as plain text
            continue
        symbols = [BYTE_SYMBOLS[b] for b in token.encode("utf-8")]
        texts[i] = "".join(symbols)
        merges += [(k, f"{''.join(symbols[:k])} {symbols[k]}") for k in range(1, len(symbols))]
    return texts, list(dict.fromkeys(merge for _, merge in sorted(merges)))  # once each


def _check_byte_level(spec: dict[str, Any]) -> None:
    """Refuse a BPE that llama.cpp's ``gpt2`` tokenizer with ``gpt-2`` splitting would not match.

    That is GPT-2's: no normalizer, the ByteLevel pre-tokenizer with GPT-2's regex and no
    prefix space, the ByteLevel decoder, plain merges, and a token for every byte.
    """
    model = spec["model"]
    pre = spec.get("pre_tokenizer") or {}
    gpt2_split = pre.get("type") == "ByteLevel" and pre.get("use_regex")
    decoder = (spec.get("decoder") or {}).get("type")
    post = (spec.get("post_processor") or {"type": "ByteLevel"}).get("type")  # offsets only
    options = ("continuing_subword_prefix", "end_of_word_suffix", "byte_fallback", "dropout",
               "ignore_merges")  # fmt: skip
    problems = [
        (spec.get("normalizer") is not None, "has a normalizer"),
        (
            not gpt2_split or pre.get("add_prefix_space"),
            "has another pre-tokenizer than ByteLevel(add_prefix_space=False) with GPT-2's regex",
        ),
        (decoder != "ByteLevel", "has another decoder than ByteLevel"),
        (post != "ByteLevel", "has a post-processor that adds tokens"),
        (any(model.get(key) for key in options), f"sets one of {', '.join(options)}"),
        (not set(BYTE_SYMBOLS.values()) <= set(model.get("vocab", {})), "lacks some byte's token"),
    ]
    for bad, what in problems:
        if bad:
            raise QuillError(
                f"the tokenizer {what}, so llama.cpp would tokenize differently; GGUF export "
                "supports GPT-2-style byte-level BPE (quill prepare --tokenizer bpe) and "
                "quillgpt's char tokenizers"
            )
