"""Position-wise feed-forward network."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from quillgpt.config import ModelConfig
from quillgpt.model.dropout import Dropout


def relu_squared(x: torch.Tensor) -> torch.Tensor:
    """``relu(x) ** 2``: zero for negative inputs, a parabola above (gradient ``2 relu(x)``)."""
    return F.relu(x).square()


class FeedForward(nn.Module):
    """Two linear layers with an activation between them, applied to every position on its own.

    Attention moves information *between* positions; this is where each position computes on
    what it gathered. The hidden layer is ``ffn_mult`` (default 4) times wider than ``C``. The
    activation is exact GELU, GPT-2's tanh approximation (``activation="gelu_tanh"``, so that
    imported GPT-2 weights give the same outputs), or ReLU squared (``relu2``).

    Shapes: ``(B, T, C) -> (B, T, C)``.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.n_embd, config.ffn_hidden, bias=config.bias)
        self.proj = nn.Linear(config.ffn_hidden, config.n_embd, bias=config.bias)
        self.dropout = Dropout(config.dropout)
        self.activation = config.activation

    def act(self, x: torch.Tensor) -> torch.Tensor:
        """The configured activation, elementwise."""
        if self.activation == "relu2":
            return relu_squared(x)
        return F.gelu(x, approximate="tanh" if self.activation == "gelu_tanh" else "none")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``proj(act(fc(x)))`` with residual dropout, shape ``(B, T, C)``."""
        return self.dropout(self.proj(self.act(self.fc(x))))
