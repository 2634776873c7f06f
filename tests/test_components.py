"""Shapes and behaviour of each model component on random data."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from quillgpt import ModelConfig
from quillgpt.model import (
    DecoderBlock,
    FeedForward,
    KVCache,
    LearnedPositionalEmbedding,
    MultiHeadSelfAttention,
    RotaryEmbedding,
    SinusoidalPositionalEncoding,
    TokenEmbedding,
    apply_rotary,
    causal_mask,
    scaled_dot_product_attention,
)


def test_token_embedding_shape_and_lookup():
    emb = TokenEmbedding(50, 16)
    idx = torch.randint(0, 50, (3, 7))
    out = emb(idx)
    assert out.shape == (3, 7, 16)
    assert_close(out[1, 2], emb.weight[idx[1, 2]])


def test_learned_positions_shape():
    pos = LearnedPositionalEmbedding(32, 16)
    assert pos(torch.arange(10)).shape == (10, 16)


def test_sinusoidal_table_matches_formula():
    pe = SinusoidalPositionalEncoding(20, 8)
    out = pe(torch.arange(20))
    assert out.shape == (20, 8)
    p, i = 7, 2  # feature 2i = 4 and 2i+1 = 5
    angle = p / 10000 ** (2 * i / 8)
    assert math.isclose(out[p, 2 * i].item(), math.sin(angle), rel_tol=1e-5)
    assert math.isclose(out[p, 2 * i + 1].item(), math.cos(angle), rel_tol=1e-5)
    assert not list(pe.parameters())


def test_rotary_preserves_norm_and_depends_on_offset_only():
    rope = RotaryEmbedding(64, 8)
    q = torch.randn(1, 1, 1, 8)
    k = torch.randn(1, 1, 1, 8)

    def score(m: int, n: int) -> torch.Tensor:
        qm = apply_rotary(q, *rope(torch.tensor([m])))
        kn = apply_rotary(k, *rope(torch.tensor([n])))
        return (qm * kn).sum()

    rotated = apply_rotary(q, *rope(torch.tensor([5])))
    assert_close(rotated.norm(), q.norm())
    assert_close(score(3, 1), score(13, 11))
    assert not torch.allclose(score(3, 1), score(3, 2))


def test_causal_mask_with_cached_past():
    mask = causal_mask(2, 5)
    expected = torch.tensor(
        [[True, True, True, True, False], [True, True, True, True, True]], dtype=torch.bool
    )
    assert torch.equal(mask, expected)
    assert torch.equal(causal_mask(4, 4), torch.ones(4, 4, dtype=torch.bool).tril())


def naive_attention(q, k, v, allowed):
    """Per-query loop: softmax over the allowed keys, weighted sum of values."""
    B, H, Tq, D = q.shape
    out = torch.zeros_like(q)
    for b in range(B):
        for h in range(H):
            for i in range(Tq):
                keys = [j for j in range(k.shape[2]) if allowed[b, h, i, j]]
                scores = torch.stack([q[b, h, i] @ k[b, h, j] / math.sqrt(D) for j in keys])
                weights = torch.softmax(scores, dim=0)
                out[b, h, i] = sum(w * v[b, h, j] for w, j in zip(weights, keys, strict=True))
    return out


def test_reference_attention_matches_naive_loop():
    q, k, v = (torch.randn(2, 3, 5, 4, dtype=torch.float64) for _ in range(3))
    causal = torch.ones(5, 5, dtype=torch.bool).tril().expand(2, 3, 5, 5)
    assert_close(
        scaled_dot_product_attention(q, k, v, is_causal=True), naive_attention(q, k, v, causal)
    )
    padding = torch.rand(2, 1, 5, 5) > 0.4
    padding[..., 0] = True  # every query sees at least one key
    assert_close(
        scaled_dot_product_attention(q, k, v, attn_mask=padding),
        naive_attention(q, k, v, padding.expand(2, 3, 5, 5)),
    )


@pytest.mark.parametrize("with_mask", [False, True])
def test_reference_attention_equals_fused_outputs_and_gradients(with_mask):
    q, k, v = (torch.randn(2, 4, 9, 8, requires_grad=True) for _ in range(3))
    kwargs = {"is_causal": True}
    if with_mask:
        mask = torch.rand(2, 1, 9, 9) > 0.3
        mask |= torch.eye(9, dtype=torch.bool)
        kwargs = {"attn_mask": mask}
    ref = scaled_dot_product_attention(q, k, v, **kwargs)
    grads_ref = torch.autograd.grad(ref.square().sum(), (q, k, v))
    fused = torch.nn.functional.scaled_dot_product_attention(q, k, v, **kwargs)
    grads_fused = torch.autograd.grad(fused.square().sum(), (q, k, v))
    assert_close(ref, fused, atol=1e-5, rtol=1e-5)
    for a, b in zip(grads_ref, grads_fused, strict=True):
        assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_reference_attention_rejects_mask_and_causal_together():
    q = torch.randn(1, 1, 2, 4)
    with pytest.raises(ValueError, match="not both"):
        scaled_dot_product_attention(
            q, q, q, attn_mask=torch.ones(2, 2, dtype=torch.bool), is_causal=True
        )


def test_attention_dropout_only_in_training():
    q = torch.randn(1, 1, 6, 4)
    torch.manual_seed(1)
    a = scaled_dot_product_attention(q, q, q, is_causal=True, dropout_p=0.5)
    b = scaled_dot_product_attention(q, q, q, is_causal=True)
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("attention", ["sdpa", "reference"])
def test_multi_head_attention_shape_and_causality(tiny_config, attention):
    cfg = ModelConfig(**{**tiny_config.to_dict(), "attention": attention})
    attn = MultiHeadSelfAttention(cfg).eval()
    x = torch.randn(2, 10, cfg.n_embd)
    y = attn(x)
    assert y.shape == x.shape
    x2 = x.clone()
    x2[:, 6:] = torch.randn(2, 4, cfg.n_embd)
    assert_close(attn(x2)[:, :6], y[:, :6])


def test_multi_head_attention_with_cache_matches_full(tiny_config):
    attn = MultiHeadSelfAttention(tiny_config).eval()
    x = torch.randn(2, 7, tiny_config.n_embd)
    full = attn(x)
    cache = KVCache(1, 2, tiny_config.n_head, 16, tiny_config.head_size)
    first = attn(x[:, :4], kv_cache=cache)
    cache.advance(4)
    rest = attn(x[:, 4:], kv_cache=cache)
    assert_close(torch.cat([first, rest], dim=1), full, atol=1e-6, rtol=1e-5)


def test_kv_cache_refuses_overflow():
    cache = KVCache(1, 1, 1, 4, 2)
    kv = torch.zeros(1, 1, 5, 2)
    with pytest.raises(ValueError, match="holds 4 positions"):
        cache.update(0, kv, kv)


def test_feedforward_shape_and_width(tiny_config):
    ffn = FeedForward(tiny_config)
    assert ffn.fc.out_features == 4 * tiny_config.n_embd
    assert ffn(torch.randn(2, 5, tiny_config.n_embd)).shape == (2, 5, tiny_config.n_embd)


def test_exact_and_tanh_gelu_are_close_but_distinct(tiny_config):
    exact = FeedForward(tiny_config)
    tanh = FeedForward(ModelConfig(**{**tiny_config.to_dict(), "activation": "gelu_tanh"}))
    tanh.load_state_dict(exact.state_dict())
    x = torch.randn(2, 5, tiny_config.n_embd)
    assert_close(exact(x), tanh(x), atol=1e-3, rtol=0)
    assert not torch.equal(exact(x), tanh(x))


def test_decoder_block_shape_and_layer_norms(tiny_config):
    block = DecoderBlock(tiny_config)
    assert isinstance(block.ln1, torch.nn.LayerNorm)
    x = torch.randn(3, 8, tiny_config.n_embd)
    assert block(x).shape == x.shape
