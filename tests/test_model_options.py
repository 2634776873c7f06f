"""The recipe options of the model (ReLU², QK-norm, logit soft-cap, zero init, RMSNorm).

Each option is checked for what it computes and for what the whole model must keep doing with it
on: shapes, causality, gradients reaching every parameter, KV-cache decoding equal to full
recomputation, a checkpoint round trip, and a clear error for a bad value.
"""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

from quillgpt import DecoderLM, ModelConfig, load_checkpoint, save_checkpoint
from quillgpt.model.feedforward import FeedForward, relu_squared
from quillgpt.model.norm import make_norm

OPTIONS = {
    "relu2": {"activation": "relu2"},
    "qk_norm": {"qk_norm": True},
    "qk_norm_layernorm_learned": {"qk_norm": True, "pos_encoding": "learned"},
    "softcap": {"logit_softcap": 3.0},
    "zero_proj": {"init": "zero_proj", "tie_weights": False},
    "rmsnorm": {"norm": "rmsnorm"},
    "all": {
        "activation": "relu2",
        "qk_norm": True,
        "logit_softcap": 15.0,
        "init": "zero_proj",
        "norm": "rmsnorm",
    },
}


def configured(tiny_config: ModelConfig, **options: object) -> ModelConfig:
    return ModelConfig(**{**tiny_config.to_dict(), "pos_encoding": "rope", **options})


def trained_a_little(cfg: ModelConfig, steps: int = 3) -> DecoderLM:
    """A model after a few SGD steps: zero-initialised layers are no longer zero."""
    torch.manual_seed(0)
    model = DecoderLM(cfg)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    idx = torch.randint(0, cfg.vocab_size, (4, 16))
    for _ in range(steps):
        optimizer.zero_grad()
        model(idx, idx.roll(-1, dims=1))[1].backward()
        optimizer.step()
    return model.eval()


def test_relu_squared_is_relu_times_itself():
    x = torch.linspace(-3, 3, 61, requires_grad=True)
    y = relu_squared(x)
    assert_close(y, torch.where(x > 0, x * x, torch.zeros_like(x)))
    y.sum().backward()
    assert_close(x.grad, 2 * F.relu(x.detach()))


def test_feedforward_uses_relu_squared(tiny_config):
    ffn = FeedForward(configured(tiny_config, activation="relu2"))
    x = torch.randn(2, 5, tiny_config.n_embd)
    assert_close(ffn(x), ffn.proj(F.relu(ffn.fc(x)) ** 2))


def test_rmsnorm_divides_by_the_root_mean_square(tiny_config):
    norm = make_norm(configured(tiny_config, norm="rmsnorm"), tiny_config.n_embd)
    assert isinstance(norm, nn.RMSNorm)
    x = torch.randn(3, 7, tiny_config.n_embd) * 5 + 2
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + tiny_config.layer_norm_eps)
    assert_close(norm(x), expected)
    model = DecoderLM(configured(tiny_config, norm="rmsnorm"))
    norms = [m for m in model.modules() if isinstance(m, (nn.LayerNorm, nn.RMSNorm))]
    assert norms and all(isinstance(m, nn.RMSNorm) for m in norms)


def test_qk_norm_bounds_attention_logits_and_commutes_with_rope(tiny_config):
    cfg = configured(tiny_config, qk_norm=True, norm="rmsnorm")
    attn = DecoderLM(cfg).blocks[0].attn
    assert attn.qk_norm is not None
    assert not list(attn.qk_norm.parameters())  # no learned gain
    x = torch.randn(2, 9, cfg.n_embd) * 10
    q = x.view(2, 9, cfg.n_head, -1).transpose(1, 2)
    normed = attn.qk_norm(q)
    # every head vector has RMS 1, so |q . k| <= D
    assert_close(normed.pow(2).mean(-1), torch.ones(2, cfg.n_head, 9), atol=1e-4, rtol=0)
    # RoPE rotates pairs of features: the norm, hence RMS normalisation, commutes with it
    rotary = DecoderLM(cfg).rotary
    cos, sin = rotary(torch.arange(9))
    from quillgpt.model import apply_rotary

    assert_close(attn.qk_norm(apply_rotary(q, cos, sin)), apply_rotary(normed, cos, sin))


def test_logit_softcap_bounds_logits_in_forward_and_generation(tiny_config):
    plain = DecoderLM(configured(tiny_config, tie_weights=False))
    with torch.no_grad():
        plain.lm_head.weight.mul_(500)  # logits far beyond the cap
    capped = DecoderLM(configured(tiny_config, tie_weights=False, logit_softcap=2.0))
    capped.load_state_dict(plain.state_dict())
    idx = torch.randint(0, tiny_config.vocab_size, (2, 10))
    raw, _ = plain(idx)
    logits, _ = capped(idx)
    assert raw.abs().max() > 50
    assert logits.abs().max() <= 2.0
    assert_close(logits, 2.0 * torch.tanh(raw / 2.0))
    assert capped.next_token_logits(idx).abs().max() <= 2.0


def test_zero_proj_starts_every_block_as_the_identity(tiny_config):
    model = DecoderLM(configured(tiny_config, init="zero_proj", tie_weights=False))
    for block in model.blocks:
        assert not block.attn.proj.weight.any() and not block.ffn.proj.weight.any()
        assert block.attn.qkv.weight.std() > 0.01
    assert not model.lm_head.weight.any()
    idx = torch.randint(0, tiny_config.vocab_size, (2, 8))
    logits, loss = model(idx, idx)
    assert not logits.any()  # uniform predictions: the loss is exactly ln(V)
    assert_close(loss, torch.log(torch.tensor(float(tiny_config.vocab_size))))
    tied = DecoderLM(configured(tiny_config, init="zero_proj", tie_weights=True))
    assert tied.lm_head.weight.std() > 0.01  # a tied head is the embedding: never zero


@pytest.mark.parametrize("name", list(OPTIONS))
def test_shapes_causality_and_every_gradient(tiny_config, name):
    cfg = configured(tiny_config, **OPTIONS[name])
    model = trained_a_little(cfg)
    idx = torch.randint(0, cfg.vocab_size, (2, 16))
    logits, loss = model(idx, idx)
    assert logits.shape == (2, 16, cfg.vocab_size) and loss.ndim == 0
    changed = idx.clone()
    changed[:, 9:] = (idx[:, 9:] + 1) % cfg.vocab_size
    with torch.no_grad():
        assert_close(model(changed)[0][:, :9], logits[:, :9])
        assert not torch.allclose(model(changed)[0][:, 9:], logits[:, 9:])
    model.train().zero_grad()
    model(idx, idx.roll(-1, dims=1))[1].backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, param_name


@pytest.mark.parametrize("name", list(OPTIONS))
def test_cached_decoding_equals_recomputation(tiny_config, name):
    model = trained_a_little(configured(tiny_config, **OPTIONS[name]))
    idx = torch.randint(0, tiny_config.vocab_size, (2, 5))
    # 40 new tokens: past the 32-token window, where the cache is refilled
    with_cache = model.generate(idx, max_new_tokens=40, use_cache=True)
    without = model.generate(idx, max_new_tokens=40, use_cache=False)
    assert torch.equal(with_cache, without)
    cache = model.new_kv_cache(2)
    step_by_step = [model.next_token_logits(idx, cache)]
    full = [model.next_token_logits(idx)]
    for token in with_cache[:, 5:9].T:
        step_by_step.append(model.next_token_logits(token[:, None], cache))
        full.append(model.next_token_logits(with_cache[:, : 6 + len(full) - 1]))
    assert_close(torch.stack(step_by_step), torch.stack(full), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", list(OPTIONS))
def test_checkpoint_round_trip(tiny_config, name, tmp_path):
    model = trained_a_little(configured(tiny_config, **OPTIONS[name]))
    loaded = load_checkpoint(save_checkpoint(model, tmp_path / "ckpt"))
    assert loaded.config == model.config
    idx = torch.randint(0, tiny_config.vocab_size, (2, 12))
    with torch.no_grad():
        assert torch.equal(loaded(idx)[0], model(idx)[0])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"activation": "swiglu"}, "activation: Input should be 'gelu', 'gelu_tanh' or 'relu2'"),
        ({"norm": "batchnorm"}, "norm: Input should be 'layernorm' or 'rmsnorm'"),
        ({"qk_norm": "yes"}, "qk_norm: Input should be a valid boolean"),
        ({"logit_softcap": 0}, "logit_softcap: Input should be greater than 0"),
        ({"logit_softcap": float("inf")}, "logit_softcap: Input should be a finite number"),
        ({"init": "xavier"}, "init: Input should be 'gpt2' or 'zero_proj'"),
    ],
)
def test_bad_option_values_are_one_clear_error(tiny_config, overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        ModelConfig.from_dict({**tiny_config.to_dict(), **overrides})
