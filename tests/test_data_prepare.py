"""prepare_data and `quill prepare`: token files, meta.json, caching, atomicity, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models

from corpus_utils import make_docs
from quillgpt.cli import main
from quillgpt.data import (
    EOT,
    UNK,
    CorpusSpec,
    PreparedData,
    load_corpus,
    prepare_data,
    token_dtype,
)
from quillgpt.data import prepare as prepare_module
from quillgpt.errors import DataError

pytestmark = pytest.mark.usefixtures("hub_offline")


@pytest.fixture
def corpus(tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    for i, doc in enumerate(make_docs(10, words_per_doc=(50, 300))):
        (folder / f"doc{i:02d}.txt").write_text(doc, encoding="utf-8")
    return str(folder)


@pytest.fixture
def data_dir(tmp_path):
    return tmp_path / "data"


def decoded_documents(data: PreparedData, split: str) -> list[str]:
    """Decode a token file back into documents, splitting at end-of-text tokens."""
    tok = data.load_tokenizer()
    ids = np.asarray(data.tokens(split))
    assert ids[0] == data.eot_id and ids[-1] == data.eot_id
    bounds = np.flatnonzero(ids == data.eot_id)
    return [
        tok.decode(ids[a + 1 : b].tolist(), skip_special_tokens=False)
        for a, b in zip(bounds[:-1], bounds[1:], strict=True)
    ]


@pytest.mark.parametrize("tokenizer", ["bpe", "char"])
def test_token_files_hold_every_document_between_end_of_text_tokens(
    corpus, data_dir, tokenizer
) -> None:
    vocab = 300 if tokenizer == "bpe" else None
    data = prepare_data(corpus, tokenizer=tokenizer, vocab_size=vocab, data_dir=data_dir)
    expected = load_corpus(corpus, data_dir=data_dir)
    for split in ("train", "validation"):
        docs = list(expected[split]["text"])
        assert decoded_documents(data, split) == docs
        stats = data.meta["splits"][split]
        text_bytes = sum(len(d.encode("utf-8")) for d in docs)
        assert stats["documents"] == len(docs)
        assert stats["characters"] == sum(map(len, docs))
        assert stats["text_bytes"] == text_bytes
        assert data.num_bytes(split) == text_bytes + len(docs)
        assert data.num_tokens(split) == len(data.tokens(split))
        assert stats["unknown_tokens"] == 0
    assert data.val_bytes == data.num_bytes("validation")
    assert data.dtype == np.uint16
    assert data.tokens("train").dtype == np.uint16
    assert data.vocab_size == data.load_tokenizer().get_vocab_size()
    assert data.load_tokenizer().id_to_token(data.eot_id) == EOT
    assert data.meta["tokenizer"]["kind"] == tokenizer


def test_cache_is_reused_without_loading_the_corpus(corpus, data_dir, monkeypatch) -> None:
    first = prepare_data(corpus, tokenizer="char", data_dir=data_dir)
    assert not first.reused
    stamp = (first.directory / "train.bin").stat().st_mtime_ns

    def no_loading(*args, **kwargs):
        raise AssertionError("the corpus was loaded although the cache is complete")

    monkeypatch.setattr(prepare_module, "load_corpus", no_loading)
    second = prepare_data(corpus, tokenizer="char", data_dir=data_dir)
    assert second.reused
    assert second.directory == first.directory
    assert (second.directory / "train.bin").stat().st_mtime_ns == stamp


def test_cache_is_keyed_by_source_and_tokenizer(corpus, data_dir, tmp_path) -> None:
    char = prepare_data(corpus, tokenizer="char", data_dir=data_dir)
    bpe = prepare_data(corpus, tokenizer="bpe", vocab_size=300, data_dir=data_dir)
    bpe2 = prepare_data(corpus, tokenizer="bpe", vocab_size=320, data_dir=data_dir)
    seeded = prepare_data(CorpusSpec(corpus, seed=3), tokenizer="char", data_dir=data_dir)
    assert len({char.directory, bpe.directory, bpe2.directory, seeded.directory}) == 4
    given = prepare_data(corpus, tokenizer=bpe.tokenizer_path, data_dir=data_dir)
    assert given.meta["tokenizer"]["sha256"] == bpe.meta["tokenizer"]["sha256"]
    assert np.array_equal(given.tokens("train"), bpe.tokens("train"))


def test_force_rebuilds_and_reopen_with_load(corpus, data_dir) -> None:
    first = prepare_data(corpus, tokenizer="char", data_dir=data_dir)
    again = prepare_data(corpus, tokenizer="char", data_dir=data_dir, force=True)
    assert not again.reused
    assert np.array_equal(first.tokens("validation"), again.tokens("validation"))
    reopened = PreparedData.load(first.directory)
    assert reopened.meta == again.meta


def test_truncated_token_file_is_never_trusted(corpus, data_dir) -> None:
    data = prepare_data(corpus, tokenizer="char", data_dir=data_dir)
    path = data.path("train")
    path.write_bytes(path.read_bytes()[:-2])
    with pytest.raises(DataError, match="expected"):
        PreparedData.load(data.directory)
    rebuilt = prepare_data(corpus, tokenizer="char", data_dir=data_dir)
    assert not rebuilt.reused
    assert path.stat().st_size == rebuilt.train_tokens * 2


def test_interrupted_prepare_leaves_nothing(corpus, data_dir, monkeypatch) -> None:
    calls = []
    real = prepare_module.write_token_file

    def dies_on_second_split(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(prepare_module, "write_token_file", dies_on_second_split)
    with pytest.raises(KeyboardInterrupt):
        prepare_data(corpus, tokenizer="char", data_dir=data_dir)
    assert list((data_dir / "prepared").iterdir()) == []


def test_large_vocabulary_uses_uint32(corpus, data_dir) -> None:
    chars = "".join(sorted({c for d in make_docs(10, words_per_doc=(50, 300)) for c in d}))
    vocab = {EOT: 0, UNK: 1, **{c: i + 2 for i, c in enumerate(chars)}}
    vocab.update({chr(0x10000 + i): len(vocab) for i in range(70_000)})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([EOT, UNK])
    data = prepare_data(corpus, tokenizer=tok, data_dir=data_dir)
    assert data.dtype == np.uint32
    assert data.vocab_size > 2**16
    assert token_dtype(2**16) == np.uint16 and token_dtype(2**16 + 1) == np.uint32
    assert "".join(decoded_documents(data, "validation"))


def test_vocab_size_only_for_bpe(corpus, data_dir) -> None:
    with pytest.raises(DataError, match="vocab_size applies to tokenizer='bpe' only"):
        prepare_data(corpus, tokenizer="char", vocab_size=100, data_dir=data_dir)


def test_num_proc_two_gives_the_same_tokens(corpus, data_dir, tmp_path) -> None:
    one = prepare_data(corpus, tokenizer="char", data_dir=data_dir)
    two = prepare_data(corpus, tokenizer="char", data_dir=tmp_path / "other", num_proc=2)
    assert np.array_equal(one.tokens("train"), two.tokens("train"))


# --- the CLI ---------------------------------------------------------------------------------


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["prepare", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_prints_what_it_built(corpus, data_dir, capsys) -> None:
    argv = (corpus, "--tokenizer", "bpe", "--vocab-size", "300", "--data-dir", str(data_dir))
    code, out, _ = run_cli(capsys, *argv)
    assert code == 0
    expected = ["documents", "characters", "bytes", "tokens", "bytes/token", "vocab", "built in"]
    for word in [*expected, "validation", str(data_dir / "prepared")]:
        assert word in out
    code, out, _ = run_cli(capsys, *argv)
    assert code == 0 and "reused the cache" in out


def test_cli_data_dir_from_environment(corpus, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("QUILLGPT_DATA_DIR", str(tmp_path / "envdata"))
    code, out, _ = run_cli(capsys, corpus, "--tokenizer", "char")
    assert code == 0
    assert (tmp_path / "envdata" / "prepared").is_dir()


@pytest.mark.parametrize(
    ("make_source", "extra", "message"),
    [
        (lambda p: p / "empty", [], "no text"),
        (lambda p: p / "nocol.jsonl", [], "no column 'text'"),
        (lambda p: p / "latin", [], "is not UTF-8"),
        (lambda p: p / "texts", ["--vocab-size", "200"], "greater than or equal to 257"),
        (lambda p: p / "texts", ["--block-size", "100000"], "fewer than block_size + 1"),
        (lambda p: "nobody/no-such-dataset", [], "unknown dataset 'nobody/no-such-dataset'"),
        (lambda p: p / "texts", ["--val-fraction", "1.5"], "val_fraction"),
        (lambda p: p / "texts", ["--tokenizer", "missing.json"], "tokenizer file not found"),
    ],
)
def test_cli_bad_input_is_one_line_nonzero_and_writes_nothing(
    corpus, tmp_path, capsys, make_source, extra, message
) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("")
    (tmp_path / "nocol.jsonl").write_text('{"body": "x"}\n')
    (tmp_path / "latin").mkdir()
    (tmp_path / "latin" / "a.txt").write_bytes("crème".encode("latin-1"))
    data_dir = tmp_path / "data"
    argv = [str(make_source(tmp_path)), "--data-dir", str(data_dir), *extra]
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    assert message in err
    assert err.startswith("quill prepare: error: ")
    assert err.count("\n") == 1 and "Traceback" not in err
    if "--block-size" not in extra:  # that check runs on complete, valid token files
        prepared = data_dir / "prepared"
        assert not prepared.exists() or list(prepared.iterdir()) == []


def test_cli_help_lists_the_options(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["prepare", "--help"])
    out = capsys.readouterr().out
    for option in ("--tokenizer", "--vocab-size", "--data-dir", "--num-proc", "--text-column"):
        assert option in out


def test_meta_json_is_plain_json(corpus, data_dir) -> None:
    data = prepare_data(corpus, tokenizer="char", data_dir=data_dir)
    meta = json.loads((data.directory / "meta.json").read_text())
    assert meta["format"] == "quillgpt-tokens/1"
    assert meta["tokenizer"]["sha256"] and meta["corpus"]["source"].endswith("texts")
    assert set(meta["seconds"]) == {"corpus", "tokenizer", "tokenize", "total"}
