"""The dataset of ``(x, y)`` windows over a memory-mapped token file.

Item ``s`` of :class:`TokenWindows` is the window of ``block_size + 1`` tokens starting at offset
``s``, returned as ``x = tokens[s : s+T]`` and ``y = tokens[s+1 : s+T+1]`` (``y`` is ``x``
shifted by one). ``__getitems__`` gathers a whole batch of start offsets with one numpy fancy
index, which is what makes the loader fast.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from quillgpt.errors import DataError

Batch = tuple[torch.Tensor, torch.Tensor]


class TokenWindows(Dataset[Batch]):
    """Windows of ``block_size + 1`` tokens of one token file, indexed by start offset.

    The file is memory-mapped lazily in each process (the dataset pickles as its path, so
    ``DataLoader`` workers never copy the array). Windows are clipped at the end of the file.

    Args:
        path: a flat token file (``.bin``) of ``dtype`` ids.
        dtype: ``uint16`` or ``uint32``.
        block_size: context length ``T``: ``x`` and ``y`` have ``T`` tokens each.
    """

    def __init__(self, path: str | os.PathLike[str], dtype: np.dtype | str, block_size: int):
        if block_size < 1:
            raise DataError(f"block_size must be at least 1, got {block_size}")
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.block_size = block_size
        self.num_tokens = self.path.stat().st_size // self.dtype.itemsize
        self._tokens: np.memmap | None = None

    @property
    def tokens(self) -> np.memmap:
        """The token ids, shape ``(num_tokens,)``, memory-mapped read-only on first use."""
        if self._tokens is None:
            self._tokens = np.memmap(self.path, dtype=self.dtype, mode="r")
        return self._tokens

    def __len__(self) -> int:
        """Number of valid start offsets: every offset that has at least one target after it."""
        return max(self.num_tokens - 1, 0)

    def __getitem__(self, start: int) -> Batch:
        """Return ``(x, y)`` for one window, each int64 of shape ``(L,)``, ``L <= block_size``."""
        window = torch.from_numpy(self.tokens[start : start + self.block_size + 1].astype(np.int64))
        return window[:-1], window[1:]

    def __getitems__(self, starts: Sequence[int] | np.ndarray) -> Batch:
        """Return a batch ``(x, y)``, each int64 of shape ``(B, L)``, in one gather.

        ``L = min(block_size, num_tokens - 1 - max(starts))``: only a batch that holds the last,
        short window of a file is shorter than ``block_size`` (the samplers batch it alone).
        """
        starts = np.asarray(starts, dtype=np.int64)
        length = min(self.block_size + 1, self.num_tokens - int(starts.max()))
        window = self.tokens[starts[:, None] + np.arange(length)].astype(np.int64)
        batch = torch.from_numpy(window)
        return batch[:, :-1].contiguous(), batch[:, 1:].contiguous()

    def __getstate__(self) -> dict[str, object]:
        """Pickle without the memory map, which each worker process reopens."""
        return {**self.__dict__, "_tokens": None}
