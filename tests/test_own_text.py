"""The README's "Train on your own text": its two commands, as written, on a folder of .txt files.

Only the model is made tiny and the budget short (options appended to the README's train
command, which override its own): the data path, the preset, the run directory and the
generation are the README's.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

from quillgpt.cli import main as cli_main
from train_utils import write_corpus

ROOT = Path(__file__).resolve().parents[1]
TINY = ("--n_layer", "1", "--n_head", "2", "--n_embd", "32", "--block_size", "32",
        "--batch_size", "4", "--max_time", "2s", "--eval_tokens", "256", "--num_samples", "1",
        "--sample_tokens", "16", "--compile", "off", "--device", "cpu", "--threads", "1",
        "--progress", "false")  # fmt: skip


@pytest.fixture(autouse=True)
def _restore_threads() -> Iterator[None]:
    import torch

    threads = torch.get_num_threads()  # the run trains on one thread (--threads 1)
    yield
    torch.set_num_threads(threads)


def readme_commands() -> list[list[str]]:
    """The command lines of the README section, split as a shell would."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Train on your own text", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```console\n(.*?)```", section, re.S).group(1)
    return [shlex.split(line) for line in block.splitlines() if line.startswith("quill ")]


def test_a_folder_of_text_files_to_a_run_and_a_sample_in_two_commands(tmp_path, monkeypatch):
    train, generate = readme_commands()
    assert train[:2] == ["quill", "train"] and generate[:2] == ["quill", "generate"]
    monkeypatch.chdir(tmp_path)  # the README's relative paths: my_texts/, runs/, data/
    monkeypatch.delenv("QUILLGPT_DATA_DIR", raising=False)
    write_corpus(Path(train[train.index("--data") + 1]), docs=10, lines=40)
    config = train.index("--config") + 1
    train[config] = str(ROOT / train[config])
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert cli_main([*train[1:], *TINY]) == 0, err.getvalue()
    summary = out.getvalue()
    assert "bits/byte" in summary and "sample:" in summary and "run directory: runs/mine" in summary
    assert len(list((tmp_path / "data" / "prepared").iterdir())) == 1

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        assert cli_main([*generate[1:], "--max-new-tokens", "20", "--seed", "0"]) == 0
    prompt = generate[generate.index("--prompt") + 1]
    assert out.getvalue().startswith(prompt) and len(out.getvalue()) > len(prompt) + 5
