"""Checkpoints: bit-exact round trip, no pickle, atomic writes, clear errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from quillgpt import DecoderLM, ModelConfig, load_checkpoint, save_checkpoint
from quillgpt.checkpoint import CONFIG_FILE, WEIGHTS_FILE
from quillgpt.errors import CheckpointError


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("pos", ["learned", "rope", "sinusoidal"])
def test_round_trip_is_bit_exact(tmp_path, tiny_config, tie, pos):
    cfg = ModelConfig(**{**tiny_config.to_dict(), "tie_weights": tie, "pos_encoding": pos})
    model = DecoderLM(cfg)
    save_checkpoint(model, tmp_path / "ck", extra_config={"train": {"lr": 0.1}})
    loaded = load_checkpoint(tmp_path / "ck")
    assert loaded.config == cfg
    for (name, a), (_, b) in zip(
        model.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    assert (loaded.lm_head.weight is loaded.tok_emb.weight) == tie
    document = json.loads((tmp_path / "ck" / CONFIG_FILE).read_text())
    assert document["train"] == {"lr": 0.1}
    idx = torch.randint(0, 97, (1, 9))
    assert torch.equal(model.eval()(idx)[0], loaded(idx)[0])


def test_weights_file_is_safetensors_not_pickle(tmp_path, tiny_config):
    save_checkpoint(DecoderLM(tiny_config), tmp_path)
    raw = (tmp_path / WEIGHTS_FILE).read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + header_len])
    assert "tok_emb.embed.weight" in header
    assert b"\x80\x04" not in raw[:2]  # no pickle protocol marker


def test_truncated_weights_are_refused_with_a_clear_error(tmp_path, tiny_config):
    save_checkpoint(DecoderLM(tiny_config), tmp_path)
    path = tmp_path / WEIGHTS_FILE
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(tmp_path)


def test_missing_files_are_refused(tmp_path, tiny_config):
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        load_checkpoint(tmp_path)
    save_checkpoint(DecoderLM(tiny_config), tmp_path)
    (tmp_path / CONFIG_FILE).unlink()
    with pytest.raises(CheckpointError, match="no config.json"):
        load_checkpoint(tmp_path)


def test_config_that_does_not_match_weights_is_refused(tmp_path, tiny_config):
    save_checkpoint(DecoderLM(tiny_config), tmp_path)
    document = json.loads((tmp_path / CONFIG_FILE).read_text())
    document["model"]["n_layer"] = 3
    (tmp_path / CONFIG_FILE).write_text(json.dumps(document))
    with pytest.raises(CheckpointError, match="different models"):
        load_checkpoint(tmp_path)


def test_crash_during_save_keeps_previous_checkpoint(tmp_path, tiny_config, monkeypatch):
    first = DecoderLM(tiny_config)
    save_checkpoint(first, tmp_path)

    def explode(*args, **kwargs):
        Path(args[1]).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("quillgpt.checkpoint.save_file", explode)
    with pytest.raises(CheckpointError, match="No space left on device"):
        save_checkpoint(DecoderLM(tiny_config), tmp_path)
    loaded = load_checkpoint(tmp_path)
    assert torch.equal(loaded.tok_emb.weight, first.tok_emb.weight)
    assert sorted(p.name for p in tmp_path.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]


def test_checkpoint_files_are_readable_like_ordinary_files(tmp_path, tiny_config):
    save_checkpoint(DecoderLM(tiny_config), tmp_path)
    umask = os.umask(0)
    os.umask(umask)
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask


def test_tokenizer_is_saved_beside_the_weights(tmp_path, tiny_config):
    tokenizer_json = tmp_path / "src.json"
    tokenizer_json.write_text('{"fake": true}')
    save_checkpoint(DecoderLM(tiny_config), tmp_path / "ck", tokenizer=tokenizer_json)
    assert (tmp_path / "ck" / "tokenizer.json").read_text() == '{"fake": true}'


def test_load_to_dtype(tmp_path, tiny_config):
    save_checkpoint(DecoderLM(tiny_config), tmp_path)
    model = load_checkpoint(tmp_path, dtype=torch.float64)
    assert model.lm_head.weight.dtype == torch.float64
    assert not model.training
