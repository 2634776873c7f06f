"""The stacked model: shapes, causality, gradients, cache equivalence, generation, configs."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from quillgpt import MODEL_PRESETS, DecoderLM, ModelConfig
from quillgpt.model import IGNORE_INDEX

POSITIONS = ["learned", "sinusoidal", "rope"]


def make(cfg: ModelConfig, **overrides) -> DecoderLM:
    return DecoderLM(ModelConfig(**{**cfg.to_dict(), **overrides})).eval()


@pytest.mark.parametrize("pos", POSITIONS)
@pytest.mark.parametrize("attention", ["sdpa", "reference"])
def test_forward_shapes_and_loss(tiny_config, pos, attention):
    model = make(tiny_config, pos_encoding=pos, attention=attention)
    idx = torch.randint(0, tiny_config.vocab_size, (3, 11))
    logits, loss = model(idx)
    assert logits.shape == (3, 11, tiny_config.vocab_size)
    assert loss is None
    targets = torch.randint(0, tiny_config.vocab_size, (3, 11))
    _, loss = model(idx, targets)
    expected = F.cross_entropy(logits.view(-1, tiny_config.vocab_size), targets.view(-1))
    assert_close(loss, expected)
    # an untrained model predicts roughly uniformly: loss near ln(V)
    assert abs(loss.item() - torch.log(torch.tensor(97.0)).item()) < 0.5


@pytest.mark.parametrize("pos", POSITIONS)
def test_future_tokens_never_change_earlier_logits(tiny_config, pos):
    model = make(tiny_config, pos_encoding=pos)
    idx = torch.randint(0, tiny_config.vocab_size, (2, 16))
    changed = idx.clone()
    changed[:, 9:] = torch.randint(0, tiny_config.vocab_size, (2, 7))
    a, _ = model(idx)
    b, _ = model(changed)
    assert_close(a[:, :9], b[:, :9])
    assert not torch.allclose(a[:, 9:], b[:, 9:])


@pytest.mark.parametrize("pos", POSITIONS)
def test_sdpa_and_reference_models_agree(tiny_config, pos):
    ref = make(tiny_config, pos_encoding=pos, attention="reference")
    fast = make(tiny_config, pos_encoding=pos, attention="sdpa")
    fast.load_state_dict(ref.state_dict())
    idx = torch.randint(0, tiny_config.vocab_size, (2, 20))
    mask = torch.ones(2, 20, dtype=torch.long)
    mask[1, 14:] = 0
    for kwargs in ({}, {"attention_mask": mask}):
        logits_ref, loss_ref = ref(idx, idx, **kwargs)
        logits_fast, loss_fast = fast(idx, idx, **kwargs)
        assert_close(logits_ref, logits_fast, atol=1e-5, rtol=1e-5)
        grads_ref = torch.autograd.grad(loss_ref, list(ref.parameters()))
        grads_fast = torch.autograd.grad(loss_fast, list(fast.parameters()))
        for a, b in zip(grads_ref, grads_fast, strict=True):
            assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_padding_mask_hides_padded_keys(tiny_config):
    model = make(tiny_config)
    idx = torch.randint(0, tiny_config.vocab_size, (1, 12))
    mask = torch.ones(1, 12, dtype=torch.long)
    mask[0, 4:6] = 0  # two padding tokens in the middle
    logits, _ = model(idx, attention_mask=mask)
    replaced = idx.clone()
    replaced[0, 4:6] = (idx[0, 4:6] + 1) % tiny_config.vocab_size
    logits_replaced, _ = model(replaced, attention_mask=mask)
    assert_close(logits[0, 6:], logits_replaced[0, 6:])
    assert torch.isfinite(logits).all()


def test_ignore_index_positions_do_not_count(tiny_config):
    model = make(tiny_config)
    idx = torch.randint(0, tiny_config.vocab_size, (2, 10))
    targets = idx.clone()
    targets[:, 5:] = IGNORE_INDEX
    logits, loss = model(idx, targets)
    expected = F.cross_entropy(
        logits[:, :5].reshape(-1, tiny_config.vocab_size), idx[:, :5].reshape(-1)
    )
    assert_close(loss, expected)


@pytest.mark.parametrize("pos", POSITIONS)
def test_every_parameter_receives_a_gradient(tiny_config, pos):
    model = DecoderLM(
        ModelConfig(**{**tiny_config.to_dict(), "pos_encoding": pos, "tie_weights": False})
    )
    idx = torch.randint(0, tiny_config.vocab_size, (2, 12))
    model(idx, idx)[1].backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name


def test_weight_tying_shares_one_tensor(tiny_config):
    tied = DecoderLM(tiny_config)
    assert tied.lm_head.weight is tied.tok_emb.weight
    untied = make(tiny_config, tie_weights=False)
    V, C = tiny_config.vocab_size, tiny_config.n_embd
    assert untied.num_parameters() - tied.num_parameters() == V * C


def test_parameter_counts(tiny_config):
    model = DecoderLM(tiny_config)
    V, C, T, L = 97, 32, 32, 2
    per_block = 4 * C + (3 * C * C + 3 * C) + (C * C + C) + (4 * C * C + 4 * C) + (4 * C * C + C)
    assert model.num_parameters() == V * C + T * C + L * per_block + 2 * C
    assert model.num_parameters(exclude_embeddings=True) == L * per_block + 2 * C


def test_gpt2_preset_has_124m_parameters():
    with torch.device("meta"):
        model = DecoderLM(ModelConfig.preset("gpt2"))
    assert model.num_parameters() == 124_439_808
    assert {"tiny", "mini", "small", "gpt2"} <= set(MODEL_PRESETS)


def test_next_token_probs_is_a_distribution(tiny_config):
    model = make(tiny_config)
    probs = model.next_token_probs(torch.randint(0, 97, (3, 5)), temperature=0.7)
    assert probs.shape == (3, 97)
    assert_close(probs.sum(-1), torch.ones(3))


def test_sequence_longer_than_window_is_refused_in_forward(tiny_config):
    model = make(tiny_config)
    with pytest.raises(ValueError, match="block_size=32"):
        model(torch.zeros(1, 33, dtype=torch.long))


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_gradient_checkpointing_gives_same_gradients(tiny_config, dropout):
    # With dropout, the recomputed forward must draw the same masks as the first one did.
    model = make(tiny_config, dropout=dropout).train()
    idx = torch.randint(0, 97, (2, 16))
    torch.manual_seed(3)
    model(idx, idx)[1].backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.gradient_checkpointing = True
    torch.manual_seed(3)
    model(idx, idx)[1].backward()
    for a, p in zip(plain, model.parameters(), strict=True):
        assert_close(a, p.grad)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"n_embd": 30, "n_head": 4}, "divisible by n_head"),
        ({"n_embd": 36, "n_head": 4, "pos_encoding": "rope"}, "even head size"),
        ({"vocab_size": 0}, "vocab_size: Input should be greater than 0"),
        ({"dropout": -0.1}, "dropout: Input should be greater than or equal to 0"),
        ({"dropout": 1.0}, "dropout: Input should be less than 1"),
        ({"pos_encoding": "alibi"}, "pos_encoding: Input should be 'learned', 'sinusoidal' or"),
        ({"attention": "flash"}, "attention: Input should be 'sdpa' or 'reference'"),
        ({"activation": "relu"}, "activation: Input should be 'gelu', 'gelu_tanh' or 'relu2'"),
        ({"n_layer": 2.5}, "n_layer: Input should be a valid integer"),
        ({"ffn_mult": 0}, "ffn_mult: Input should be greater than 0"),
        ({"bias": "false"}, "bias: Input should be a valid boolean, got 'false'"),
    ],
)
def test_bad_configs_raise_clear_errors(tiny_config, overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        ModelConfig.from_dict({**tiny_config.to_dict(), **overrides})
    with pytest.raises(ValueError):
        ModelConfig(**{**tiny_config.to_dict(), **overrides})


def test_unknown_config_keys_and_presets_are_refused():
    with pytest.raises(ValueError, match="unknown ModelConfig field"):
        ModelConfig.from_dict({"n_layers": 3})
    with pytest.raises(ValueError, match="unknown model preset"):
        ModelConfig.preset("gpt5")
