"""Batches of ``(x, y)`` windows over a memory-mapped token file, for training and evaluation.

Three small pieces, in the ``torch.utils.data`` way:

* :class:`TokenWindows` -- the dataset. Item ``s`` is the window of ``block_size + 1`` tokens
  starting at offset ``s``, returned as ``x = tokens[s : s+T]`` and ``y = tokens[s+1 : s+T+1]``
  (``y`` is ``x`` shifted by one). ``__getitems__`` gathers a whole batch of start offsets with
  one numpy fancy index, which is what makes the loader fast.
* :class:`RandomWindowSampler` -- training batches of start offsets. Each epoch cuts the file
  into non-overlapping windows at a random shift and shuffles them; the windows are dealt to
  ranks, each used once per epoch. Batch ``step`` is a pure function of
  ``(seed, step, rank, world_size)``, so resuming at an exact data position only needs the step.
* :class:`SequentialWindowSampler` -- evaluation batches: consecutive windows at stride
  ``block_size`` so that every token after the first is a target exactly once.

:func:`make_train_loader` and :func:`make_eval_loader` put them in a ``DataLoader`` (workers
optional, ``pin_memory`` on CUDA, rank and world size from ``torch.distributed`` if initialised).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from quillgpt.data.tokens import PreparedData
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


class RandomWindowSampler(Sampler[np.ndarray]):
    """Training batches of window start offsets: one shuffled stream of windows, dealt to ranks.

    Epoch ``e`` draws a ``shift`` in ``[0, block_size)`` and a permutation of the
    ``windows_per_epoch = num_tokens // block_size - 1`` non-overlapping windows that start at
    ``shift + i * block_size`` (the count that fits for every shift). Concatenating the epochs
    gives one endless stream of windows; slot ``g`` of the stream goes to rank ``g % world_size``,
    and rank ``r``'s batch ``step`` is slots ``(step * batch_size + j) * world_size + r`` for
    ``j < batch_size``. Hence:

    * every window of an epoch is used exactly once, by exactly one rank, before the next epoch;
    * batch ``step`` is a pure function of ``(seed, step, rank, world_size)``: resuming at an
      exact data position needs only the step;
    * the stream does not depend on how it is cut: a batch of ``k * batch_size`` at step ``s`` is
      the concatenation of the batches ``k * s, ..., k * s + k - 1`` of ``batch_size``, so
      gradient accumulation sees exactly the data of the larger batch.

    Args:
        num_tokens: length of the token file.
        block_size: context length ``T``.
        batch_size: windows per batch, per rank.
        seed: with the epoch number, seeds each epoch's shift and permutation.
        rank: this process's rank in ``[0, world_size)``.
        world_size: number of data-parallel processes.
        start_step: first step to yield (resume here).
        num_steps: number of steps to yield; ``None`` yields forever.
        name: what the token file is, for error messages.
    """

    def __init__(
        self,
        num_tokens: int,
        block_size: int,
        batch_size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        start_step: int = 0,
        num_steps: int | None = None,
        name: str = "the token file",
    ):
        _check_layout(batch_size, block_size, rank, world_size)
        if seed < 0 or start_step < 0:
            raise DataError(f"seed and start_step must be non-negative, got {seed}, {start_step}")
        self.block_size = block_size
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.start_step = start_step
        self.num_steps = num_steps
        self.windows_per_epoch = num_tokens // block_size - 1
        if self.windows_per_epoch < batch_size * world_size:
            need = (batch_size * world_size + 2) * block_size
            raise DataError(
                f"{name} has {num_tokens} tokens, too few for one step of {batch_size} x "
                f"{world_size} windows of block_size {block_size} (needs {need}); use a smaller "
                "batch_size or block_size, or more text"
            )
        self._epochs: dict[int, tuple[int, np.ndarray]] = {}

    def epoch_windows(self, epoch: int) -> tuple[int, np.ndarray]:
        """Return ``(shift, permutation)`` of ``epoch``: a pure function of ``(seed, epoch)``."""
        if epoch not in self._epochs:
            rng = np.random.default_rng([self.seed, epoch])
            shift = int(rng.integers(self.block_size))
            # keep the previous epoch only: a batch spans at most two consecutive epochs
            self._epochs = {e: v for e, v in self._epochs.items() if e == epoch - 1}
            self._epochs[epoch] = (shift, rng.permutation(self.windows_per_epoch))
        return self._epochs[epoch]

    def batch(self, step: int) -> np.ndarray:
        """Return start offsets of this rank's batch ``step``, int64 of shape ``(batch_size,)``."""
        slots = (step * self.batch_size + np.arange(self.batch_size)) * self.world_size + self.rank
        epochs, positions = np.divmod(slots, self.windows_per_epoch)
        starts = np.empty(self.batch_size, dtype=np.int64)
        for epoch in np.unique(epochs).tolist():
            shift, order = self.epoch_windows(epoch)
            here = epochs == epoch
            starts[here] = shift + order[positions[here]] * self.block_size
        return starts

    def __iter__(self) -> Iterator[np.ndarray]:
        """Yield batches from ``start_step``, for ``num_steps`` steps or forever."""
        if self.num_steps is None:
            steps: Iterator[int] = itertools.count(self.start_step)
        else:
            steps = iter(range(self.start_step, self.start_step + self.num_steps))
        for step in steps:
            yield self.batch(step)

    def __len__(self) -> int:
        """Number of batches yielded; a ``TypeError`` when unbounded (``num_steps=None``)."""
        if self.num_steps is None:
            raise TypeError("an unbounded RandomWindowSampler has no length; pass num_steps")
        return self.num_steps


class SequentialWindowSampler(Sampler[np.ndarray]):
    """Evaluation batches of window start offsets that cover every target token exactly once.

    Window ``j`` starts at ``j * block_size``, for ``j < ceil((num_tokens - 1) / block_size)``;
    the last one is shorter when ``block_size`` does not divide ``num_tokens - 1`` and is yielded
    as a batch of its own. Rank ``r`` takes windows ``j = r, r + world_size, ...``, in order.

    Args:
        num_tokens: length of the token file.
        block_size: context length ``T``.
        batch_size: windows per batch, per rank (the last batch may be smaller).
        rank: this process's rank in ``[0, world_size)``.
        world_size: number of data-parallel processes.
        name: what the token file is, for error messages.
    """

    def __init__(
        self,
        num_tokens: int,
        block_size: int,
        batch_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        name: str = "the token file",
    ):
        _check_layout(batch_size, block_size, rank, world_size)
        if num_tokens < block_size + 1:
            raise DataError(
                f"{name} has {num_tokens} tokens, fewer than block_size + 1 = {block_size + 1}; "
                "use a smaller block_size or more validation text"
            )
        num_windows = -(-(num_tokens - 1) // block_size)
        starts = np.arange(rank, num_windows, world_size, dtype=np.int64) * block_size
        full = starts[starts + block_size + 1 <= num_tokens]
        self._batches = [full[i : i + batch_size] for i in range(0, len(full), batch_size)]
        self._batches += [starts[len(full) :]] if len(full) < len(starts) else []

    def __iter__(self) -> Iterator[np.ndarray]:
        """Yield this rank's batches in file order."""
        return iter(self._batches)

    def __len__(self) -> int:
        """Number of batches of this rank."""
        return len(self._batches)


def make_train_loader(
    data: PreparedData,
    block_size: int,
    batch_size: int,
    *,
    seed: int = 0,
    start_step: int = 0,
    num_steps: int | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    num_workers: int = 0,
    pin_memory: bool | None = None,
    split: str = "train",
) -> DataLoader[Batch]:
    """Return a ``DataLoader`` of training batches ``(x, y)``, int64 ``(batch_size, block_size)``.

    Batches come from :class:`RandomWindowSampler`: resume exactly with ``start_step``.
    ``rank`` and ``world_size`` default to ``torch.distributed``'s when it is initialised.
    ``pin_memory`` defaults to ``torch.cuda.is_available()``. ``num_workers=0`` is fastest on
    CPU (a batch is one gather); workers help when the file is on slow storage.
    """
    rank, world_size = _ranks(rank, world_size)
    sampler = RandomWindowSampler(
        data.num_tokens(split),
        block_size,
        batch_size,
        seed=seed,
        rank=rank,
        world_size=world_size,
        start_step=start_step,
        num_steps=num_steps,
        name=f"the {split} split",
    )
    return _loader(
        TokenWindows(data.path(split), data.dtype, block_size), sampler, num_workers, pin_memory
    )


def make_eval_loader(
    data: PreparedData,
    block_size: int,
    batch_size: int,
    *,
    split: str = "validation",
    rank: int | None = None,
    world_size: int | None = None,
    num_workers: int = 0,
    pin_memory: bool | None = None,
) -> DataLoader[Batch]:
    """Return a ``DataLoader`` of evaluation batches ``(x, y)``, int64 ``(B, L)``, ``L <= T``.

    Across all ranks every token of ``split`` but the first is a target exactly once, so
    summing the loss over all targets and dividing by ``data.num_bytes(split) * ln 2`` gives
    bits per byte. Raises :class:`DataError` if the split is shorter than ``block_size + 1``.
    """
    rank, world_size = _ranks(rank, world_size)
    sampler = SequentialWindowSampler(
        data.num_tokens(split),
        block_size,
        batch_size,
        rank=rank,
        world_size=world_size,
        name=f"the {split} split",
    )
    return _loader(
        TokenWindows(data.path(split), data.dtype, block_size), sampler, num_workers, pin_memory
    )


def _loader(
    dataset: TokenWindows, sampler: Sampler[np.ndarray], num_workers: int, pin_memory: bool | None
) -> DataLoader[Batch]:
    """Wrap a dataset and a batch sampler; each sampled batch is fetched with one gather."""
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=_as_batch,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        persistent_workers=num_workers > 0,
    )


def _as_batch(batch: Batch) -> Batch:
    """Collate function: ``TokenWindows.__getitems__`` already returns the stacked batch."""
    return batch


def _ranks(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """Fill in rank and world size from ``torch.distributed`` when not given."""
    initialised = torch.distributed.is_available() and torch.distributed.is_initialized()
    if rank is None:
        rank = torch.distributed.get_rank() if initialised else 0
    if world_size is None:
        world_size = torch.distributed.get_world_size() if initialised else 1
    return rank, world_size


def _check_layout(batch_size: int, block_size: int, rank: int, world_size: int) -> None:
    """Raise :class:`DataError` unless sizes are positive and ``0 <= rank < world_size``."""
    if batch_size < 1 or block_size < 1:
        raise DataError(
            f"batch_size and block_size must be positive, got {batch_size}, {block_size}"
        )
    if world_size < 1 or not 0 <= rank < world_size:
        raise DataError(f"need 0 <= rank < world_size, got rank {rank}, world_size {world_size}")
