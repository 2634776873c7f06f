"""Hugging Face GPT-2 interop: the external check that the model computes what GPT-2 computes."""

from __future__ import annotations

import re

import pytest
import torch
from torch.testing import assert_close

from quillgpt import DecoderLM, ModelConfig
from quillgpt.errors import QuillError

transformers = pytest.importorskip("transformers")
from quillgpt.interop import from_hf_gpt2, to_hf_gpt2  # noqa: E402

SHAPES = [
    dict(n_layer=1, n_head=1, n_embd=16, vocab_size=50, n_positions=64),
    dict(n_layer=2, n_head=4, n_embd=64, vocab_size=211, n_positions=96),
    dict(n_layer=3, n_head=6, n_embd=96, vocab_size=300, n_positions=128, n_inner=200),
]


def random_gpt2(shape: dict) -> torch.nn.Module:
    cfg = transformers.GPT2Config(**shape, bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # non-trivial LayerNorm and bias values, so a wrong mapping shows
        for name, p in model.named_parameters():
            if "ln" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("shape", SHAPES)
def test_logits_match_transformers(shape):
    hf = random_gpt2(shape)
    ours = from_hf_gpt2(hf)
    assert ours.config.activation == "gelu_tanh"
    idx = torch.randint(0, shape["vocab_size"], (2, 40))
    with torch.no_grad():
        assert_close(ours(idx)[0], hf(idx).logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize("shape", SHAPES[1:])
def test_greedy_generation_matches_transformers(shape):
    hf = random_gpt2(shape)
    ours = from_hf_gpt2(hf)
    idx = torch.randint(0, shape["vocab_size"], (2, 12))
    expected = hf.generate(
        idx, attention_mask=torch.ones_like(idx), max_new_tokens=40, do_sample=False, pad_token_id=0
    )
    assert torch.equal(ours.generate(idx, max_new_tokens=40, use_cache=True), expected)


def test_export_then_import_round_trip(tmp_path):
    cfg = ModelConfig(vocab_size=120, block_size=48, n_layer=2, n_head=2, n_embd=32)
    ours = DecoderLM(cfg).eval()
    to_hf_gpt2(ours, tmp_path / "hf")
    hf = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / "hf")).eval()
    assert hf.config.activation_function == "gelu"  # quillgpt's default: exact GELU
    idx = torch.randint(0, 120, (3, 20))
    with torch.no_grad():
        assert_close(hf(idx).logits, ours(idx)[0], atol=1e-4, rtol=0)
    back = from_hf_gpt2(tmp_path / "hf")
    for name, tensor in ours.state_dict().items():
        assert torch.equal(back.state_dict()[name], tensor), name


def test_untied_model_round_trips(tmp_path):
    cfg = ModelConfig(
        vocab_size=64, block_size=32, n_layer=1, n_head=2, n_embd=16, tie_weights=False
    )
    ours = DecoderLM(cfg).eval()
    back = from_hf_gpt2(to_hf_gpt2(ours, tmp_path))
    assert not back.config.tie_weights
    assert torch.equal(back.lm_head.weight, ours.lm_head.weight)


def test_non_gpt2_shapes_are_refused(tmp_path):
    rope = DecoderLM(
        ModelConfig(vocab_size=10, block_size=8, n_layer=1, n_head=1, n_embd=8, pos_encoding="rope")
    )
    with pytest.raises(QuillError, match="pos_encoding='learned'"):
        to_hf_gpt2(rope, tmp_path)
    with pytest.raises(QuillError, match="not a directory"):
        from_hf_gpt2(tmp_path / "missing")


@pytest.mark.parametrize(
    "option",
    [{"norm": "rmsnorm"}, {"qk_norm": True}, {"logit_softcap": 30.0}, {"activation": "relu2"}],
)
def test_options_gpt2_lacks_are_refused_by_name(tmp_path, option):
    cfg = ModelConfig(vocab_size=10, block_size=8, n_layer=1, n_head=1, n_embd=8, **option)
    with pytest.raises(QuillError, match=re.escape(f"{option}")):
        to_hf_gpt2(DecoderLM(cfg), tmp_path / "out")
    assert not (tmp_path / "out").exists()
