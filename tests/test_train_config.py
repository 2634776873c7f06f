"""Training configuration: durations, validation, config files, command-line overrides, presets."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from quillgpt.cli import main as cli_main
from quillgpt.config import ModelConfig, field_doc
from quillgpt.errors import ConfigError, QuillError
from quillgpt.training.config import (
    MODEL_FIELDS,
    TRAIN_FIELDS,
    TrainConfig,
    build_configs,
    load_config_file,
    parse_duration,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("5m", 300.0), ("1h30m", 5400.0), ("90s", 90.0), ("300", 300.0), (120, 120.0),
     ("2.5 min", 150.0), ("1h", 3600.0), (None, None), ("none", None)],
)  # fmt: skip
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["5x", "m5", "-3", "0", "five minutes", "5m garbage"])
def test_parse_duration_rejects_nonsense(text):
    with pytest.raises(ValueError, match="max_time"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("lr", -1.0, "lr: Input should be greater than 0, got -1.0"),
     ("lr", float("inf"), "lr: Input should be a finite number"),
     ("batch_size", 0, "batch_size: Input should be greater than 0, got 0"),
     ("schedule", "step", "schedule: Input should be 'cosine', 'linear', 'constant' or 'wsd'"),
     ("precision", "fp8", "precision: Input should be 'auto', 'fp32', 'bf16' or 'fp16'"),
     ("min_lr_ratio", 2.0, "min_lr_ratio: Input should be less than or equal to 1"),
     ("beta2", 1.0, "beta2: Input should be less than 1"),
     ("max_steps", 0, "max_steps: Input should be greater than 0"),
     ("batch_size", 2.5, "batch_size: Input should be a valid integer, got 2.5"),
     ("grad_clip", "big", "grad_clip: Input should be a valid number, got 'big'"),
     ("dropout", "0.1", None), ("bias", "false", None), ("final_eval", 1, "valid boolean, got 1"),
     ("tokenizer", "wordpiece", "tokenizer must be 'bpe', 'char' or a tokenizer.json path")],
)  # fmt: skip
def test_wrong_types_and_values_name_the_field_and_the_file(field, value, message):
    section = "model" if field in MODEL_FIELDS else "train"
    with pytest.raises(ConfigError) as caught:
        build_configs(**{section: {field: value}}, source="runs.toml")
    text = str(caught.value)
    assert text.startswith(f"runs.toml [{section}]: ") and "\n" not in text
    assert field in text and (message is None or message in text), text
    with pytest.raises(ValueError):  # built directly in Python, the same check
        (ModelConfig if section == "model" else TrainConfig)(**{field: value})


def test_train_config_round_trips_and_rejects_unknown_keys():
    cfg = TrainConfig(max_time="5m", lr=3e-3)
    assert cfg.max_time == 300.0
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="unknown TrainConfig field 'learning_rate'"):
        TrainConfig.from_dict({"learning_rate": 1e-3})
    with pytest.raises(ConfigError, match="x.toml \\[model\\]: unknown ModelConfig field "
                       "'n_layers'; did you mean 'n_layer'"):  # fmt: skip
        build_configs({"n_layers": 3}, source="x.toml")


def test_every_field_is_documented_and_names_do_not_collide():
    for cls in (ModelConfig, TrainConfig):
        for name in cls.__pydantic_fields__:
            assert len(field_doc(cls, name)) > 10, (cls.__name__, name)
    assert not set(TRAIN_FIELDS) & set(MODEL_FIELDS)


@pytest.mark.parametrize("suffix", [".toml", ".yaml", ".json"])
def test_config_files_in_three_formats(tmp_path, suffix):
    body = {
        ".toml": '[model]\npreset = "tiny"\nn_layer = 3\n[train]\nlr = 0.002\nmax_time = "2m"\n',
        ".yaml": "model:\n  preset: tiny\n  n_layer: 3\ntrain:\n  lr: 0.002\n  max_time: 2m\n",
        ".json": json.dumps(
            {"model": {"preset": "tiny", "n_layer": 3}, "train": {"lr": 0.002, "max_time": "2m"}}
        ),
    }[suffix]
    path = tmp_path / f"run{suffix}"
    path.write_text(body)
    sections = load_config_file(path)
    model, train = build_configs(sections["model"], sections["train"])
    assert model.n_layer == 3 and model.n_embd == 64  # the preset, overridden
    assert train.lr == 0.002 and train.max_time == 120.0


def test_config_file_errors(tmp_path):
    with pytest.raises(QuillError, match="does not exist"):
        load_config_file(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\n")
    with pytest.raises(QuillError, match="could not parse"):
        load_config_file(bad)
    for body in ("model = 5\n", '[model]\npreset = ["tiny"]\n', "[train]\nlr = 1\n[model]\n"):
        odd = tmp_path / "odd.toml"
        odd.write_text(body)
        if body.startswith("[train]"):  # an empty section is fine
            assert load_config_file(odd)["model"] == {}
            continue
        with pytest.raises(QuillError, match="must be a table|unknown model preset"):
            load_config_file(odd)
    extra = tmp_path / "extra.toml"
    extra.write_text("[optimizer]\nlr = 1\n")
    with pytest.raises(QuillError, match=r"unknown section\(s\) \['optimizer'\]"):
        load_config_file(extra)
    preset = tmp_path / "preset.toml"
    preset.write_text('[model]\npreset = "huge"\n')
    with pytest.raises(QuillError, match="unknown model preset 'huge'"):
        load_config_file(preset)
    ini = tmp_path / "run.ini"
    ini.write_text("")
    with pytest.raises(QuillError, match=r"must end in \.toml"):
        load_config_file(ini)


@pytest.mark.parametrize("preset", sorted(p.name for p in CONFIGS.glob("*.toml")))
def test_presets_are_valid(preset):
    sections = load_config_file(CONFIGS / preset)
    model, train = build_configs(sections["model"], sections["train"])
    assert train.max_steps or train.max_time


def test_presets_cover_char_bpe_and_gpu():
    names = {p.stem for p in CONFIGS.glob("*.toml")}
    assert {"shakespeare-char-cpu", "shakespeare-bpe-cpu", "gpt2-124m"} <= names


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = cli_main(["train", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_command_line_overrides_the_file(capsys):
    code, out, _ = run_cli(
        capsys, "--config", str(CONFIGS / "shakespeare-bpe-cpu.toml"), "--n_layer", "6",
        "--lr", "1e-3", "--max-time", "90s", "--gradient_checkpointing", "--print_config",
    )  # fmt: skip
    assert code == 0
    document = json.loads(out)
    assert document["model"]["n_layer"] == 6
    assert document["model"]["n_embd"] == 192  # from the file
    assert document["train"]["lr"] == 1e-3 and document["train"]["max_time"] == 90.0
    assert document["train"]["gradient_checkpointing"] is True


def test_command_line_errors_are_one_line(capsys):
    code, _, err = run_cli(capsys, "--n_embd", "100", "--n_head", "3", "--print_config")
    assert code == 2 and "n_embd (100) must be divisible by n_head (3)" in err
    assert len(err.strip().splitlines()) == 1
    code, _, err = run_cli(capsys, "--max_time", "soon", "--print_config")
    assert code == 2 and "--max_time: max_time must be a duration" in err
    code, _, err = run_cli(capsys, "--bias", "maybe", "--print_config")
    assert code == 2 and "--bias: Input should be a valid boolean" in err
    assert len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit):
        run_cli(capsys, "--schedule", "stepwise")
    assert "invalid choice: 'stepwise'" in capsys.readouterr().err


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit):
        cli_main(["train", "--help"])
    text = capsys.readouterr().out
    for name in TRAIN_FIELDS + tuple(f for f in MODEL_FIELDS if f != "vocab_size"):
        assert f"--{name}" in text, name
    assert "torchrun" in text


def test_make_demo_prepares_what_the_demo_preset_trains_on(monkeypatch):
    import re

    from quillgpt.data import DataOptions, token_options

    makefile = (CONFIGS.parent / "Makefile").read_text()
    demo_config = re.search(r"^DEMO_CONFIG \?= (\S+)$", makefile, re.M).group(1)
    prepare_argv = re.search(r"^\t\$\(BIN\)/quill prepare(.*)$", makefile, re.M).group(1).split()

    class Asked(Exception):  # stops `quill prepare` at the options it would prepare
        pass

    def stop(options, **_):
        raise Asked(options)

    monkeypatch.setattr(DataOptions, "prepare_data", stop)
    with pytest.raises(Asked) as asked:
        cli_main(["prepare", *prepare_argv])
    sections = load_config_file(CONFIGS.parent / demo_config)
    _, train = build_configs(sections["model"], sections["train"])
    prepared = dataclasses.asdict(asked.value.args[0])
    assert token_options(train.to_dict()) == token_options(prepared)
    assert train.data == "shakespeare"
