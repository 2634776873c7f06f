"""DecodeLinear (the slab layout for fast CPU decoding) computes exactly what nn.Linear does."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from quillgpt import DecoderLM, ModelConfig
from quillgpt.model.decode_layout import DecodeLinear, prepare_for_decoding


@pytest.mark.parametrize("num_slabs", [1, 2, 3, 5])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(7,), (2, 7), (2, 3, 7)])
def test_decode_linear_matches_linear(num_slabs, bias, shape):
    linear = nn.Linear(7, 11, bias=bias)
    fast = DecodeLinear(linear, num_slabs)
    x = torch.randn(*shape)
    torch.testing.assert_close(fast(x), linear(x), rtol=1e-6, atol=1e-6)
    assert fast(x).shape == (*shape[:-1], 11)
    assert fast.slabs.shape == (num_slabs, 7, -(-11 // num_slabs))


def test_num_slabs_defaults_to_threads_and_must_be_positive():
    assert DecodeLinear(nn.Linear(4, 4)).num_slabs == torch.get_num_threads()
    with pytest.raises(ValueError, match="num_slabs"):
        DecodeLinear(nn.Linear(4, 4), -1)


def test_prepared_model_generates_the_same_tokens(tiny_config):
    model = DecoderLM(tiny_config).eval()
    fast = copy.deepcopy(model)
    converted = prepare_for_decoding(fast, num_slabs=2, min_bytes=0)
    assert converted == 4 * tiny_config.n_layer + 1  # qkv, proj, fc, proj per block + head
    assert not any(type(m) is nn.Linear for m in fast.modules())
    idx = torch.randint(0, tiny_config.vocab_size, (2, 5))
    torch.testing.assert_close(fast(idx)[0], model(idx)[0], rtol=1e-5, atol=1e-5)
    assert torch.equal(fast.generate(idx, 12), model.generate(idx, 12))
    assert torch.equal(fast.tok_emb.weight, model.tok_emb.weight)  # the embedding is untouched


def test_small_layers_stay_plain(tiny_config):
    model = DecoderLM(ModelConfig(**{**tiny_config.to_dict(), "vocab_size": 1000}))
    big = model.lm_head.weight.nbytes
    assert prepare_for_decoding(model, min_bytes=big) == 1  # only the head is that large
    assert isinstance(model.lm_head, DecodeLinear)
    assert type(model.blocks[0].ffn.fc) is nn.Linear


@pytest.fixture
def every_layer_converts(monkeypatch):
    """Make the default layout convert even the tiny test models' layers (as it does big ones)."""
    monkeypatch.setattr("quillgpt.model.decode_layout.MIN_BYTES", 0)


SAMPLING = [
    dict(),
    dict(temperature=0.9, seed=3),
    dict(temperature=1.0, top_k=5, seed=4),
    dict(temperature=0.7, top_p=0.8, seed=5),
    dict(stop_tokens=[3, 7]),
    dict(use_cache=False),
]


@pytest.mark.parametrize("pos", ["learned", "rope"])
@pytest.mark.parametrize("options", SAMPLING, ids=lambda o: ",".join(o) or "greedy")
def test_generate_takes_the_fast_layout_and_gives_the_reference_tokens(
    tiny_config, every_layer_converts, options, pos
):
    model = DecoderLM(ModelConfig(**{**tiny_config.to_dict(), "pos_encoding": pos})).eval()
    idx = torch.randint(0, tiny_config.vocab_size, (3, 5))
    new = tiny_config.block_size + 10  # past the window: the cache is refilled
    fast = model.generate(idx, new, **options)
    assert torch.equal(fast, model.generate(idx, new, fast=False, **options))
    streamed = torch.stack(list(model.stream(idx, max_new_tokens=new, **options)), dim=1)
    assert torch.equal(torch.cat([idx, streamed], dim=1), fast)


def test_generating_leaves_the_model_as_it_was_and_trainable(tiny_config, every_layer_converts):
    model = DecoderLM(tiny_config)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    layers = [type(m) for m in model.modules()]
    converted = []
    original = DecodeLinear.forward

    def spy(self, x):
        converted.append(self)
        return original(self, x)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(DecodeLinear, "forward", spy)
        model.generate(torch.zeros(1, 1, dtype=torch.long), 4)
    assert converted  # the fast layout did run
    assert [type(m) for m in model.modules()] == layers and model.training
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    idx = torch.randint(0, tiny_config.vocab_size, (2, 8))
    loss = model(idx, targets=idx)[1]
    loss.backward()  # the parameters are the model's own, with gradients
    assert model.blocks[0].attn.qkv.weight.grad is not None


def test_an_abandoned_stream_or_an_error_puts_the_layers_back(tiny_config, every_layer_converts):
    model = DecoderLM(tiny_config).eval()
    stream = model.stream(torch.zeros(1, 1, dtype=torch.long), max_new_tokens=50)
    next(stream)
    assert isinstance(model.lm_head, DecodeLinear)  # converted while the stream is open
    stream.close()
    assert type(model.lm_head) is nn.Linear
    with pytest.raises(ValueError, match="top_k"):
        model.generate(torch.zeros(1, 1, dtype=torch.long), 3, temperature=1.0, top_k=0)
    assert type(model.lm_head) is nn.Linear


def test_no_layout_where_it_does_not_pay(tiny_config, every_layer_converts):
    model = DecoderLM(tiny_config).to(torch.bfloat16).eval()
    seen = []
    hook = model.lm_head.register_forward_hook(lambda m, i, o: seen.append(type(m)))
    model.generate(torch.zeros(1, 1, dtype=torch.long), 2)
    hook.remove()
    assert seen == [nn.Linear, nn.Linear]  # bf16 weights: the plain layers


def test_the_thread_count_does_not_change_the_tokens(tiny_config, every_layer_converts):
    model = DecoderLM(ModelConfig(**{**tiny_config.to_dict(), "vocab_size": 512})).eval()
    idx = torch.randint(0, 512, (2, 6))
    threads = torch.get_num_threads()
    try:
        outputs = []
        for count in (1, 2, 3):
            torch.set_num_threads(count)  # the slab count follows the threads
            outputs += [model.generate(idx, 40, fast=fast) for fast in (True, False)]
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(out, outputs[0]) for out in outputs)
