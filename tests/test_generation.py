"""Generation: cache == recompute, greedy/sampling semantics, stop tokens, window handling."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from quillgpt import DecoderLM, ModelConfig
from quillgpt.model.generation import choose_next, filter_logits


def make(cfg: ModelConfig, **overrides) -> DecoderLM:
    return DecoderLM(ModelConfig(**{**cfg.to_dict(), **overrides})).eval()


@pytest.mark.parametrize("pos", ["learned", "sinusoidal", "rope"])
def test_cached_decoding_equals_full_recompute_logits(tiny_config, pos):
    model = make(tiny_config, pos_encoding=pos)
    idx = torch.randint(0, 97, (2, 20))
    full, _ = model(idx)
    cache = model.new_kv_cache(2)
    steps = [model.next_token_logits(idx[:, :8], cache)]
    for t in range(8, 20):
        steps.append(model.next_token_logits(idx[:, t : t + 1], cache))
    assert_close(torch.stack(steps[:-1], dim=1), full[:, 7:-1], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_greedy_with_cache_equals_without_even_past_the_window(tiny_config, pos):
    model = make(tiny_config, pos_encoding=pos)
    idx = torch.randint(0, 97, (3, 10))
    with_cache = model.generate(idx, max_new_tokens=60, use_cache=True)
    without = model.generate(idx, max_new_tokens=60, use_cache=False)
    assert with_cache.shape == (3, 70)
    assert torch.equal(with_cache, without)
    assert torch.equal(with_cache[:, :10], idx)


def test_greedy_picks_the_argmax(tiny_config):
    model = make(tiny_config)
    idx = torch.randint(0, 97, (2, 6))
    out = model.generate(idx, max_new_tokens=1)
    assert torch.equal(out[:, -1], model(idx)[0][:, -1].argmax(-1))


def test_long_prompt_is_cropped_not_an_error(tiny_config):
    model = make(tiny_config)
    idx = torch.randint(0, 97, (1, 50))
    out = model.generate(idx, max_new_tokens=3)
    assert out.shape == (1, 53)
    assert torch.equal(out[:, -3:], model.generate(idx[:, -32:], max_new_tokens=3)[:, -3:])


def test_seeded_sampling_is_reproducible_and_seeds_differ(tiny_config):
    model = make(tiny_config)
    idx = torch.zeros(4, 1, dtype=torch.long)
    a = model.generate(idx, 30, temperature=1.0, seed=7)
    b = model.generate(idx, 30, temperature=1.0, seed=7)
    c = model.generate(idx, 30, temperature=1.0, seed=8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_sampling_with_and_without_cache_agree_for_a_seed(tiny_config):
    model = make(tiny_config)
    idx = torch.randint(0, 97, (2, 5))
    a = model.generate(idx, 20, temperature=0.8, top_k=10, seed=3, use_cache=True)
    b = model.generate(idx, 20, temperature=0.8, top_k=10, seed=3, use_cache=False)
    assert torch.equal(a, b)


def test_top_k_keeps_only_k_tokens():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0]])
    kept = torch.isfinite(filter_logits(logits, top_k=2))
    assert kept.tolist() == [[False, True, False, True, False]]
    for _ in range(20):
        assert choose_next(logits, temperature=1.0, top_k=2).item() in (1, 3)


def test_top_p_keeps_the_smallest_nucleus():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    kept = torch.isfinite(filter_logits(probs.log(), top_p=0.7))
    assert kept.tolist() == [[True, True, False, False]]
    kept = torch.isfinite(filter_logits(probs.log(), top_p=0.1))
    assert kept.tolist() == [[True, False, False, False]]


def test_bad_sampling_arguments_raise():
    logits = torch.zeros(1, 4)
    with pytest.raises(ValueError, match="top_k"):
        filter_logits(logits, top_k=0)
    with pytest.raises(ValueError, match="top_p"):
        filter_logits(logits, top_p=1.5)
    with pytest.raises(ValueError, match="temperature"):
        choose_next(logits, temperature=-1.0)


def test_stop_token_ends_each_row_and_pads(tiny_config):
    model = make(tiny_config)
    idx = torch.randint(0, 97, (2, 4))
    free = model.generate(idx, 12)
    stop = int(free[0, 6])  # the third token row 0 produces
    out = model.generate(idx, 12, stop_tokens=[stop])
    first_stop = (out[0, 4:] == stop).nonzero()[0].item()
    assert (out[0, 4 + first_stop :] == stop).all()
    row1_stops = (free[1, 4:] == stop).nonzero()
    if len(row1_stops) == 0:
        assert out.shape[1] == free.shape[1]
        assert torch.equal(out[1], free[1])
    else:
        assert out.shape[1] <= free.shape[1]


def test_generation_restores_training_mode(tiny_config):
    model = make(tiny_config).train()
    model.generate(torch.zeros(1, 1, dtype=torch.long), 2)
    assert model.training


def test_stream_yields_tokens_one_by_one(tiny_config):
    model = make(tiny_config)
    idx = torch.randint(0, 97, (1, 3))
    tokens = list(model.stream(idx, max_new_tokens=5))
    assert len(tokens) == 5 and all(t.shape == (1,) for t in tokens)
    assert torch.equal(torch.stack(tokens, 1), model.generate(idx, 5)[:, 3:])


@pytest.mark.parametrize("count", [0, -1])
def test_no_new_tokens_returns_the_prompt(tiny_config, count):
    model = DecoderLM(tiny_config).eval()
    idx = torch.randint(0, tiny_config.vocab_size, (2, 5))
    assert torch.equal(model.generate(idx, count), idx)
    assert list(model.stream(idx, max_new_tokens=count)) == []
