"""Token embedding: integer token ids to vectors."""

from __future__ import annotations

import torch
from torch import nn


class TokenEmbedding(nn.Module):
    """Look up a learned ``C``-dimensional vector for every token id.

    This is a table of ``vocab_size x n_embd`` parameters (``nn.Embedding``): row ``i`` is the
    vector of token ``i``. When weights are tied, the same matrix also serves as the output head,
    scoring the final hidden state against every token's vector.

    Shapes: ``idx (B, T) int64 -> (B, T, C)``.
    """

    def __init__(self, vocab_size: int, n_embd: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, n_embd)

    @property
    def weight(self) -> nn.Parameter:
        """The ``(V, C)`` embedding matrix."""
        return self.embed.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Return the embeddings of ``idx`` (``(B, T)`` token ids) as ``(B, T, C)``."""
        return self.embed(idx)
