"""Three ways of telling attention where each token is.

Attention by itself is blind to order: it sees a *set* of vectors. Each class below injects
position in a different way:

* :class:`LearnedPositionalEmbedding` (GPT-2): a trained vector per position, added to the tokens.
* :class:`SinusoidalPositionalEncoding` (Vaswani et al. 2017): fixed sines and cosines of
  geometrically spaced frequencies, added to the tokens; nothing to learn.
* :class:`RotaryEmbedding` (RoPE, Su et al. 2021): rotates each (even, odd) pair of query and key
  features by an angle proportional to the position, so that ``q_m . k_n`` depends only on the
  offset ``m - n``. Applied inside attention, not to the residual stream.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class LearnedPositionalEmbedding(nn.Module):
    """A trained ``C``-vector for each of ``block_size`` positions.

    Shapes: ``positions (T,) int64 (or a slice) -> (T, C)``, broadcast over the batch when added.
    """

    def __init__(self, block_size: int, n_embd: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(block_size, n_embd)

    def forward(self, positions: torch.Tensor | slice) -> torch.Tensor:
        """Return the vectors of ``positions`` (``(T,)`` or a slice) as ``(T, C)``."""
        return self.embed.weight[positions]  # a slice is a view: nothing gathered


def sinusoidal_table(num_positions: int, dim: int) -> torch.Tensor:
    """Return the ``(num_positions, dim)`` table ``PE[p, 2i] = sin(p / 10000^(2i/dim))``.

    Odd features ``2i+1`` hold the matching cosines.

    Wavelengths grow geometrically from ``2*pi`` to ``10000*2*pi``, so nearby positions differ in
    the fast dimensions and distant ones in the slow dimensions.
    """
    position = torch.arange(num_positions, dtype=torch.float32)[:, None]
    inv_freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(num_positions, dim)
    table[:, 0::2] = torch.sin(position * inv_freq)
    table[:, 1::2] = torch.cos(position * inv_freq)
    return table


class SinusoidalPositionalEncoding(nn.Module):
    """Fixed sinusoidal position vectors (no parameters).

    The table is a non-persistent buffer: it moves with the module across devices but is not
    saved in checkpoints, since it is a pure function of the shape.

    Shapes: ``positions (T,) int64 (or a slice) -> (T, C)``.
    """

    def __init__(self, block_size: int, n_embd: int) -> None:
        super().__init__()
        self.register_buffer("table", sinusoidal_table(block_size, n_embd), persistent=False)

    def forward(self, positions: torch.Tensor | slice) -> torch.Tensor:
        """Return the rows of the table at ``positions`` (``(T,)`` or a slice) as ``(T, C)``."""
        return self.table[positions]


class RotaryEmbedding(nn.Module):
    """Rotary position embedding: precomputed ``cos``/``sin`` of ``position * frequency``.

    For head size ``D`` there are ``D/2`` frequencies ``base^(-2i/D)``. Feature pair
    ``(x[i], x[i + D/2])`` of a query or key at position ``p`` is rotated by angle
    ``p * freq[i]`` (the "rotate-half" layout used by GPT-NeoX and Llama).

    Shapes: ``positions (T,) (or a slice) -> (cos, sin)``, each ``(T, D)``; see
    :func:`apply_rotary`.
    """

    def __init__(self, block_size: int, head_size: int, base: float = 10000.0) -> None:
        super().__init__()
        inv_freq = base ** (-torch.arange(0, head_size, 2, dtype=torch.float32) / head_size)
        angles = torch.outer(torch.arange(block_size, dtype=torch.float32), inv_freq)
        angles = torch.cat((angles, angles), dim=-1)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, positions: torch.Tensor | slice) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(cos, sin)`` tables for ``positions`` (``(T,)`` or a slice), each ``(T, D)``."""
        return self.cos[positions], self.sin[positions]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate queries or keys ``x`` ``(B, H, T, D)`` by the angles in ``cos``, ``sin`` ``(T, D)``.

    Any ``x`` whose last dimension is ``D`` and that broadcasts against the tables works, e.g.
    the ``(B, 2, H, D)`` queries and keys of one token together with ``(1, D)`` tables.

    ``x * cos + rotate_half(x) * sin`` with ``rotate_half([a, b]) = [-b, a]`` is the 2-D rotation
    of every ``(x[i], x[i + D/2])`` pair, written without complex numbers.
    """
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)
