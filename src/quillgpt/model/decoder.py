"""The decoder-only language model: embeddings, a stack of blocks, and the output head."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from quillgpt.config import ModelConfig
from quillgpt.model.attention import causal_mask
from quillgpt.model.block import DecoderBlock
from quillgpt.model.dropout import Dropout
from quillgpt.model.embedding import TokenEmbedding
from quillgpt.model.generation import generate_stream
from quillgpt.model.kv_cache import KVCache
from quillgpt.model.norm import make_norm
from quillgpt.model.positional import (
    LearnedPositionalEmbedding,
    RotaryEmbedding,
    SinusoidalPositionalEncoding,
)

IGNORE_INDEX = -100
"""Target value that the loss skips (padding), as in ``nn.CrossEntropyLoss``."""


class DecoderLM(nn.Module):
    """A GPT-style decoder-only transformer language model.

    ``idx (B, T)`` token ids are embedded ``(B, T, C)`` (plus absolute positions, unless RoPE is
    used inside attention), passed through ``n_layer`` :class:`DecoderBlock` s, normalised, and
    projected by the head to ``(B, T, V)`` logits: at every position, unnormalised scores of what
    the *next* token is. ``F.softmax`` over the last axis turns them into probabilities.

    Example::

        model = DecoderLM(ModelConfig.preset("tiny"))
        logits, loss = model(idx, targets)       # (B, T, V), scalar
        out = model.generate(idx, max_new_tokens=20, temperature=0.0)

    Set ``model.gradient_checkpointing = True`` to recompute each block's activations in the
    backward pass instead of storing them (less memory, about one extra forward of compute).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.gradient_checkpointing = False
        self.tok_emb = TokenEmbedding(config.vocab_size, config.n_embd)
        self.pos_emb: nn.Module | None = None
        self.rotary: RotaryEmbedding | None = None
        if config.pos_encoding == "learned":
            self.pos_emb = LearnedPositionalEmbedding(config.block_size, config.n_embd)
        elif config.pos_encoding == "sinusoidal":
            self.pos_emb = SinusoidalPositionalEncoding(config.block_size, config.n_embd)
        else:
            self.rotary = RotaryEmbedding(config.block_size, config.head_size, config.rope_base)
        self.drop = Dropout(config.dropout)
        self.blocks = nn.ModuleList(DecoderBlock(config) for _ in range(config.n_layer))
        self.ln_f = make_norm(config, config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.loss_fn = nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX)
        self.reset_parameters()
        if config.tie_weights:
            self.lm_head.weight = self.tok_emb.weight

    def reset_parameters(self) -> None:
        """Initialise every weight: N(0, 0.02) matrices, zero biases, unit norm gains.

        The two projections that write into the residual stream in each block are scaled by
        ``1/sqrt(2 * n_layer)`` (GPT-2), so the stream's variance does not grow with depth; with
        ``init="zero_proj"`` they start at zero instead, as does an untied head, so each block
        starts as the identity and the first logits are uniform. The projections' inputs still
        get gradients from the first step on: the gradient of ``W`` in ``W h`` is ``g h^T``.
        """
        zero = self.config.init == "zero_proj"
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layer)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                writes_residual = name.endswith(("attn.proj", "ffn.proj"))
                if zero and (writes_residual or name == "lm_head"):
                    nn.init.zeros_(module.weight)
                else:
                    std = residual_std if writes_residual else 0.02
                    nn.init.normal_(module.weight, mean=0.0, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
                module.reset_parameters()

    def num_parameters(self, *, exclude_embeddings: bool = False) -> int:
        """Count parameters (shared tensors once).

        With ``exclude_embeddings=True``, token and learned position embeddings are left out: the
        count ``N`` of scaling laws and of the ``6N`` training-FLOPs estimate. A tied output head
        shares the token embedding and is left out with it.
        """
        params = {id(p): p for p in self.parameters()}
        if exclude_embeddings:
            params.pop(id(self.tok_emb.weight), None)
            if isinstance(self.pos_emb, LearnedPositionalEmbedding):
                params.pop(id(self.pos_emb.embed.weight), None)
        return sum(p.numel() for p in params.values())

    def new_kv_cache(
        self, batch_size: int, max_len: int | None = None, *, dtype: torch.dtype | None = None
    ) -> KVCache:
        """Allocate a :class:`KVCache` for ``batch_size`` sequences of up to ``max_len`` tokens.

        Dtype and device follow the token embedding, which stays a plain tensor even when the
        linear layers are swapped for quantized ones.
        """
        cfg = self.config
        weight = self.tok_emb.weight
        return KVCache(
            cfg.n_layer,
            batch_size,
            cfg.n_head,
            min(max_len or cfg.block_size, cfg.block_size),
            cfg.head_size,
            dtype=dtype or weight.dtype,
            device=weight.device,
        )

    def hidden_states(
        self,
        idx: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Run embeddings and blocks; return the final normalised hidden states ``(B, T, C)``.

        Args:
            idx: ``(B, T)`` int64 token ids.
            attention_mask: optional ``(B, T)`` with 1 (or True) for real tokens and 0 for
                padding. Padding keys are hidden from every query; positions stay ``0..T-1``,
                so pad on the right. Not combinable with ``kv_cache``.
            kv_cache: continue from (and append to) the positions stored in this cache.
        """
        B, T = idx.shape
        past = kv_cache.length if kv_cache is not None else 0
        if past + T > self.config.block_size:
            raise ValueError(
                f"sequence of {past + T} tokens exceeds the context window "
                f"block_size={self.config.block_size}; crop the input (generate() does this)"
            )
        positions = torch.arange(past, past + T, device=idx.device)
        x = self.tok_emb(idx)
        if self.pos_emb is not None:
            x = x + self.pos_emb(positions)
        x = self.drop(x)
        rotary = self.rotary(positions) if self.rotary is not None else None
        attn_mask = None
        if attention_mask is not None:
            if kv_cache is not None:
                raise ValueError("attention_mask cannot be combined with a kv_cache")
            attn_mask = padding_causal_mask(attention_mask)
        for layer, block in enumerate(self.blocks):
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, attn_mask, rotary, use_reentrant=False)
            else:
                x = block(x, attn_mask, rotary, kv_cache, layer)
        if kv_cache is not None:
            kv_cache.advance(T)
        return self.ln_f(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Project hidden states ``(..., C)`` to logits ``(..., V)``, soft-capped if configured.

        ``cap * tanh(z / cap)`` is ``z`` for small ``|z|`` and saturates smoothly at ``+-cap``.
        """
        logits = self.lm_head(hidden)
        cap = self.config.logit_softcap
        if cap is not None:  # in fp32: under bf16 autocast, tanh near +-cap would lose the tail
            logits = cap * torch.tanh(logits.float() / cap)
        return logits

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return ``(logits, loss)``.

        Args:
            idx: ``(B, T)`` int64 token ids, ``T <= block_size``.
            targets: optional ``(B, T)`` next-token ids; positions equal to ``IGNORE_INDEX``
                (-100) do not count.
            attention_mask: optional ``(B, T)`` padding mask (see :meth:`hidden_states`).

        Returns:
            ``logits (B, T, V)`` and the mean cross-entropy over counted positions (a scalar),
            or ``None`` without targets.
        """
        logits = self.logits(self.hidden_states(idx, attention_mask=attention_mask))
        if targets is None:
            return logits, None
        loss = self.loss_fn(logits.float().view(-1, logits.shape[-1]), targets.view(-1))
        return logits, loss

    def next_token_logits(self, idx: torch.Tensor, kv_cache: KVCache | None = None) -> torch.Tensor:
        """Return logits ``(B, V)`` for the token following ``idx`` ``(B, T)``.

        Only the last position goes through the output head: at inference the other ``T-1`` rows
        of the ``(T, V)`` logits would be thrown away.
        """
        return self.logits(self.hidden_states(idx, kv_cache=kv_cache)[:, -1])

    def decode_step(self, token: torch.Tensor, kv_cache: KVCache) -> torch.Tensor:
        """Logits ``(B, V)`` after one more token per row, ``token (B,)``, appended to ``kv_cache``.

        What ``next_token_logits(token[:, None], kv_cache)`` returns, computed through each
        block's one-token :meth:`~quillgpt.model.block.DecoderBlock.decode` (about half the tensor
        operations): the decode steps of generation. Eval mode only (no dropout).
        """
        if self.training:
            raise ValueError("decode_step runs in eval mode: call model.eval() first")
        past = kv_cache.length
        if past >= self.config.block_size:
            raise ValueError(
                f"the KV cache already holds block_size={self.config.block_size} tokens; "
                "reset it and refill from the last block_size tokens (generate() does this)"
            )
        here = slice(past, past + 1)  # this token's position, as a view into the tables
        x = self.tok_emb.weight[token]  # (B, C)
        if self.pos_emb is not None:
            x = x + self.pos_emb(here)
        rotary = self.rotary(here) if self.rotary is not None else None  # (1, D) tables
        for layer, block in enumerate(self.blocks):
            x = block.decode(x, kv_cache, layer, rotary)
        kv_cache.advance(1)
        return self.logits(self.ln_f(x))

    def next_token_probs(self, idx: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """Return the next-token distribution ``softmax(logits / temperature)``, ``(B, V)``."""
        if temperature <= 0:
            raise ValueError("temperature must be > 0 for a probability distribution")
        return F.softmax(self.next_token_logits(idx) / temperature, dim=-1)

    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        use_cache: bool = True,
        seed: int | None = None,
        stop_tokens: int | Sequence[int] | None = None,
        fast: bool = True,
    ) -> torch.Tensor:
        """Continue ``idx`` ``(B, T)`` by up to ``max_new_tokens``; return ``(B, T + new)``.

        ``temperature=0`` is greedy decoding; otherwise tokens are sampled from the softmax of
        ``logits / temperature``, optionally restricted to the ``top_k`` most likely tokens and/or
        the smallest set whose probability reaches ``top_p``. ``seed`` makes sampling
        reproducible. Generation stops early once every row has produced one of ``stop_tokens``
        (rows that finished first are padded with the stop token they produced). Prompts longer
        than ``block_size`` are cropped to their last ``block_size`` tokens, and generation past
        the window conditions on the most recent ``block_size`` tokens (a sliding window).
        ``fast=False`` decodes with the plain ``nn.Linear`` layers instead of the faster CPU
        layout (:mod:`~quillgpt.model.decode_layout`; the tests check both give the same tokens).
        The model's parameters and ``state_dict`` are the same after generating as before.
        """
        new_tokens = list(
            generate_stream(
                self,
                idx,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                use_cache=use_cache,
                seed=seed,
                stop_tokens=stop_tokens,
                fast=fast,
            )
        )
        if not new_tokens:
            return idx
        return torch.cat([idx, torch.stack(new_tokens, dim=1)], dim=1)

    def stream(self, idx: torch.Tensor, **kwargs: object) -> Iterator[torch.Tensor]:
        """Like :meth:`generate`, but yield each new ``(B,)`` token as soon as it is chosen."""
        return generate_stream(self, idx, **kwargs)


def padding_causal_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Combine a ``(B, T)`` padding mask with the causal mask into ``(B, 1, T, T)`` booleans.

    Each query may always attend to itself, so no row is fully masked: a padded query then yields
    a finite (ignored) output instead of the NaN of a softmax over nothing.
    """
    keep = attention_mask.bool()
    T = keep.shape[1]
    causal = causal_mask(T, T, device=keep.device)
    diagonal = torch.eye(T, dtype=torch.bool, device=keep.device)
    return (causal & keep[:, None, None, :]) | diagonal
