"""DecodeLinear (the slab layout for fast CPU decoding) computes exactly what nn.Linear does."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from quillgpt import DecoderLM, ModelConfig
from quillgpt.inference.decode import DecodeLinear, prepare_for_decoding


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
