"""Key/value cache for incremental decoding."""

from __future__ import annotations

import torch


class KVCache:
    """Keys and values of every layer for the tokens seen so far, preallocated.

    Without a cache, producing token ``t+1`` re-encodes all ``t`` previous tokens: ``O(t)`` work
    per token. Keys and values of past tokens never change in a causal model, so we keep them:
    each step only encodes the new token and attends over the stored past.

    Storage is one ``(n_layer, B, H, max_len, D)`` tensor for keys and one for values, allocated
    once, so decoding never reallocates. ``length`` counts positions already written; a forward
    pass writes its ``T`` new positions in every layer, then the model calls :meth:`advance`.
    """

    def __init__(
        self,
        n_layer: int,
        batch_size: int,
        n_head: int,
        max_len: int,
        head_size: int,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        shape = (n_layer, batch_size, n_head, max_len, head_size)
        # never read before written (attention sees only the first ``length`` positions)
        self.keys = torch.empty(shape, dtype=dtype, device=device)
        self.values = torch.empty(shape, dtype=dtype, device=device)
        self.max_len = max_len
        self.length = 0

    @property
    def nbytes(self) -> int:
        """Bytes held by the preallocated key and value tensors."""
        return self.keys.nbytes + self.values.nbytes

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``k``, ``v`` (``(B, H, T, D)``) for ``layer``; return all keys and values so far.

        Returns views of shape ``(B, H, length + T, D)``.
        """
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(
                f"KV cache holds {self.max_len} positions but {end} were requested; "
                "reset it or allocate a longer cache"
            )
        self.keys[layer, :, :, self.length : end] = k
        self.values[layer, :, :, self.length : end] = v
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]

    def append_one(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`update` for one position: ``k``, ``v`` ``(B, H, D)``; return ``(B, H, S, D)``.

        ``S = length + 1``. Fewer indexing operations than :meth:`update`, for the decode steps.
        """
        if self.length >= self.max_len:
            raise ValueError(
                f"KV cache holds {self.max_len} positions, all written; "
                "reset it or allocate a longer cache"
            )
        keys, values = self.keys[layer], self.values[layer]  # (B, H, max_len, D)
        keys.select(2, self.length).copy_(k)
        values.select(2, self.length).copy_(v)
        return keys[:, :, : self.length + 1], values[:, :, : self.length + 1]

    def advance(self, num_tokens: int) -> None:
        """Mark ``num_tokens`` more positions as written (after every layer has stored them)."""
        self.length += num_tokens

    def reset(self) -> None:
        """Forget every stored position (the memory is kept for reuse)."""
        self.length = 0
