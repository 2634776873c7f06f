"""One data spec for ``quill prepare`` and ``quill train``: the same options name the same cache.

Every kind of source ``prepare`` takes is prepared, then named to ``train`` with its own
spellings; training must open the folder ``prepare`` built (loading the corpus again would fail
the test), and a resumed run must refuse any changed option that decides the token ids.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import datasets
import pytest

from corpus_utils import make_docs
from quillgpt.cli import build_parser
from quillgpt.cli import main as cli_main
from quillgpt.config import field_doc
from quillgpt.data import (
    DATA_FIELDS,
    DEFAULT_BPE_VOCAB,
    TOKEN_FIELDS,
    CorpusSpec,
    DataOptions,
    token_options,
)
from quillgpt.data import prepare as prepare_module
from quillgpt.errors import CheckpointError
from quillgpt.training import TrainConfig
from quillgpt.training.config import TRAIN_FIELDS
from quillgpt.training.run_dir import check_resume_data

pytestmark = pytest.mark.usefixtures("hub_offline")

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

# One optimiser step of a tiny model on one thread: what the options resolve to is the point.
TINY = ("--block_size", "16", "--n_layer", "1", "--n_head", "2", "--n_embd", "16",
        "--batch_size", "2", "--max_steps", "1", "--eval_tokens", "64", "--num_samples", "0",
        "--final_eval", "false", "--precision", "fp32", "--compile", "off", "--device", "cpu",
        "--progress", "false", "--threads", "1")  # fmt: skip


@pytest.fixture(autouse=True)
def _restore_threads() -> Iterator[None]:
    import torch

    threads = torch.get_num_threads()  # the runs train on one thread (--threads 1)
    yield
    torch.set_num_threads(threads)


def quill(*argv: str) -> tuple[int, str, str]:
    """``quill`` in-process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli_main(list(argv))
    return code, out.getvalue(), err.getvalue()


def rows(n: int, seed: int = 0) -> list[dict[str, object]]:
    return [{"story": doc, "id": i} for i, doc in enumerate(make_docs(n, seed=seed))]


def txt_folder(root: Path) -> str:
    folder = root / "texts"
    folder.mkdir()
    for i, doc in enumerate(make_docs(10)):
        (folder / f"doc{i}.txt").write_text(doc, encoding="utf-8")
    return str(folder)


def txt_file(root: Path) -> str:
    (root / "book.txt").write_text("".join(make_docs(30)), encoding="utf-8")
    return str(root / "book.txt")


def jsonl_file(root: Path) -> str:
    lines = "".join(json.dumps(row) + "\n" for row in rows(12))
    (root / "stories.jsonl").write_text(lines, encoding="utf-8")
    return str(root / "stories.jsonl")


def json_file(root: Path) -> str:
    docs = [{"text": doc} for doc in make_docs(12)]
    (root / "corpus.json").write_text(json.dumps(docs), encoding="utf-8")
    return str(root / "corpus.json")


def parquet_file(root: Path) -> str:
    datasets.Dataset.from_list(rows(12)).to_parquet(str(root / "corpus.parquet"))
    return str(root / "corpus.parquet")


def saved_folder(root: Path) -> str:
    saved = datasets.DatasetDict(
        main=datasets.Dataset.from_list(rows(10)),
        dev=datasets.Dataset.from_list(rows(3, seed=1)),
    )
    saved.save_to_disk(str(root / "saved"))
    return str(root / "saved")


def hub_name(root: Path) -> str:
    return "someone/stories"  # answered by fake_hub, offline


# (source, prepare's options, train's options: the same values in each verb's documented
# spelling), and what the prepared corpus must record of them.
CASES: dict[str, tuple[Callable[[Path], str], tuple[str, ...], tuple[str, ...], dict]] = {
    "txt folder, the defaults": (txt_folder, (), (), {"kind": "files"}),
    "txt file, char": (
        txt_file, ("--tokenizer", "char"), ("--tokenizer", "char"), {"kind": "files"}),
    "jsonl, another text column and vocabulary": (
        jsonl_file, ("--text-column", "story", "--vocab-size", "300"),
        ("--text_column", "story", "--tokenizer_vocab", "300"), {"text_column": "story"}),
    "json, another held-out share and seed": (
        json_file, ("--val-fraction", "0.3", "--seed", "2"),
        ("--val_fraction", "0.3", "--val_seed", "2"), {"val_fraction": 0.3, "seed": 2}),
    "parquet, another text column": (
        parquet_file, ("--text-column", "story", "--tokenizer", "char"),
        ("--text-column", "story", "--tokenizer", "char"), {"kind": "files"}),
    "save_to_disk folder, named splits": (
        saved_folder, ("--split", "main", "--val-split", "dev", "--text-column", "story"),
        ("--split", "main", "--val_split", "dev", "--text_column", "story"),
        {"kind": "disk", "split": "main", "val_split": "dev"}),
    "hub name, configuration, split and column": (
        hub_name, ("--config", "en", "--val-split", "dev", "--text-column", "story"),
        ("--data_config", "en", "--val_split", "dev", "--text_column", "story"),
        {"kind": "hub", "config": "en", "val_split": "dev"}),
}  # fmt: skip


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """``datasets.load_dataset`` answering ``someone/stories`` (config ``en``) without a network.

    Any other name goes to the real function (local files are read with it too).
    """
    real = datasets.load_dataset

    def load_dataset(name: str, config: str | None = None, **kwargs) -> datasets.DatasetDict:
        if name != "someone/stories":
            return real(name, config, **kwargs)
        if config != "en":
            raise ValueError(f"someone/stories has no config {config!r}")
        return datasets.DatasetDict(
            train=datasets.Dataset.from_list(rows(10)),
            dev=datasets.Dataset.from_list(rows(3, seed=1)),
        )

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)


@pytest.mark.parametrize("case", list(CASES))
def test_train_opens_the_folder_prepare_built(case, tmp_path, monkeypatch, fake_hub):
    make_source, prepare_options, train_options, recorded = CASES[case]
    source = make_source(tmp_path)
    data_dir = str(tmp_path / "data")
    code, out, err = quill("prepare", source, "--data-dir", data_dir, *prepare_options)
    assert code == 0, err
    built = re.search(r"files: (.+)/ \(", out).group(1)
    meta = json.loads((Path(built) / "meta.json").read_text())
    assert recorded.items() <= meta["corpus"].items()
    vocab = "300" if "300" in prepare_options else str(DEFAULT_BPE_VOCAB)
    assert meta["tokenizer"].get("vocab_size", int(vocab)) == int(vocab)

    def rebuilt(*args, **kwargs):
        raise AssertionError("quill train loaded the corpus again instead of the cache")

    monkeypatch.setattr(prepare_module, "load_corpus", rebuilt)
    run = tmp_path / "run"
    argv = ("train", "--data", source, "--data_dir", data_dir, *train_options, *TINY)
    code, _, err = quill(*argv, "--out_dir", str(run))
    assert code == 0, err
    document = json.loads((run / "config.json").read_text())
    assert document["data"]["prepared"] == built
    assert [p.name for p in (tmp_path / "data" / "prepared").iterdir()] == [Path(built).name]
    code, out, _ = quill("prepare", source, "--data-dir", data_dir, *prepare_options)
    assert code == 0 and "reused the cache" in out


def test_both_verbs_take_every_data_option_under_the_same_names():
    values = {"data_config": "en", "split": "main", "val_split": "dev", "text_column": "story",
              "val_fraction": "0.2", "val_seed": "3", "tokenizer": "char",
              "tokenizer_vocab": "300", "data_dir": "d"}  # fmt: skip
    assert set(values) == set(DATA_FIELDS) - {"data"}
    parser = build_parser()
    for spell in (lambda name: name, lambda name: name.replace("_", "-")):
        flags = [part for name, value in values.items() for part in (f"--{spell(name)}", value)]
        prepare = vars(parser.parse_args(["prepare", "corpus", *flags]))
        train = vars(parser.parse_args(["train", "--data", "corpus", *flags]))
        assert {k: prepare[k] for k in DATA_FIELDS} == {k: train[k] for k in DATA_FIELDS}
    assert TRAIN_FIELDS[: len(DATA_FIELDS)] == DATA_FIELDS  # inherited: one definition
    for name in DATA_FIELDS:
        assert field_doc(TrainConfig, name) == field_doc(DataOptions, name) != ""


def test_prepare_keeps_its_older_spellings():
    parser = build_parser()
    old = vars(
        parser.parse_args(["prepare", "--config", "en", "--seed", "3", "--vocab-size", "300"])
    )
    new = ["prepare", "--data-config", "en", "--val-seed", "3", "--tokenizer-vocab", "300"]
    assert {k: old[k] for k in DATA_FIELDS if k in old} == {
        k: v for k, v in vars(parser.parse_args(new)).items() if k in DATA_FIELDS
    }


def test_one_default_vocabulary_everywhere():
    import inspect

    from quillgpt.data import prepare_data, train_bpe

    assert DEFAULT_BPE_VOCAB == 2048  # what the CPU presets and `make demo` train on
    assert DataOptions().tokenizer_vocab == TrainConfig().tokenizer_vocab == DEFAULT_BPE_VOCAB
    assert inspect.signature(train_bpe).parameters["vocab_size"].default == DEFAULT_BPE_VOCAB
    assert inspect.signature(prepare_data).parameters["vocab_size"].default is None  # = default
    assert DataOptions().corpus_spec() == CorpusSpec()  # the built-in corpus, as prepare's


def test_a_preset_vocabulary_is_ignored_for_char_but_a_typed_one_is_refused():
    preset = str(CONFIGS / "shakespeare-bpe-cpu.toml")  # tokenizer_vocab = 2048
    code, out, _ = quill("train", "--config", preset, "--tokenizer", "char", "--print_config")
    assert code == 0 and json.loads(out)["train"]["tokenizer"] == "char"
    code, _, err = quill(
        "train", "--tokenizer", "char", "--tokenizer_vocab", "300", "--print_config"
    )
    assert code == 2 and "--tokenizer_vocab applies to --tokenizer bpe only" in err


CHANGED = {"data": "elsewhere", "data_config": "en", "split": "main", "val_split": "dev",
           "text_column": "story", "val_fraction": 0.2, "val_seed": 1, "tokenizer": "char",
           "tokenizer_vocab": 4096}  # fmt: skip


def saved_run(path: Path, train: dict) -> Path:
    """A run directory as ``check_resume_data`` reads it: config.json and a train_state.pt."""
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model": {}, "train": train}))
    (path / "train_state.pt").write_bytes(b"")
    return path


@pytest.mark.parametrize("field", TOKEN_FIELDS)
def test_resume_refuses_every_changed_option_that_decides_the_ids(tmp_path, field):
    assert set(CHANGED) == set(TOKEN_FIELDS)  # data_dir only says where the cache lives
    cfg = TrainConfig(out_dir=str(tmp_path / "run"))
    saved_run(tmp_path / "run", cfg.to_dict())
    check_resume_data(cfg.out_dir, dataclasses.replace(cfg, data_dir="elsewhere"))
    with pytest.raises(CheckpointError, match=f"it was trained with --{field} "):
        check_resume_data(cfg.out_dir, dataclasses.replace(cfg, **{field: CHANGED[field]}))


def test_resume_of_a_run_saved_before_the_shared_options(tmp_path):
    """Older runs recorded data, tokenizer and a vocabulary (2048 even for char), nothing else."""
    run = saved_run(
        tmp_path / "run", {"data": "corpus", "tokenizer": "char", "tokenizer_vocab": 2048}
    )
    cfg = TrainConfig(out_dir=str(run), data="corpus", tokenizer="char", tokenizer_vocab=4096)
    check_resume_data(run, cfg)  # the defaults it was trained with; no vocabulary for char
    with pytest.raises(CheckpointError, match="--text_column text, not story"):
        check_resume_data(run, dataclasses.replace(cfg, text_column="story"))
    assert token_options({"tokenizer": "char"})["tokenizer_vocab"] is None
