"""Scaled dot-product attention (written out, and fused) and multi-head self-attention."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from quillgpt.config import ModelConfig
from quillgpt.model.dropout import Dropout, dropout
from quillgpt.model.kv_cache import KVCache
from quillgpt.model.norm import make_norm
from quillgpt.model.positional import apply_rotary


def causal_mask(
    num_queries: int, num_keys: int, *, device: torch.device | str | None = None
) -> torch.Tensor:
    """Return the ``(Tq, Tk)`` boolean mask where ``True`` means "query i may attend to key j".

    Queries are the *last* ``Tq`` of the ``Tk`` positions (the others are a cached past), so
    query ``i`` sits at absolute position ``Tk - Tq + i`` and sees keys up to and including it.
    """
    offset = num_keys - num_queries
    q_pos = torch.arange(num_queries, device=device)[:, None] + offset
    k_pos = torch.arange(num_keys, device=device)[None, :]
    return k_pos <= q_pos


def scaled_dot_product_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
) -> torch.Tensor:
    """Compute ``softmax(Q K^T / sqrt(D) + M) V`` with plain tensor operations.

    This is the reference implementation; it takes the same arguments as
    ``torch.nn.functional.scaled_dot_product_attention`` so the two are interchangeable.

    Args:
        q: queries ``(B, H, Tq, D)``.
        k: keys ``(B, H, Tk, D)``.
        v: values ``(B, H, Tk, D)``.
        attn_mask: boolean, broadcastable to ``(B, H, Tq, Tk)``; ``True`` where attention is
            allowed. It becomes the additive mask ``M`` (0 where allowed, ``-inf`` elsewhere).
        dropout_p: probability of zeroing an attention weight (training only; pass 0 in eval).
        is_causal: apply the lower-triangular mask ``j <= i`` (aligned top-left, as PyTorch does).

    Returns:
        ``(B, H, Tq, D)``: for every query, the attention-weighted average of the values.

    Dividing by ``sqrt(D)`` keeps the dot products at unit variance for unit-variance inputs, so the
    softmax does not saturate as the head size grows.
    """
    if is_causal and attn_mask is not None:
        raise ValueError("pass either attn_mask or is_causal=True, not both")
    num_queries, num_keys = q.shape[-2], k.shape[-2]
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
    if is_causal:
        attn_mask = torch.ones(num_queries, num_keys, dtype=torch.bool, device=q.device).tril()
    if attn_mask is not None:
        additive = torch.zeros(attn_mask.shape, dtype=scores.dtype, device=scores.device)
        scores = scores + additive.masked_fill(~attn_mask, float("-inf"))
    weights = F.softmax(scores, dim=-1)
    if dropout_p > 0.0:
        weights = dropout(weights, dropout_p)
    return weights @ v


AttentionFn = Callable[..., torch.Tensor]
ATTENTION_FUNCTIONS: dict[str, AttentionFn] = {
    "reference": scaled_dot_product_attention,
    "sdpa": F.scaled_dot_product_attention,
}


class MultiHeadSelfAttention(nn.Module):
    """Causal multi-head self-attention with a fused QKV projection and an optional KV cache.

    One ``C -> 3C`` matmul produces queries, keys and values for all heads at once; they are split
    into ``H`` heads of size ``D = C / H`` that attend independently (each can track a different
    relation), then the heads are concatenated and mixed by the output projection ``C -> C``.

    Training with attention dropout on a CPU always takes the written-out path: PyTorch's CPU
    kernels draw the ``(B, H, T, T)`` dropout mask one Bernoulli sample at a time, while
    :func:`~quillgpt.model.dropout.dropout` draws it several times faster (measured in
    docs/performance.md, ``benchmarks/bench_dropout.py``).

    Shapes: ``x (B, T, C) -> (B, T, C)``.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.head_size = config.head_size
        self.dropout = config.dropout
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = Dropout(config.dropout)
        self.attend = ATTENTION_FUNCTIONS[config.attention]
        self.qk_norm = (
            make_norm(config, config.head_size, learnable=False) if config.qk_norm else None
        )

    def forward(
        self,
        x: torch.Tensor,
        *,
        attn_mask: torch.Tensor | None = None,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
        kv_cache: KVCache | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        """Attend from every position of ``x`` to itself and the positions before it.

        Args:
            x: ``(B, T, C)`` input (already layer-normalised).
            attn_mask: boolean ``(B or 1, 1, T, Tk)``, ``True`` = may attend; ``None`` means the
                plain causal mask (or, when decoding one token, "attend to all of the past").
            rotary: ``(cos, sin)`` tables ``(T, D)`` for these positions, when using RoPE.
            kv_cache: if given, the new keys/values are appended to it for ``layer`` and the
                queries attend over the whole cached past.
            layer: index of this block, selecting its slot in ``kv_cache``.
        """
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, self.head_size).transpose(1, 2)  # (B, H, T, D)
        k = k.view(B, T, self.n_head, self.head_size).transpose(1, 2)
        v = v.view(B, T, self.n_head, self.head_size).transpose(1, 2)
        if self.qk_norm is not None:
            q, k = self.qk_norm(q), self.qk_norm(k)
        if rotary is not None:
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        if kv_cache is not None:
            k, v = kv_cache.update(layer, k, v)  # (B, H, Tk, D), Tk = past + T
        is_causal = attn_mask is None and T > 1
        if is_causal and k.shape[2] != T:
            attn_mask = causal_mask(T, k.shape[2], device=x.device)
            is_causal = False
        dropout_p = self.dropout if self.training else 0.0
        attend = self.attend
        if dropout_p > 0.0 and x.device.type == "cpu":
            attend = scaled_dot_product_attention  # see the class docstring
        y = attend(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal)
        y = y.transpose(1, 2).reshape(B, T, C)  # merge heads: (B, T, H*D)
        return self.resid_dropout(self.proj(y))

    def decode(
        self,
        x: torch.Tensor,
        kv_cache: KVCache,
        layer: int,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """:meth:`forward` for one new token per row, in eval mode: ``x (B, C) -> (B, C)``.

        The same function in about half the tensor operations: queries and keys are normalised
        and rotated together, the one query needs no mask, no dropout runs, and attention is
        PyTorch's fused kernel whatever ``config.attention`` says (faster than the written-out
        products for a single query). Decoding calls this once per layer per token, where the
        per-operation overhead is most of the time (``benchmarks/bench_decode_step.py``).
        ``rotary`` tables are ``(1, D)``.
        """
        B, C = x.shape
        qkv = self.qkv(x).view(B, 3, self.n_head, self.head_size)
        qk, v = qkv[:, :2], qkv[:, 2]  # (B, 2, H, D) queries and keys, (B, H, D) values
        if self.qk_norm is not None:
            qk = self.qk_norm(qk)
        if rotary is not None:
            qk = apply_rotary(qk, *rotary)
        q, k = qk.unbind(1)
        keys, values = kv_cache.append_one(layer, k, v)  # (B, H, S, D), S = past + 1
        y = F.scaled_dot_product_attention(q.unsqueeze(2), keys, values)  # (B, H, 1, D)
        return self.proj(y.view(B, C))
