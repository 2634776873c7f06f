"""One decoder block: pre-norm attention and feed-forward, each inside a residual connection."""

from __future__ import annotations

import torch
from torch import nn

from quillgpt.config import ModelConfig
from quillgpt.model.attention import MultiHeadSelfAttention
from quillgpt.model.feedforward import FeedForward
from quillgpt.model.kv_cache import KVCache
from quillgpt.model.norm import make_norm


class DecoderBlock(nn.Module):
    """``x + attn(ln1(x))``, then ``x + ffn(ln2(x))``.

    Pre-norm (LayerNorm or RMSNorm *before* each sub-layer, as in GPT-2) keeps an identity path
    from the input to the output of the whole stack, so gradients reach early layers undistorted
    and deep models train without the learning-rate warm-up tricks that post-norm needs.

    Shapes: ``(B, T, C) -> (B, T, C)``.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.ln1 = make_norm(config, config.n_embd)
        self.attn = MultiHeadSelfAttention(config)
        self.ln2 = make_norm(config, config.n_embd)
        self.ffn = FeedForward(config)

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
        kv_cache: KVCache | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        """Apply the block to ``x`` ``(B, T, C)``; other arguments as in the attention layer."""
        x = x + self.attn(
            self.ln1(x), attn_mask=attn_mask, rotary=rotary, kv_cache=kv_cache, layer=layer
        )
        return x + self.ffn(self.ln2(x))

    def decode(
        self,
        x: torch.Tensor,
        kv_cache: KVCache,
        layer: int,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """:meth:`forward` for one new token per row, in eval mode: ``x (B, C) -> (B, C)``."""
        x = x + self.attn.decode(self.ln1(x), kv_cache, layer, rotary)
        return x + self.ffn.proj(self.ffn.act(self.ffn.fc(self.ln2(x))))  # no dropout in eval
