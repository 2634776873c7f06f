"""``quill generate``: streaming, sampling options, prompts from anywhere, int8, clear errors."""

from __future__ import annotations

import io
import json
import re
import shutil

import pytest
import torch

from inference_utils import trained_run
from quillgpt.cli import main
from quillgpt.data import train_char
from quillgpt.inference import load_for_inference, stream_text
from quillgpt.model.decode_layout import DecodeLinear


@pytest.fixture(autouse=True)
def _empty_stdin(monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # pytest's stdin cannot be read


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return trained_run(tmp_path_factory.mktemp("generate"))[0]


def generate(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["generate", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def tokens_reported(err: str) -> int:
    return int(re.search(r"(\d+) tokens in", err).group(1))


def test_streams_the_continuation_and_reports_speed(run_dir, capsys):
    code, out, err = generate(
        capsys,
        str(run_dir),
        "--prompt",
        "the cat",
        "--max-new-tokens",
        "12",
        "--no-stop",
        "--seed",
        "0",
    )
    assert code == 0
    assert out.startswith("the cat") and len(out) > len("the cat")
    assert tokens_reported(err) == 12 and "tokens/s" in err


def test_greedy_is_deterministic_and_seeds_reproduce(run_dir, capsys):
    args = [str(run_dir), "--prompt", "the", "--max-new-tokens", "10", "--no-stop"]
    greedy = [generate(capsys, *args, "--temperature", "0")[1] for _ in range(2)]
    assert greedy[0] == greedy[1]
    sampled = [generate(capsys, *args, "--seed", "3", "--top-k", "5")[1] for _ in range(2)]
    assert sampled[0] == sampled[1]
    code, out, _ = generate(capsys, *args, "--seed", "3", "--top-p", "0.9", "--num-samples", "2")
    assert code == 0 and out.count("-" * 40) == 1


def test_prompt_from_file_and_stdin(run_dir, capsys, tmp_path, monkeypatch):
    (tmp_path / "p.txt").write_text("a lazy dog")
    code, out, _ = generate(
        capsys, str(run_dir), "--prompt-file", str(tmp_path / "p.txt"), "--max-new-tokens", "3"
    )
    assert code == 0 and out.startswith("a lazy dog")
    monkeypatch.setattr("sys.stdin", io.StringIO("over the"))
    code, out, _ = generate(capsys, str(run_dir), "--max-new-tokens", "3")
    assert code == 0 and out.startswith("over the")


def test_empty_prompt_starts_from_end_of_text(run_dir, capsys):
    code, out, err = generate(capsys, str(run_dir), "--max-new-tokens", "8", "--no-stop")
    assert code == 0 and tokens_reported(err) == 8 and "<|endoftext|>" not in out


def test_long_prompt_is_cropped_with_a_notice(run_dir, capsys):
    code, _, err = generate(
        capsys, str(run_dir), "--prompt", "the dog " * 20, "--max-new-tokens", "4"
    )
    assert code == 0 and "longer than the context window (32): keeping its last 32" in err


def test_int8_generation(run_dir, capsys, tmp_path):
    code, _, err = generate(
        capsys, str(run_dir), "--quantize", "int8", "--max-new-tokens", "5", "--no-stop"
    )
    assert code == 0 and "int8" in err and tokens_reported(err) == 5
    assert main(["quantize", str(run_dir), str(tmp_path / "int8")]) == 0
    code, _, err = generate(capsys, str(tmp_path / "int8"), "--max-new-tokens", "5", "--no-stop")
    assert code == 0 and "int8" in err


def test_fp32_cpu_decoding_uses_the_decode_layout(run_dir, monkeypatch):
    loaded = load_for_inference(run_dir, device="cpu")
    kwargs = dict(max_new_tokens=15, temperature=0.0, stop_at_eot=False)
    monkeypatch.setattr("quillgpt.model.decode_layout.MIN_BYTES", 1 << 62)  # nothing converts
    plain = list(stream_text(loaded, [5, 6], **kwargs))
    used = []
    forward = DecodeLinear.forward
    monkeypatch.setattr(DecodeLinear, "forward", lambda self, x: used.append(1) or forward(self, x))
    monkeypatch.setattr("quillgpt.model.decode_layout.MIN_BYTES", 0)  # the tiny layers too
    assert list(stream_text(loaded, [5, 6], **kwargs)) == plain
    assert used and type(loaded.model.lm_head) is torch.nn.Linear  # used, then put back


def test_missing_or_foreign_tokenizer_is_a_clear_error(run_dir, capsys, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    (copy / "tokenizer.json").unlink()
    code, _, err = generate(capsys, str(copy), "--prompt", "x")
    assert code == 2 and "no tokenizer.json" in err and "Traceback" not in err
    train_char(["zyxw"]).save(str(copy / "tokenizer.json"))
    code, _, err = generate(capsys, str(copy), "--prompt", "x")
    assert code == 2 and "does not match" in err
    document = json.loads((copy / "config.json").read_text())
    del document["data"]
    (copy / "config.json").write_text(json.dumps(document))
    train_char(["z" * 200 + "".join(map(chr, range(200, 400)))]).save(str(copy / "tokenizer.json"))
    code, _, err = generate(capsys, str(copy), "--prompt", "x")
    assert code == 2 and "not the tokenizer this model was trained with" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--device", "cuda"], "not available"),
        (["--temperature", "-1"], "--temperature"),
        (["--top-p", "1.5"], "--top-p"),
        (["--quantize", "int8", "--device", "mps"], "CPU only"),
    ],
)
def test_bad_requests_exit_2(run_dir, capsys, args, message, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    monkeypatch.setattr("quillgpt.device.mps_available", lambda: True)
    code, _, err = generate(capsys, str(run_dir), "--prompt", "a", *args)
    assert code == 2 and message in err


def test_run_dir_without_weights_points_to_best(run_dir, capsys, tmp_path):
    (tmp_path / "best").symlink_to(run_dir / "best")
    code, _, err = generate(capsys, str(tmp_path), "--prompt", "a")
    assert code == 2 and "did you mean" in err


def test_threads_option(run_dir, capsys, monkeypatch):
    calls = []
    monkeypatch.setattr("torch.set_num_threads", calls.append)
    code, _, _ = generate(capsys, str(run_dir), "--prompt", "a", "--max-new-tokens", "2",
                          "--threads", "1")  # fmt: skip
    assert code == 0 and calls == [1]
    code, _, err = generate(capsys, str(run_dir), "--prompt", "a", "--threads", "0")
    assert code == 2 and "--threads must be >= 1" in err


def test_cpu_decoding_adapts_its_threads_without_changing_the_text(run_dir, capsys, monkeypatch):
    from quillgpt.threads import AdaptiveThreads

    steps, counts = [], []
    step_done = AdaptiveThreads.step_done

    def spy(self, seconds):
        steps.append(seconds)
        step_done(self, seconds)
        counts.append(torch.get_num_threads())

    monkeypatch.setattr(AdaptiveThreads, "step_done", spy)
    args = [str(run_dir), "--prompt", "the", "--max-new-tokens", "12", "--no-stop"]
    threads = torch.get_num_threads()
    try:
        adaptive = generate(capsys, *args, "--temperature", "0")[1]
        assert len(steps) == 11 and all(s > 0 for s in steps)  # every decode step, no prefill
        if threads > 1:
            assert min(counts) < threads  # the first probe ran a step with fewer threads
        steps.clear()
        fixed = generate(capsys, *args, "--temperature", "0", "--threads", "1")[1]
    finally:
        torch.set_num_threads(threads)
    assert fixed == adaptive
