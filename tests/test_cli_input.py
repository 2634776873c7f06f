"""The command line's edges: no abbreviated options, --debug, and config files of any shape."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quillgpt.cli import main as cli_main
from quillgpt.errors import QuillError
from quillgpt.training.config import MODEL_FIELDS, TRAIN_FIELDS, build_configs, load_config_file


def test_an_abbreviated_option_is_an_error_not_another_option(tmp_path, capsys):
    # `--data` used to be taken for `--data-dir` by argparse's prefix matching
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["prepare", "--data", str(tmp_path / "x")])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --data" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    with pytest.raises(SystemExit):
        cli_main(["train", "--max_tim", "5m", "--print_config"])


def test_debug_shows_the_traceback_of_a_user_error(capsys, monkeypatch):
    args = ["train", "--n_embd", "100", "--n_head", "3", "--print_config"]
    assert cli_main(args) == 2
    assert "must be divisible" in capsys.readouterr().err
    with pytest.raises(QuillError, match="must be divisible"):
        cli_main(["--debug", *args])
    monkeypatch.setenv("QUILLGPT_DEBUG", "1")
    with pytest.raises(QuillError):
        cli_main(args)


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=12),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
keys = st.one_of(st.sampled_from(MODEL_FIELDS + TRAIN_FIELDS + ("preset",)), st.text(max_size=8))
sections = st.dictionaries(keys, values, max_size=6)
documents = st.one_of(
    st.fixed_dictionaries({}, optional={"model": st.one_of(sections, values),
                                        "train": st.one_of(sections, values)}),
    st.dictionaries(st.text(max_size=6), values, max_size=3),
    values,
)  # fmt: skip


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(document=documents)
def test_any_config_document_gives_configs_or_one_clear_error(tmp_path, document):
    path = tmp_path / "run.json"
    path.write_text(json.dumps(document))
    try:
        loaded = load_config_file(path)
        model, train = build_configs(loaded["model"], loaded["train"], source=str(path))
    except QuillError as exc:  # ConfigError included: never another exception
        message = str(exc)
        assert message and "\n" not in message
        return
    assert model.n_embd % model.n_head == 0 and train.batch_size > 0


@pytest.mark.parametrize("flag", ["--seq-len", "--batch-size", "--decode-tokens"])
def test_profile_refuses_sizes_below_one(capsys, flag):
    assert cli_main(["profile", "--preset", "tiny", flag, "-1"]) == 2
    err = capsys.readouterr().err
    assert f"{flag} must be >= 1, got -1" in err and len(err.strip().splitlines()) == 1
