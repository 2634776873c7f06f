"""Batch samplers of window start offsets: which windows of a token file make up each batch.

* :class:`RandomWindowSampler` -- training batches of start offsets. Each epoch cuts the file
  into non-overlapping windows at a random shift and shuffles them; the windows are dealt to
  ranks, each used once per epoch. Batch ``step`` is a pure function of
  ``(seed, step, rank, world_size)``, so resuming at an exact data position only needs the step.
* :class:`SequentialWindowSampler` -- evaluation batches: consecutive windows at stride
  ``block_size`` so that every token after the first is a target exactly once.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler

from quillgpt.errors import DataError


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


def _check_layout(batch_size: int, block_size: int, rank: int, world_size: int) -> None:
    """Raise :class:`DataError` unless sizes are positive and ``0 <= rank < world_size``."""
    if batch_size < 1 or block_size < 1:
        raise DataError(
            f"batch_size and block_size must be positive, got {batch_size}, {block_size}"
        )
    if world_size < 1 or not 0 <= rank < world_size:
        raise DataError(f"need 0 <= rank < world_size, got rank {rank}, world_size {world_size}")
