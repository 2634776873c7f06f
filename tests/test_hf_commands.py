"""``quill export-hf``, ``quill import-hf`` and ``quill train --init_from``: the user journeys.

Offline: the "GPT-2" is a small random ``GPT2LMHeadModel`` with a GPT-2-style byte-level BPE
tokenizer, both written locally with ``save_pretrained``.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from quillgpt import load_checkpoint
from quillgpt.cli import main
from quillgpt.data.tokenizer import EOT, load_tokenizer, tokenizer_sha256, train_bpe
from train_utils import write_corpus

transformers = pytest.importorskip("transformers")

TINY = ["--batch_size", "4", "--eval_interval", "2", "--eval_tokens", "256", "--num_samples", "0",
        "--precision", "fp32", "--compile", "off", "--device", "cpu", "--progress", "false",
        "--final_eval", "false", "--threads", "1", "--log_interval", "1"]  # fmt: skip


@pytest.fixture(autouse=True)
def _empty_stdin(monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(""))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("hf") / "texts")


@pytest.fixture(scope="module")
def gpt2_dir(corpus, tmp_path_factory) -> Path:
    """A GPT-2 ``save_pretrained`` folder: random weights, a BPE tokenizer of the corpus."""
    texts = [p.read_text() for p in sorted(corpus.glob("*.txt"))]
    tokenizer = transformers.GPT2TokenizerFast(tokenizer_object=train_bpe(texts, vocab_size=320))
    tokenizer.add_special_tokens({"eos_token": EOT, "bos_token": EOT})
    config = transformers.GPT2Config(
        vocab_size=len(tokenizer), n_positions=64, n_layer=2, n_head=2, n_embd=32,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("hf") / "gpt2"
    transformers.GPT2LMHeadModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def quill(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def train_from(gpt2_dir: Path, corpus: Path, out: Path, capsys, *extra: str):
    return quill(
        capsys, "train", "--init_from", str(gpt2_dir), "--data", str(corpus), "--out_dir",
        str(out), "--data_dir", str(out.parent / "data"), "--block_size", "32", *TINY, *extra,
    )  # fmt: skip


@pytest.fixture(scope="module")
def fine_tuned(gpt2_dir, corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hf") / "run"
    code = main(["train", "--init_from", str(gpt2_dir), "--data", str(corpus), "--out_dir",
                 str(out), "--data_dir", str(out.parent / "data"), "--block_size", "32",
                 "--max_steps", "4", "--lr", "1e-3", *TINY])  # fmt: skip
    assert code == 0
    return out


def test_init_from_starts_from_the_weights_and_tokenizer(gpt2_dir, corpus, tmp_path, capsys):
    code, _, err = train_from(gpt2_dir, corpus, tmp_path / "run", capsys, "--max_steps", "1",
                              "--lr", "1e-30")  # fmt: skip
    assert code == 0, err
    hf = transformers.GPT2LMHeadModel.from_pretrained(gpt2_dir).eval()
    run = load_checkpoint(tmp_path / "run")
    assert run.config.block_size == 32 and run.config.n_layer == 2  # cropped, and GPT-2's shape
    idx = torch.randint(0, run.config.vocab_size, (2, 32))
    with torch.no_grad():  # a learning rate of 1e-30 leaves the imported weights as they were
        assert_close(run(idx)[0], hf(idx).logits, atol=1e-4, rtol=0)
    theirs = load_tokenizer(gpt2_dir / "tokenizer.json")
    ours = load_tokenizer(tmp_path / "run" / "tokenizer.json")
    assert tokenizer_sha256(ours) == tokenizer_sha256(theirs)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["train"]
    assert saved["init_from"] == str(gpt2_dir)


def test_a_fine_tuned_run_is_an_ordinary_run(fine_tuned, tmp_path, capsys):
    first = json.loads((fine_tuned / "metrics.jsonl").read_text().splitlines()[0])
    assert first["step"] >= 1
    code, out, err = quill(capsys, "generate", str(fine_tuned), "--prompt", "the cat",
                           "--max-new-tokens", "6", "--temperature", "0")  # fmt: skip
    assert code == 0 and out.startswith("the cat"), err
    code, out, err = quill(capsys, "eval", str(fine_tuned))
    assert code == 0 and "bits/byte" in out + err, err
    code, _, err = quill(capsys, "quantize", str(fine_tuned), str(tmp_path / "int8"))
    assert code == 0, err
    code, _, err = quill(capsys, "train", "--resume", "--out_dir", str(fine_tuned),
                         "--max_steps", "6")  # fmt: skip
    assert code == 0, err
    last = json.loads((fine_tuned / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 6


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (("--n_layer", "3"), "drop --n_layer 3 (the model has 2)"),
        (("--block_size", "128"), "--block_size 128 is longer than the 64 positions"),
        (("--tokenizer", "char"), "--init_from uses the tokenizer of"),
    ],
)
def test_init_from_refuses_what_would_not_be_the_model(
    gpt2_dir, corpus, tmp_path, capsys, extra, says
):
    args = ["train", "--init_from", str(gpt2_dir), "--data", str(corpus), "--out_dir",
            str(tmp_path / "run"), "--max_steps", "1", *TINY, *extra]  # fmt: skip
    code, _, err = quill(capsys, *args)
    assert code == 2 and says in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_export_then_import_gives_the_same_generations(fine_tuned, tmp_path, capsys):
    code, out, err = quill(capsys, "export-hf", str(fine_tuned), str(tmp_path / "hf"))
    assert code == 0 and "gpt2" in out, err
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ours = load_checkpoint(fine_tuned)
    idx = torch.randint(0, ours.config.vocab_size, (2, 20))
    with torch.no_grad():
        assert_close(hf(idx).logits, ours(idx)[0], atol=1e-4, rtol=0)
    code, out, err = quill(capsys, "import-hf", str(tmp_path / "hf"), str(tmp_path / "back"))
    assert code == 0 and "2 layers x 32" in out, err
    args = ["--prompt", "the dog", "--max-new-tokens", "8", "--temperature", "0", "--no-stop"]
    original = quill(capsys, "generate", str(fine_tuned), *args)[1]
    imported = quill(capsys, "generate", str(tmp_path / "back"), *args)[1]
    assert imported == original and len(original) > len("the dog")


@pytest.mark.parametrize(
    ("verb", "make", "says"),
    [
        ("export-hf", lambda t, run: ("missing", "out"), "no config.json in missing"),
        ("export-hf", lambda t, run: (run, "taken"), "taken already exists"),
        ("import-hf", lambda t, run: (run, "out"), "is a quillgpt run already"),
        ("import-hf", lambda t, run: ("./missing", "out"), "not a directory written by"),
    ],
)
def test_verb_errors_are_one_line_and_write_nothing(
    fine_tuned, tmp_path, monkeypatch, capsys, verb, make, says
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("keep")
    code, _, err = quill(capsys, verb, *make(tmp_path, str(fine_tuned)))
    assert code == 2 and says in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]  # no staging folder left
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["mine.txt"]


def test_a_hub_name_offline_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    code, _, err = quill(capsys, "import-hf", "no-such-user/no-such-model", "out")
    assert code == 2 and "the Hugging Face hub cannot provide it" in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_missing_transformers_says_which_install(fine_tuned, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers now fails
    code, _, err = quill(capsys, "export-hf", str(fine_tuned), str(tmp_path / "out"))
    assert code == 2 and "pip install 'quillgpt[hf]'" in err, err
    assert not (tmp_path / "out").exists()


def test_help_names_the_directories(capsys):
    for verb, words in (("export-hf", "out_dir"), ("import-hf", "out_run")):
        with pytest.raises(SystemExit) as exit_info:
            main([verb, "--help"])
        assert exit_info.value.code == 0 and words in capsys.readouterr().out


def test_a_model_without_an_equivalent_is_refused_before_writing(tmp_path, capsys):
    from quillgpt import DecoderLM, ModelConfig, save_checkpoint
    from quillgpt.data.tokenizer import train_char

    tokenizer = train_char(["abc"])
    config = ModelConfig(vocab_size=8, block_size=8, n_layer=1, n_head=1, n_embd=8, qk_norm=True)
    save_checkpoint(DecoderLM(config), tmp_path / "run", tokenizer)
    code, _, err = quill(capsys, "export-hf", str(tmp_path / "run"), str(tmp_path / "out"))
    assert code == 2 and "train with qk_norm=false to export" in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
