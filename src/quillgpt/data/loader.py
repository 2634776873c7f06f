"""Batches of ``(x, y)`` windows over a memory-mapped token file, for training and evaluation.

Three small pieces, in the ``torch.utils.data`` way:

* :class:`~quillgpt.data.token_windows.TokenWindows` -- the dataset: windows of
  ``block_size + 1`` tokens indexed by start offset, a whole batch fetched in one gather.
* :class:`~quillgpt.data.samplers.RandomWindowSampler` -- training batches of start offsets,
  shuffled per epoch and dealt to ranks; batch ``step`` is a pure function of
  ``(seed, step, rank, world_size)``, so resuming at an exact data position only needs the step.
* :class:`~quillgpt.data.samplers.SequentialWindowSampler` -- evaluation batches that make every
  token after the first a target exactly once.

:func:`make_train_loader` and :func:`make_eval_loader` put them in a ``DataLoader`` (workers
optional, ``pin_memory`` on CUDA, rank and world size from ``torch.distributed`` if initialised).
The dataset and the samplers are importable from here too.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from quillgpt.data.samplers import RandomWindowSampler, SequentialWindowSampler
from quillgpt.data.token_windows import Batch, TokenWindows
from quillgpt.data.tokens import PreparedData

__all__ = [
    "Batch",
    "RandomWindowSampler",
    "SequentialWindowSampler",
    "TokenWindows",
    "make_eval_loader",
    "make_train_loader",
]


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
    """Wrap a dataset and a batch sampler; each sampled batch is fetched with one gather.

    The sampler alone decides the batches. The loader's own generator only seeds workers: a
    private one, because starting an iterator draws from it, and a draw from torch's global
    generator would shift the dropout masks of a resumed run against an uninterrupted one.
    """
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        generator=torch.Generator().manual_seed(0),
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
