"""Validation loss, perplexity and bits per byte.

Loss per token depends on the tokenizer: a BPE token carries several characters, a char token
one. **Bits per byte** does not: it is the total information the model needs to encode the
validation text, ``total nats / ln 2``, divided by the text's size in UTF-8 bytes
(:attr:`quillgpt.data.PreparedData.val_bytes`). Runs with different tokenizers compare on it.

During training the model is evaluated on a **fixed sample** of the validation split: ``n``
windows of ``block_size + 1`` tokens whose start offsets are evenly spaced from the first to the
last possible one (:func:`sample_starts`). The same windows every time, spread over every
held-out work, so successive evaluations are comparable and cheap. Its bits per byte uses the
split's average bytes per target token: ``mean nats per target * (tokens - 1) / bytes / ln 2``.
After training the **whole split** is evaluated (every token after the first is a target exactly
once): that is the figure to report.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from quillgpt.training.distributed import all_reduce_max, all_reduce_sum

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class EvalResult:
    """Validation figures.

    Attributes:
        loss: mean cross-entropy per target token, in nats.
        perplexity: ``exp(loss)``.
        bpb: bits per byte of the validation text.
        targets: number of target tokens evaluated (all ranks).
    """

    loss: float
    perplexity: float
    bpb: float
    targets: int


def sample_starts(num_tokens: int, block_size: int, num_windows: int) -> np.ndarray:
    """Return ``num_windows`` start offsets evenly spaced over all full windows of the split.

    A window starting at ``s`` needs tokens ``s .. s + block_size``, so starts range over
    ``0 .. num_tokens - block_size - 1``. Duplicates (a split shorter than the sample) are removed.
    """
    last = num_tokens - block_size - 1
    if last < 0:
        raise ValueError(
            f"the validation split has {num_tokens} tokens, fewer than block_size + 1 = "
            f"{block_size + 1}; use a smaller block_size or more validation text"
        )
    return np.unique(np.linspace(0, last, max(1, num_windows)).round().astype(np.int64))


def sample_batches(
    starts: np.ndarray,
    batch_size: int,
    *,
    rank: int = 0,
    world_size: int = 1,
) -> list[np.ndarray]:
    """Deal this rank's share of ``starts`` (``rank::world_size``) into batches of offsets."""
    mine = starts[rank::world_size]
    return [mine[i : i + batch_size] for i in range(0, len(mine), batch_size)]


@torch.no_grad()
def evaluate(
    forward: Callable[[torch.Tensor], torch.Tensor],
    batches: Iterable[Batch],
    *,
    device: torch.device,
    autocast: Callable[[], object],
    tokens_per_byte: float,
    num_batches: int | None = None,
    sharded: bool = False,
) -> EvalResult:
    """Sum the cross-entropy of ``forward(x)`` logits against ``y`` over ``batches``, all ranks.

    Args:
        forward: maps ``x (B, T)`` to logits ``(B, T, V)`` (the model in eval mode).
        batches: this rank's ``(x, y)`` batches.
        device: where to move batches.
        autocast: returns the autocast context for forward passes.
        tokens_per_byte: ``(split tokens - 1) / split bytes``: target tokens per byte of text.
        num_batches: ``len(batches)``; needed with ``sharded``.
        sharded: parameters are sharded (FSDP), so every forward pass is a collective and all
            ranks must run as many: ranks with fewer batches run uncounted padding passes.
    """
    nats = torch.zeros((), dtype=torch.float64, device=device)
    targets = 0
    for x, y in batches:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast():  # type: ignore[attr-defined]
            logits = forward(x)
        nats += F.cross_entropy(
            logits.float().view(-1, logits.shape[-1]), y.view(-1), reduction="sum"
        ).double()
        targets += y.numel()
    if sharded:
        if num_batches is None:
            raise ValueError("evaluate(sharded=True) needs num_batches")
        (most,) = all_reduce_max([float(num_batches)], device)
        for _ in range(int(most) - num_batches):
            with autocast():  # type: ignore[attr-defined]
                forward(torch.zeros(1, 1, dtype=torch.long, device=device))
    total_nats, total_targets = all_reduce_sum([float(nats), float(targets)], device)
    if total_targets == 0:
        raise ValueError("the validation sample is empty; increase eval_tokens")
    loss = total_nats / total_targets
    return EvalResult(
        loss=loss,
        perplexity=math.exp(min(loss, 700.0)),
        bpb=loss / math.log(2) * tokens_per_byte,
        targets=int(total_targets),
    )
