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

:func:`evaluate_model` evaluates any model on a split the same way, outside a training run::

    result = evaluate_model(load_checkpoint("runs/x"), data)
    print(result.loss, result.perplexity, result.bpb)
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from quillgpt.device import all_reduce

if TYPE_CHECKING:
    from quillgpt.data import PreparedData
    from quillgpt.model import DecoderLM

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
        (most,) = all_reduce([float(num_batches)], device, op="max")
        for _ in range(int(most) - num_batches):
            with autocast():  # type: ignore[attr-defined]
                forward(torch.zeros(1, 1, dtype=torch.long, device=device))
    total_nats, total_targets = all_reduce([float(nats), float(targets)], device)
    if total_targets == 0:
        raise ValueError("the validation sample is empty; increase eval_tokens")
    loss = total_nats / total_targets
    return EvalResult(
        loss=loss,
        perplexity=math.exp(min(loss, 700.0)),
        bpb=loss / math.log(2) * tokens_per_byte,
        targets=int(total_targets),
    )


def evaluate_windows(
    model: nn.Module,
    data: PreparedData,
    *,
    sample_tokens: int,
    batch_size: int,
    autocast: Callable[[], object],
    rank: int = 0,
    world_size: int = 1,
    sharded: bool = False,
) -> EvalResult:
    """The training run's evaluation of ``model`` on the validation split.

    On the fixed sample of about ``sample_tokens`` tokens (:func:`sample_starts`), or with
    ``sample_tokens=0`` on the whole split.

    Each rank evaluates its share (``rank`` of ``world_size``); the figures are summed over all.
    ``model`` maps ``(x, y)`` to ``(logits, loss)`` and has a ``config.block_size``.
    """
    from quillgpt.data import TokenWindows, make_eval_loader

    T = model.config.block_size  # type: ignore[union-attr]
    if sample_tokens == 0:
        loader = make_eval_loader(data, T, batch_size, rank=rank, world_size=world_size)
        batches: Iterable[Batch] = loader
        count = len(loader)
    else:
        windows = TokenWindows(data.path("validation"), data.dtype, T)
        starts = sample_starts(data.val_tokens, T, max(1, sample_tokens // T))
        offsets = sample_batches(starts, batch_size, rank=rank, world_size=world_size)
        batches = (windows.__getitems__(o) for o in offsets)
        count = len(offsets)
    with eval_mode(model):
        return evaluate(
            lambda x: model(x)[0],
            batches,
            device=next(model.parameters()).device,
            autocast=autocast,
            tokens_per_byte=(data.val_tokens - 1) / data.val_bytes,
            num_batches=count,
            sharded=sharded,
        )


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Run the block with ``module`` in eval mode (no dropout), then restore the mode it had."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def evaluate_model(
    model: DecoderLM,
    data: PreparedData,
    *,
    split: str = "validation",
    batch_size: int = 8,
    max_batches: int | None = None,
) -> EvalResult:
    """Loss, perplexity and bits per byte of ``model`` on ``split`` of prepared ``data``.

    The split is cut into consecutive windows of the model's ``block_size``
    (:func:`quillgpt.data.make_eval_loader`), so every token but the first is a target exactly
    once: on the validation split, with the training batch size, this is the trainer's final
    whole-split evaluation (``TrainResult.final_eval``). ``max_batches`` stops early; bits per
    byte then uses the split's average bytes per target token.

    The model runs where its parameters are, in its own dtype, in eval mode (its mode is
    restored afterwards) and without gradients. Under ``torchrun`` every process must call it:
    each evaluates its share of the windows and the figures are summed over all of them.

    Example::

        data = prepare_data("shakespeare", tokenizer="char")
        result = evaluate_model(load_checkpoint("runs/x"), data, max_batches=50)
        print(f"{result.loss:.3f} nats/token, {result.bpb:.3f} bits/byte")

    Args:
        model: a :class:`~quillgpt.DecoderLM` (fp32 or quantized): ``idx (B, T)`` to logits
            ``(B, T, V)``.
        data: a prepared corpus (:func:`quillgpt.data.prepare_data`) tokenized with the
            model's tokenizer.
        split: ``"validation"`` or ``"train"``.
        batch_size: windows per forward pass.
        max_batches: evaluate only the first this many batches (``None``: the whole split).

    Returns:
        An :class:`EvalResult`: ``loss`` (nats per target token), ``perplexity``, ``bpb`` and
        the number of ``targets``.

    Raises:
        ValueError: if the model's vocabulary is smaller than the tokenizer's, or
            ``max_batches`` is not positive.
        quillgpt.errors.DataError: for an unknown split, or one shorter than ``block_size + 1``.
    """
    from quillgpt.data import make_eval_loader

    vocab_size = model.config.vocab_size
    if vocab_size < data.vocab_size:
        raise ValueError(
            f"the model has {vocab_size} token ids but the tokenizer of {data.directory} has "
            f"{data.vocab_size}; evaluate on data prepared with the model's own tokenizer"
        )
    if max_batches is not None and max_batches < 1:
        raise ValueError(f"max_batches must be positive (or None for all), got {max_batches}")
    loader = make_eval_loader(data, model.config.block_size, batch_size, split=split)
    batches = loader if max_batches is None else itertools.islice(loader, max_batches)
    tensor = next(itertools.chain(model.parameters(), model.buffers()), None)
    device = tensor.device if tensor is not None else torch.device("cpu")
    with eval_mode(model):
        return evaluate(
            lambda x: model(x)[0],
            batches,
            device=device,
            autocast=contextlib.nullcontext,
            tokens_per_byte=(data.num_tokens(split) - 1) / data.num_bytes(split),
        )
