"""The hand-written dropout: right statistics, right gradient, reproducible, and wired in."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.testing import assert_close

from quillgpt.model import Dropout, MultiHeadSelfAttention
from quillgpt.model.dropout import dropout


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_drops_the_requested_fraction_in_every_lane(p):
    # Four elements share one 64-bit random word; each of the four 16-bit lanes must be uniform.
    n = 400_000
    dropped = dropout(torch.ones(n), p) == 0
    tolerance = 5 * (p * (1 - p) / (n // 4)) ** 0.5  # five standard deviations of one lane
    for lane in range(4):
        assert abs(dropped[lane::4].float().mean().item() - p) < tolerance


def test_survivors_are_scaled_to_keep_the_expectation():
    x = torch.rand(50_000) + 0.5
    y = dropout(x, 0.25)
    kept = y != 0
    realised_p = round(0.25 * 65536) / 65536
    assert_close(y[kept], x[kept] / (1 - realised_p))
    assert abs(y.mean().item() / x.mean().item() - 1) < 0.02


def test_gradient_is_the_same_mask_and_scale():
    x = (torch.rand(3, 1000) + 0.5).requires_grad_()
    y = dropout(x, 0.3)
    y.sum().backward()
    assert_close(x.grad, (y / x).detach())


def test_identity_when_evaluating_or_p_zero():
    x = torch.randn(4, 8)
    module = Dropout(0.3).eval()
    assert module(x) is x
    assert dropout(x, 0.0) is x
    assert dropout(x, 0.3, training=False) is x


def test_seeded_masks_repeat_and_differ_between_seeds():
    x = torch.ones(10_000)
    torch.manual_seed(1)
    first = dropout(x, 0.1)
    torch.manual_seed(1)
    assert torch.equal(first, dropout(x, 0.1))
    torch.manual_seed(2)
    assert not torch.equal(first, dropout(x, 0.1))


def test_keeps_shape_and_dtype():
    x = torch.randn(2, 3, 5, 7, dtype=torch.bfloat16)
    y = dropout(x, 0.2)
    assert y.shape == x.shape and y.dtype == torch.bfloat16


@pytest.mark.parametrize("p", [-0.1, 1.0])
def test_rejects_impossible_probability(p):
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        Dropout(p)


def test_attention_dropout_on_cpu_runs_the_written_out_path(tiny_config):
    # Training with dropout on a CPU takes the reference path whichever kernel is configured,
    # so the same seed gives the same output for attention="sdpa" and attention="reference".
    outputs = []
    for attention in ("sdpa", "reference"):
        torch.manual_seed(0)
        layer = MultiHeadSelfAttention(
            dataclasses.replace(tiny_config, dropout=0.2, attention=attention)
        ).train()
        x = torch.randn(2, 9, tiny_config.n_embd)
        torch.manual_seed(5)
        outputs.append(layer(x))
    assert_close(outputs[0], outputs[1])


def test_probability_next_to_one_keeps_the_expectation_finite():
    y = dropout(torch.ones(1 << 18), 0.999999)
    assert torch.isfinite(y).all() and (y == 0).float().mean() > 0.999
