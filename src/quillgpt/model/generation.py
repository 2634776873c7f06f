"""Autoregressive decoding: greedy, temperature, top-k and top-p sampling, with a KV cache.

The loop is the whole story of inference: encode the prompt once (the *prefill*), then repeatedly
pick a token from the last position's distribution and feed only that token back (the *decode*
steps), reusing the cached keys and values of everything before it.

The functions take the model (as gpt-fast's do) and know it only through :class:`Decoder`, the
three things decoding needs, so this module imports nothing of the model's: ``DecoderLM`` uses
it for ``generate`` and ``stream``, never the other way round.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from quillgpt.config import ModelConfig
from quillgpt.model.decode_layout import decoding_layout
from quillgpt.model.kv_cache import KVCache


class Decoder(Protocol):
    """What decoding needs of a model (:class:`~quillgpt.DecoderLM` is one)."""

    config: ModelConfig
    training: bool

    def new_kv_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        """An empty cache for ``batch_size`` sequences of up to ``max_len`` (``block_size``)."""
        ...

    def next_token_logits(self, idx: torch.Tensor, kv_cache: KVCache | None = None) -> torch.Tensor:
        """Logits ``(B, V)`` of the token after ``idx`` ``(B, T)``, appending to ``kv_cache``."""
        ...

    def decode_step(self, token: torch.Tensor, kv_cache: KVCache) -> torch.Tensor:
        """``next_token_logits(token[:, None], kv_cache)`` for ``token (B,)``, in fewer ops."""
        ...

    def train(self, mode: bool = True) -> Any:
        """Switch training mode (dropout) on or off."""
        ...


def filter_logits(
    logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None
) -> torch.Tensor:
    """Set to ``-inf`` the logits ``(B, V)`` of tokens outside the top-k / top-p (nucleus) set.

    ``top_p`` keeps the smallest set of most likely tokens whose probabilities sum to at least
    ``top_p``; the most likely token is always kept.
    """
    if top_k is not None:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = F.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        drop_sorted = cumulative - F.softmax(sorted_logits, dim=-1) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def choose_next(
    logits: torch.Tensor,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick one token per row of ``logits`` ``(B, V)``; return ``(B,)`` int64.

    ``temperature == 0`` means greedy (arg-max). Otherwise sample from
    ``F.softmax(filter_logits(logits / temperature))``.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0.0:
        return logits.argmax(dim=-1)
    probs = F.softmax(filter_logits(logits.float() / temperature, top_k, top_p), dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


def generate_stream(
    model: Decoder,
    idx: torch.Tensor,
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    use_cache: bool = True,
    seed: int | None = None,
    stop_tokens: int | Sequence[int] | None = None,
    fast: bool = True,
) -> Iterator[torch.Tensor]:
    """Yield ``max_new_tokens`` (or fewer, on stop tokens) next tokens ``(B,)`` continuing ``idx``.

    See :meth:`quillgpt.DecoderLM.generate` for the arguments. The model is put in eval mode for
    the duration and restored afterwards. With ``fast``, a CPU fp32 model's large linear layers
    run oneDNN's kernel for the duration (:func:`~quillgpt.model.decode_layout.decoding_layout`),
    and each decode step runs the model's one-token ``decode_step`` (the same function in fewer
    operations); ``fast=False`` is the plain forward pass at every step.

    With the cache, each step costs one token's worth of compute while the sequence fits the
    window. Once it would overflow, absolute position embeddings of the kept tokens change, so
    cached keys are stale: the cache is refilled from the last ``block_size`` tokens, which is
    exactly what ``use_cache=False`` computes at every step.
    """
    if idx.dim() != 2:
        raise ValueError(f"idx must be (B, T) token ids, got shape {tuple(idx.shape)}")
    if idx.shape[1] == 0:
        raise ValueError("idx is empty: start from at least one token (e.g. end-of-text)")
    block_size = model.config.block_size
    stops = (
        torch.tensor([], dtype=torch.long)
        if stop_tokens is None
        else torch.tensor([stop_tokens] if isinstance(stop_tokens, int) else list(stop_tokens))
    ).to(idx.device)
    generator = None
    if seed is not None:
        generator = torch.Generator(device=idx.device).manual_seed(seed)
    was_training = model.training
    model.train(False)
    layout = decoding_layout(model, fast) if isinstance(model, nn.Module) else nullcontext()
    try:
        with torch.inference_mode(), layout:
            batch, length = idx.shape[0], min(idx.shape[1], block_size)
            capacity = length + max(max_new_tokens, 0)  # a negative count generates nothing
            # every token so far, written in place: the context is a view, never a cat
            sequence = idx.new_empty(batch, capacity)
            sequence[:, :length] = idx[:, -length:]
            cache = model.new_kv_cache(batch, capacity) if use_cache else None
            finished = torch.zeros(batch, dtype=torch.bool, device=idx.device)
            logits = model.next_token_logits(sequence[:, :length], cache)
            for step in range(max_new_tokens):
                token = choose_next(logits, temperature, top_k, top_p, generator)
                if stops.numel():
                    token = torch.where(finished, sequence[:, length - 1], token)
                    finished |= torch.isin(token, stops)
                yield token
                if step == max_new_tokens - 1 or (stops.numel() and bool(finished.all())):
                    return  # the last token needs no logits after it
                sequence[:, length] = token
                length += 1
                if cache is not None and cache.length < cache.max_len:  # one more position fits
                    if fast:
                        logits = model.decode_step(token, cache)
                    else:
                        logits = model.next_token_logits(token[:, None], cache)
                    continue
                if cache is not None:  # the window is full: start again from the last block_size
                    cache.reset()
                context = sequence[:, max(0, length - block_size) : length]
                logits = model.next_token_logits(context, cache)
    finally:
        model.train(was_training)
