"""Faster token-by-token decoding on a CPU: linear layers laid out for matrix-vector products.

Decoding one token multiplies a single activation row ``x (1, C)`` by every weight matrix of the
model, so each step reads all the weights once and does only two FLOPs per weight: its speed is
set by how fast the weights stream from memory, not by arithmetic. Two things keep PyTorch's
plain ``nn.Linear`` well below the memory bandwidth there (measured in
``benchmarks/bench_decode.py``; numbers in ``docs/performance.md``):

* ``F.linear(x, W)`` with ``W`` stored ``(N, C)`` (out, in) becomes a BLAS ``gemv`` on the
  *transposed* matrix: one dot product of length ``C`` per output. With the weight stored
  ``(C, N)`` instead (as Hugging Face's GPT-2 ``Conv1D`` does), ``x @ W`` is the non-transposed
  ``gemv``, which streams the matrix row by row and runs about twice as fast on the measured CPU.
* BLAS runs a single ``gemv`` on one core, however many threads PyTorch has.

:class:`DecodeLinear` fixes both: it stores the weight transposed and cut along the output
features into ``S`` slabs ``(S, C, N/S)``, one per thread, and computes all slabs with one
``torch.baddbmm``. PyTorch spreads the ``S`` independent matrix products of a batched matmul over
its threads, so every core streams its own share of the weights.

``DecoderLM.generate`` and ``stream`` use it by default on a CPU in fp32, for the duration of the
call only (:func:`decoding_layout`): the model's own layers, weights and ``state_dict`` are put
back afterwards, so a model can be trained and saved after generating. Converting costs one copy
of the converted weights per call. To keep the converted copy for many calls instead::

    model = load_checkpoint(run_dir)
    prepare_for_decoding(model)          # in place; returns the number of layers converted
    model.generate(idx, max_new_tokens=128)

A model converted this way computes the same function (to float rounding), but its
``state_dict`` has different names and shapes: convert a fresh copy for generation, never a model
you will train or save. A tied output head gets its own transposed copy (``V x C`` floats more
memory), since the token embedding still needs the original layout for its row look-ups.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn


class DecodeLinear(nn.Module):
    """``y = x W^T + b``, ``W`` stored as ``S`` transposed slabs for fast matrix-vector products.

    The ``N`` output features are padded with zero rows to ``S * n`` (``n = ceil(N / S)``) and
    cut into ``S`` contiguous slabs ``(C, n)``; one ``baddbmm`` multiplies the input by all of
    them at once, each slab on its own thread, and the ``(S, M, n)`` result is put back in
    feature order and cropped to ``N``.

    Shapes: ``x (..., C) -> (..., N)``, like the ``nn.Linear`` it is built from.

    Args:
        linear: the layer to convert (its weights are copied, not shared).
        num_slabs: ``S``; defaults to ``torch.get_num_threads()``.
    """

    def __init__(self, linear: nn.Linear, num_slabs: int | None = None) -> None:
        super().__init__()
        num_slabs = num_slabs or torch.get_num_threads()
        if num_slabs < 1:
            raise ValueError(f"num_slabs must be >= 1, got {num_slabs}")
        weight = linear.weight.detach()
        self.out_features, self.in_features = weight.shape
        self.num_slabs = num_slabs
        self.slab_width = -(-self.out_features // num_slabs)  # ceil(N / S)
        padding = num_slabs * self.slab_width - self.out_features
        padded = F.pad(weight, (0, 0, 0, padding))  # (S*n, C)
        slabs = padded.view(num_slabs, self.slab_width, self.in_features).transpose(1, 2)
        self.register_buffer("slabs", slabs.contiguous())  # (S, C, n)
        bias = linear.bias
        bias = weight.new_zeros(self.out_features) if bias is None else bias.detach()
        self.register_buffer("bias", F.pad(bias, (0, padding)).view(num_slabs, 1, self.slab_width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x W^T + b`` for ``x (..., C)`` as ``(..., N)``."""
        *lead, C = x.shape
        rows = x.reshape(1, -1, C).expand(self.num_slabs, -1, C)  # (S, M, C), no copy
        y = torch.baddbmm(self.bias, rows, self.slabs)  # (S, M, n): slab s on thread s
        y = y.transpose(0, 1).reshape(-1, self.num_slabs * self.slab_width)  # (M, S*n)
        return y[:, : self.out_features].reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        """Shown by ``print(model)``."""
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"num_slabs={self.num_slabs}"
        )


MIN_BYTES = 1 << 20
"""Smallest weight (bytes) worth converting: below about the size of a core's L2 cache the matrix
is read from cache, and splitting it costs more in thread hand-offs than it saves (measured:
a 2-layer, 64-wide model decodes ~10% slower with every layer converted)."""


def _convertible(model: nn.Module, min_bytes: int | None) -> list[tuple[nn.Module, str, nn.Linear]]:
    """``(parent, name, layer)`` of every ``nn.Linear`` in ``model`` of at least ``min_bytes``."""
    min_bytes = MIN_BYTES if min_bytes is None else min_bytes
    return [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is nn.Linear and child.weight.nbytes >= min_bytes
    ]


def prepare_for_decoding(
    model: nn.Module, num_slabs: int | None = None, min_bytes: int | None = None
) -> int:
    """Replace the ``nn.Linear`` layers of ``model`` (in place) by :class:`DecodeLinear` s.

    Only layers whose weight has at least ``min_bytes`` bytes are converted (default
    :data:`MIN_BYTES`; pass 0 to convert all). Meant for fp32 inference on a CPU; on a GPU a
    single matrix product already uses the whole device, so leave the model as it is there.
    Returns the number of layers converted.
    """
    targets = _convertible(model, min_bytes)
    for parent, name, child in targets:
        setattr(parent, name, DecodeLinear(child, num_slabs))
    return len(targets)


@contextlib.contextmanager
def decoding_layout(model: nn.Module, enabled: bool = True) -> Iterator[int]:
    """Within the block, ``model``'s large ``nn.Linear`` layers compute as :class:`DecodeLinear`.

    Only where the layout pays: fp32 weights on a CPU, outside of training (the copies carry no
    gradient). On leaving the block, even by an exception or an abandoned generator, the original
    layers are put back, with their parameters untouched. Yields the number of layers converted.
    """
    weight = next((p for p in model.parameters() if p.dim() == 2), None)
    pays = weight is not None and weight.device.type == "cpu" and weight.dtype == torch.float32
    targets = _convertible(model, None) if enabled and pays and not model.training else []
    for parent, name, child in targets:
        setattr(parent, name, DecodeLinear(child))
    try:
        yield len(targets)
    finally:
        for parent, name, child in targets:
            setattr(parent, name, child)
