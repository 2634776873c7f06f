"""The fast decoding path: DecodeLinear, the one-token decode_step, and generate's use of both."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from quillgpt import DecoderLM, ModelConfig
from quillgpt.model.decode_layout import DecodeLinear, decoding_layout


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(7,), (2, 7), (2, 3, 7)])
def test_decode_linear_matches_linear_on_the_layers_own_weights(bias, shape):
    linear = nn.Linear(7, 11, bias=bias)
    fast = DecodeLinear(linear)
    x = torch.randn(*shape)
    torch.testing.assert_close(fast(x), linear(x), rtol=1e-6, atol=1e-6)
    assert fast(x).shape == (*shape[:-1], 11)
    assert [id(p) for p in fast.parameters()] == [id(p) for p in linear.parameters()]


OPTIONS = [
    dict(),
    dict(pos_encoding="sinusoidal", bias=False),
    dict(pos_encoding="rope", norm="rmsnorm", activation="relu2"),
    dict(pos_encoding="rope", qk_norm=True, logit_softcap=15.0, tie_weights=True),
    dict(activation="gelu_tanh", norm="rmsnorm", qk_norm=True),
]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(o) or "default")
def test_decode_step_computes_what_the_forward_pass_does(tiny_config, options):
    model = DecoderLM(ModelConfig(**{**tiny_config.to_dict(), **options})).eval()
    idx = torch.randint(0, tiny_config.vocab_size, (3, 9))
    fast, plain = model.new_kv_cache(3), model.new_kv_cache(3)
    with torch.inference_mode():
        model.next_token_logits(idx[:, :5], fast)
        model.next_token_logits(idx[:, :5], plain)
        for t in range(5, 9):
            stepped = model.decode_step(idx[:, t], fast)
            reference = model.next_token_logits(idx[:, t : t + 1], plain)
            torch.testing.assert_close(stepped, reference, rtol=1e-5, atol=1e-5)
    assert fast.length == plain.length == 9
    torch.testing.assert_close(fast.keys[:, :, :, :9], plain.keys[:, :, :, :9])
    torch.testing.assert_close(fast.values[:, :, :, :9], plain.values[:, :, :, :9])


def test_decode_step_refuses_training_mode_and_a_full_window(tiny_config):
    model = DecoderLM(tiny_config)
    cache = model.new_kv_cache(1)
    with pytest.raises(ValueError, match="eval"):
        model.decode_step(torch.zeros(1, dtype=torch.long), cache)
    model.eval()
    model.next_token_logits(torch.zeros(1, tiny_config.block_size, dtype=torch.long), cache)
    with pytest.raises(ValueError, match="block_size"):
        model.decode_step(torch.zeros(1, dtype=torch.long), cache)


def test_generate_allocates_the_cache_it_needs(tiny_config, monkeypatch):
    model = DecoderLM(tiny_config).eval()
    sizes = []
    new_kv_cache = model.new_kv_cache
    spy = lambda batch, n=None: sizes.append(n) or new_kv_cache(batch, n)  # noqa: E731
    monkeypatch.setattr(model, "new_kv_cache", spy)
    model.generate(torch.zeros(1, 3, dtype=torch.long), 4)
    model.generate(torch.zeros(1, 3, dtype=torch.long), tiny_config.block_size)
    assert sizes == [3 + 4, 3 + tiny_config.block_size]  # new_kv_cache caps it at block_size
    assert new_kv_cache(1, 3 + tiny_config.block_size).max_len == tiny_config.block_size


def test_small_layers_stay_plain(tiny_config):
    model = DecoderLM(ModelConfig(**{**tiny_config.to_dict(), "vocab_size": 8192})).eval()
    assert model.lm_head.weight.nbytes >= 1 << 20 > model.blocks[0].ffn.fc.weight.nbytes
    with decoding_layout(model) as swapped:
        assert swapped == 1  # only the head is that large
        assert isinstance(model.lm_head, DecodeLinear)
        assert type(model.blocks[0].ffn.fc) is nn.Linear
    assert type(model.lm_head) is nn.Linear


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


def test_no_layout_where_it_does_not_pay(tiny_config, every_layer_converts, monkeypatch):
    model = DecoderLM(tiny_config).to(torch.bfloat16).eval()
    with decoding_layout(model) as swapped:
        assert swapped == 0  # bf16 weights: the plain layers
    model.float()
    with decoding_layout(model) as swapped:
        assert swapped == 4 * tiny_config.n_layer + 1
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    with decoding_layout(model) as swapped:
        assert swapped == 0  # a PyTorch built without oneDNN
    assert model.generate(torch.zeros(1, 1, dtype=torch.long), 3).shape == (1, 4)


def test_the_thread_count_does_not_change_the_tokens(tiny_config, every_layer_converts):
    model = DecoderLM(ModelConfig(**{**tiny_config.to_dict(), "vocab_size": 512})).eval()
    idx = torch.randint(0, 512, (2, 6))
    threads = torch.get_num_threads()
    try:
        outputs = []
        for count in (1, 2, 3):
            torch.set_num_threads(count)  # oneDNN splits each product over the threads
            outputs += [model.generate(idx, 40, fast=fast) for fast in (True, False)]
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(out, outputs[0]) for out in outputs)
