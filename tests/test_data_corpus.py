"""Corpora: local files, saved datasets, hub names (faked offline), splits, bad input."""

from __future__ import annotations

import json
import os

import datasets
import numpy as np
import pytest

from corpus_utils import make_docs
from quillgpt.data import CorpusSpec, carve_validation, load_corpus
from quillgpt.errors import DataError

pytestmark = pytest.mark.usefixtures("hub_offline")


def write_txt_folder(folder, docs: list[str]):
    folder.mkdir(parents=True, exist_ok=True)
    for i, doc in enumerate(docs):
        (folder / f"doc{i:03d}.txt").write_text(doc, encoding="utf-8")
    return folder


def all_texts(splits) -> list[str]:
    return list(splits["train"]["text"]) + list(splits["validation"]["text"])


def test_txt_folder_gives_one_document_per_file(tmp_path) -> None:
    docs = make_docs(12)
    folder = write_txt_folder(tmp_path / "texts", docs)
    splits = load_corpus(str(folder), data_dir=tmp_path / "data")
    assert set(splits) == {"train", "validation"}
    assert sorted(all_texts(splits)) == sorted(docs)
    assert not set(splits["train"]["text"]) & set(splits["validation"]["text"])
    assert splits["train"].column_names == ["text"]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_jsonl_and_parquet_with_another_text_column(tmp_path, fmt: str) -> None:
    docs = make_docs(10)
    rows = [{"content": d, "title": f"t{i}", "score": i} for i, d in enumerate(docs)]
    path = tmp_path / f"corpus.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    else:
        datasets.Dataset.from_list(rows).to_parquet(str(path))
    spec = CorpusSpec(source=str(path), text_column="content")
    splits = load_corpus(spec, data_dir=tmp_path / "data")
    assert splits["train"].column_names == ["text", "title"]
    assert sorted(all_texts(splits)) == sorted(docs)


def test_saved_dataset_dict_keeps_its_validation_split(tmp_path) -> None:
    saved = datasets.DatasetDict(
        train=datasets.Dataset.from_dict({"text": make_docs(5)}),
        validation=datasets.Dataset.from_dict({"text": make_docs(2, seed=1)}),
        test=datasets.Dataset.from_dict({"text": make_docs(2, seed=2)}),
    )
    saved.save_to_disk(str(tmp_path / "saved"))
    splits = load_corpus(str(tmp_path / "saved"), data_dir=tmp_path / "data")
    assert list(splits["validation"]["text"]) == make_docs(2, seed=1)
    spec = CorpusSpec(source=str(tmp_path / "saved"), val_split="test")
    assert list(load_corpus(spec, data_dir=tmp_path)["validation"]["text"]) == make_docs(2, seed=2)


def test_saved_dataset_without_validation_is_carved(tmp_path) -> None:
    datasets.Dataset.from_dict({"text": make_docs(8)}).save_to_disk(str(tmp_path / "saved"))
    splits = load_corpus(str(tmp_path / "saved"), data_dir=tmp_path / "data")
    assert len(splits["train"]) + len(splits["validation"]) == 8


def test_hub_dataset_by_name_config_split_and_column(monkeypatch, tmp_path) -> None:
    calls = []

    def fake_load_dataset(name, config=None):
        calls.append((name, config))
        return datasets.DatasetDict(
            train=datasets.Dataset.from_dict({"story": ["", *make_docs(6)]}),
            dev=datasets.Dataset.from_dict({"story": make_docs(2, seed=3)}),
        )

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    spec = CorpusSpec(source="someone/stories", config="en", val_split="dev", text_column="story")
    splits = load_corpus(spec, data_dir=tmp_path)
    assert calls == [("someone/stories", "en")]
    assert list(splits["train"]["text"]) == make_docs(6)  # the empty document is dropped
    assert list(splits["validation"]["text"]) == make_docs(2, seed=3)


def test_carve_is_deterministic_by_document_and_near_fraction() -> None:
    docs = make_docs(200)
    ds = datasets.Dataset.from_dict({"text": docs})
    a = carve_validation(ds, 0.1, seed=0)
    b = carve_validation(ds, 0.1, seed=0)
    c = carve_validation(ds, 0.1, seed=1)
    assert list(a["validation"]["text"]) == list(b["validation"]["text"])
    assert list(a["validation"]["text"]) != list(c["validation"]["text"])
    assert sorted(all_texts(a)) == sorted(docs)
    held = sum(map(len, a["validation"]["text"])) / sum(map(len, docs))
    assert 0.09 < held < 0.11
    # documents keep their corpus order inside each split
    order = {d: i for i, d in enumerate(docs)}
    positions = [order[d] for d in a["train"]["text"]]
    assert positions == sorted(positions)


def test_carve_always_leaves_a_document_on_each_side() -> None:
    ds = datasets.Dataset.from_dict({"text": ["a" * 1000, "b"]})
    for fraction in (0.01, 0.5, 0.99):
        splits = carve_validation(ds, fraction)
        assert len(splits["train"]) == 1 and len(splits["validation"]) == 1


def test_carve_single_document_cuts_at_a_line_break() -> None:
    text = "".join(f"line {i}\n" for i in range(100))
    splits = carve_validation(datasets.Dataset.from_dict({"text": [text], "title": ["t"]}), 0.1)
    train, val = splits["train"]["text"][0], splits["validation"]["text"][0]
    assert train + val == text
    assert train.endswith("\n") and val.startswith("line ")
    assert 0.08 < len(val) / len(text) < 0.12
    assert splits["validation"]["title"] == ["t"]


def test_empty_corpus(tmp_path) -> None:
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "a.txt").write_text("")
    (folder / "b.txt").write_text("")
    with pytest.raises(DataError, match="no text"):
        load_corpus(str(folder), data_dir=tmp_path / "data")


def test_folder_without_data_files(tmp_path) -> None:
    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / "notes.md").write_text("hi")
    with pytest.raises(DataError, match=r"no \.txt, \.jsonl"):
        load_corpus(str(tmp_path / "nothing"), data_dir=tmp_path / "data")


def test_missing_text_column(tmp_path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text('{"body": "hello"}\n{"body": "world"}\n')
    with pytest.raises(DataError, match="no column 'text'.*columns: body.*--text-column"):
        load_corpus(str(path), data_dir=tmp_path / "data")


def test_text_column_that_is_not_text(tmp_path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text('{"text": 1}\n{"text": 2}\n')
    with pytest.raises(DataError, match="not text"):
        load_corpus(str(path), data_dir=tmp_path / "data")


def test_file_that_is_not_utf8(tmp_path) -> None:
    folder = write_txt_folder(tmp_path / "texts", make_docs(3))
    (folder / "latin1.txt").write_bytes("café crème\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.txt is not UTF-8 .*offset 3.*iconv"):
        load_corpus(str(folder), data_dir=tmp_path / "data")


def test_unknown_dataset_name(tmp_path) -> None:
    with pytest.raises(DataError, match="unknown dataset 'no-such-user/no-such-corpus'"):
        load_corpus("no-such-user/no-such-corpus", data_dir=tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file(tmp_path) -> None:
    folder = write_txt_folder(tmp_path / "texts", make_docs(3))
    (folder / "secret.txt").write_text("hidden\n")
    (folder / "secret.txt").chmod(0)
    with pytest.raises(DataError, match=r"cannot read .*secret\.txt: Permission denied"):
        load_corpus(str(folder), data_dir=tmp_path / "data")


def test_unreadable_file_is_one_clear_error(tmp_path, monkeypatch) -> None:
    folder = write_txt_folder(tmp_path / "texts", make_docs(3))
    real_open = open

    def denied(file, *args, **kwargs):
        if str(file).endswith("doc001.txt"):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", denied)
    with pytest.raises(DataError, match=r"cannot read .*doc001\.txt: Permission denied"):
        load_corpus(str(folder), data_dir=tmp_path / "data")


def test_a_gated_dataset_keeps_the_hubs_reason(monkeypatch, tmp_path) -> None:
    from datasets.exceptions import DatasetNotFoundError

    def gated(name, config=None):
        raise DatasetNotFoundError(f"Dataset '{name}' is a gated dataset on the Hub. You must "
                                   "be authenticated to access it.")  # fmt: skip

    monkeypatch.setattr(datasets, "load_dataset", gated)
    with pytest.raises(DataError, match="unknown dataset 'org/gated': .*gated dataset.*"
                       "authenticated"):  # fmt: skip
        load_corpus("org/gated", data_dir=tmp_path)


def test_missing_local_path(tmp_path) -> None:
    with pytest.raises(DataError, match="no such file or folder"):
        load_corpus(str(tmp_path / "missing.txt"), data_dir=tmp_path)


def test_missing_split(tmp_path) -> None:
    datasets.Dataset.from_dict({"text": make_docs(3)}).save_to_disk(str(tmp_path / "saved"))
    spec = CorpusSpec(source=str(tmp_path / "saved"), split="training")
    with pytest.raises(DataError, match="no split 'training' .*it has: train"):
        load_corpus(spec, data_dir=tmp_path)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.5])
def test_bad_val_fraction(fraction: float) -> None:
    with pytest.raises(DataError, match="val_fraction"):
        CorpusSpec(val_fraction=fraction)


def test_cache_key_follows_local_file_content(tmp_path) -> None:
    folder = write_txt_folder(tmp_path / "texts", make_docs(3))
    spec = CorpusSpec(source=str(folder))
    before = spec.cache_key()
    assert spec.cache_key() == before
    (folder / "doc000.txt").write_text("changed", encoding="utf-8")
    assert spec.cache_key() != before
    assert spec.slug == "texts"


def test_splitmix_hash_matches_the_reference_algorithm() -> None:
    """The held-out choice is a fixed hash (not numpy's RNG), so it never changes with versions."""
    from quillgpt.data.corpus import _splitmix64

    mask = (1 << 64) - 1

    def reference(x: int) -> int:
        z = (x + 0x9E3779B97F4A7C15) & mask
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        return z ^ (z >> 31)

    values = [0, 1, 2, 41, 2**40 + 7, 2**64 - 1]
    got = _splitmix64(np.array(values, dtype=np.uint64)).tolist()
    assert got == [reference(v) for v in values]
