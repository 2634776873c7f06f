"""``quill eval``: the same loss as the trainer's final evaluation, bits per byte, int8, errors."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from inference_utils import trained_run
from quillgpt.cli import main
from train_utils import write_corpus


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return trained_run(tmp_path_factory.mktemp("eval"))


def evaluate(capsys, *args: str) -> tuple[int, dict, str]:
    code = main(["eval", *args, "--json"])
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if code == 0 else {}), captured.err


def test_matches_the_trainers_full_evaluation(run, capsys):
    run_dir, data, result = run
    code, record, _ = evaluate(capsys, str(run_dir))
    assert code == 0
    assert record["loss"] == pytest.approx(result.final_eval.loss, rel=1e-5)
    assert record["perplexity"] == pytest.approx(math.exp(record["loss"]))
    tokens_per_byte = (data.val_tokens - 1) / data.val_bytes
    assert record["bpb"] == pytest.approx(record["loss"] / math.log(2) * tokens_per_byte)
    assert record["targets"] == data.val_tokens - 1
    assert record["data"] == str(data.directory)


def test_text_report_and_max_batches(run, capsys):
    run_dir = run[0]
    assert main(["eval", str(run_dir), "--max-batches", "1", "--batch-size", "2"]) == 0
    out = capsys.readouterr().out
    assert "bits/byte" in out and "perplexity" in out and "64 tokens" in out


def test_int8_loss_is_close_and_saved_int8_gives_the_same(run, capsys, tmp_path):
    run_dir = run[0]
    _, fp32, _ = evaluate(capsys, str(run_dir))
    code, int8, _ = evaluate(capsys, str(run_dir), "--quantize", "int8")
    assert code == 0 and int8["quantized"] == "int8"
    assert abs(int8["loss"] - fp32["loss"]) < 0.02 * fp32["loss"]
    assert main(["quantize", str(run_dir), str(tmp_path / "int8")]) == 0
    capsys.readouterr()
    code, saved, _ = evaluate(capsys, str(tmp_path / "int8"))
    assert code == 0 and saved["loss"] == pytest.approx(int8["loss"], rel=1e-6)


def test_another_corpus_is_tokenized_with_the_checkpoint_tokenizer(run, capsys, tmp_path):
    run_dir, data, _ = run
    corpus = write_corpus(tmp_path / "other", seed=0, docs=4, lines=30)
    code, record, _ = evaluate(
        capsys, str(run_dir), "--dataset", str(corpus), "--data-dir", str(tmp_path / "data")
    )
    assert code == 0 and record["data"] != str(data.directory) and record["bpb"] > 0


def test_dataset_takes_the_corpus_options_of_prepare(run, capsys, tmp_path):
    run_dir = run[0]
    stories = tmp_path / "stories.jsonl"
    lines = (line for doc in range(12) for line in write_corpus_docs(doc))
    stories.write_text("".join(json.dumps({"story": text}) + "\n" for text in lines))
    common = (
        "--dataset",
        str(stories),
        "--text-column",
        "story",
        "--data-dir",
        str(tmp_path / "d"),
    )
    code, tenth, _ = evaluate(capsys, str(run_dir), *common)
    assert code == 0 and tenth["bpb"] > 0
    code, fifth, _ = evaluate(capsys, str(run_dir), *common, "--val-fraction", "0.3")
    assert code == 0 and fifth["targets"] > tenth["targets"]  # more documents held out
    assert fifth["data"] != tenth["data"]  # another split is another prepared folder
    # the folder quill prepare builds from the same options, with the checkpoint's tokenizer
    tokenizer = str(run_dir / "tokenizer.json")
    prepare = ["prepare", str(stories), "--text-column", "story", "--val-fraction", "0.3",
               "--tokenizer", tokenizer, "--data-dir", str(tmp_path / "d")]  # fmt: skip
    assert main(prepare) == 0
    assert fifth["data"] in capsys.readouterr().out


def write_corpus_docs(doc: int) -> list[str]:
    """A few sentences of document ``doc``, different from the others."""
    return [f"story {doc}: the cat {doc % 5} sat on mat {doc * 7 % 11} and slept {i} times."
            for i in range(4)]  # fmt: skip


def test_run_without_recorded_data_asks_for_dataset(run, capsys, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run[0], copy)
    document = json.loads((copy / "config.json").read_text())
    del document["data"]
    (copy / "config.json").write_text(json.dumps(document))
    code, _, err = evaluate(capsys, str(copy))
    assert code == 2 and "--dataset" in err
