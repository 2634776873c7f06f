"""Muon: PyTorch's ``torch.optim.Muon``, orthogonalising in a dtype chosen per device.

Muon (Keller Jordan, 2024: https://kellerjordan.github.io/posts/muon/) keeps an SGD momentum
buffer per weight matrix and replaces each update by its nearest semi-orthogonal matrix, computed
by a few Newton-Schulz iterations: every direction of the update moves the weights by about the
same amount. On a transformer's hidden matrices it reaches a given loss in fewer steps than
Adam (the modded-nanogpt speedrun, nanochat).

:class:`Muon` subclasses ``torch.optim.Muon`` and overrides only :meth:`Muon.step`, for two
reasons (torch's optimiser has no option for either):

* **The dtype of Newton-Schulz.** torch runs it in bf16, hard-coded
  (``torch/optim/_muon.py::_zeropower_via_newtonschulz``: ``grad.bfloat16()``). That is the fast
  choice where the hardware computes bf16 (GPUs, CPUs with AVX-512 BF16 or AMX), but a CPU
  without it (AMD Zen 3, older Intel) emulates bf16 matrix products several hundred times
  slower than fp32. Here the dtype is an argument; :func:`newton_schulz_dtype` picks bf16 where
  the device computes it natively and fp32 elsewhere. ``muon_dtype=fp32`` asks for fp32
  anyway: the iteration's slope at 0 is ``a = 3.4``, so rounding errors along small singular
  values grow up to ``3.4 ** 5`` times, and in bf16 the last-bit differences of two equivalent
  runs (one process and two) become differences of a few per cent of an update.
* **Fused matrices.** A group's ``ns_chunks`` splits each matrix along its rows into that many
  equal blocks, orthogonalised one by one: the fused query/key/value projection (``3C x C``)
  then gets three ``C x C`` orthogonalisations, as separate q, k and v matrices would (the
  modded-nanogpt speedrun keeps them separate). Orthogonalising the fused matrix would instead
  balance q, k and v against each other, which has no meaning for the model. The learning-rate
  shape adjustment then uses the block's shape too.

Everything else is torch's: the parameter-group defaults and their validation, the state layout
(one ``momentum_buffer`` per parameter, so a saved state loads into ``torch.optim.Muon``), the
per-group buffers (``_init_group``), the Nesterov momentum, the decoupled weight decay and the
rate adjustment (``_adjust_lr``). With ``dtype=torch.bfloat16`` and ``ns_chunks=1`` a step is
bit-for-bit torch's (the test suite checks it).

Sharded (FSDP2 ``DTensor``) parameters are orthogonalised whole: each update is all-gathered,
orthogonalised on every rank (the same numbers on each), and each rank keeps its own shard.
Newton-Schulz of a shard alone would be a different, wrong update.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim._muon import _adjust_lr

from quillgpt.device import cpu_supports_bf16


def newton_schulz_dtype(device: torch.device, choice: str = "auto") -> torch.dtype:
    """The dtype of the Newton-Schulz iteration on ``device`` for ``choice`` (``auto|bf16|fp32``).

    ``auto``: bf16 where ``device`` computes bf16 matrix products natively (CUDA GPUs from
    Ampere on, Intel XPUs, CPUs with AVX-512 BF16 or AMX, Arm BF16), fp32 elsewhere (older GPUs,
    Apple MPS, other CPUs). ``bf16`` where it would be emulated falls back to fp32 with a
    warning, as ``precision=bf16`` does.
    """
    if choice == "fp32":
        return torch.float32
    if device.type == "cuda":
        native = torch.cuda.is_bf16_supported(including_emulation=False)
    else:
        native = device.type == "xpu" or (device.type == "cpu" and cpu_supports_bf16())
    if choice == "bf16" and not native:
        warnings.warn(
            f"bf16 Newton-Schulz on this {device.type} would be emulated (hundreds of times slower "
            "than fp32): Muon orthogonalises in fp32 instead",
            stacklevel=2,
        )
    return torch.bfloat16 if native else torch.float32


def orthogonalize(
    matrix: torch.Tensor,
    coefficients: tuple[float, float, float],
    steps: int,
    eps: float,
    dtype: torch.dtype,
) -> torch.Tensor:
    """The Newton-Schulz approximation of ``U V^T`` for ``matrix = U S V^T``, computed in ``dtype``.

    The iteration of torch's ``_zeropower_via_newtonschulz``, whose only difference is its fixed
    bf16: ``X <- a X + (b A + c A^2) X`` with ``A = X X^T``, on the wide orientation (``m <= n``).
    The quintic pushes every singular value towards 1, to roughly ``[0.7, 1.2]`` in five steps
    with torch's coefficients (not exactly 1, which trains as well: see Keller Jordan's post).
    In bf16, and for matrices less than twice as wide as tall, it runs as written, the same
    operations in the same order as torch's. In fp32 a wider matrix takes :func:`_gram_form`:
    the same polynomial, computed with ``m x m`` products only.

    A batch of matrices is orthogonalised at once, each on its own: one batched product per
    operation instead of one per matrix. On a small model the matrices are small enough that
    per-call overhead, not arithmetic, dominates a loop over them (``benchmarks/bench_muon.py``).

    Args:
        matrix: ``(m, n)`` or a batch ``(b, m, n)``, any float dtype.
        coefficients: ``(a, b, c)`` of the iteration.
        steps: iterations.
        eps: floor of the norm each matrix is first divided by (a zero matrix stays zero).
        dtype: the dtype of the computation and of the result.

    Returns:
        The shape of ``matrix``, in ``dtype``.
    """
    x = matrix.to(dtype)
    tall = matrix.size(-2) > matrix.size(-1)
    if tall:  # iterate on the wide orientation: the Gram matrix X X^T is then the smaller one
        x = x.mT
    batch = x.unsqueeze(0) if x.dim() == 2 else x
    # Frobenius norm >= spectral norm: singular values <= 1.
    batch = batch.div(batch.norm(dim=(-2, -1), keepdim=True).clamp(min=eps))
    gram_pays = dtype == torch.float32 and batch.size(-1) >= 2 * batch.size(-2)
    batch = (_gram_form if gram_pays else _written_out)(batch, coefficients, steps)
    x = batch.squeeze(0) if x.dim() == 2 else batch
    return x.mT if tall else x


def _written_out(
    x: torch.Tensor, coefficients: tuple[float, float, float], steps: int
) -> torch.Tensor:
    """The Newton-Schulz iteration of ``x`` ``(b, m, n)`` as written: torch's operations."""
    a, b, c = coefficients
    for _ in range(steps):
        gram = x @ x.mT
        poly = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)  # b A + c A^2
        x = torch.baddbmm(x, poly, x, beta=a)  # a X + (b A + c A^2) X
    return x


def _gram_form(
    x: torch.Tensor, coefficients: tuple[float, float, float], steps: int
) -> torch.Tensor:
    """The Newton-Schulz iteration of ``x`` ``(b, m, n)``, ``n >= 2m``, through its Gram matrix.

    Each step multiplies ``X`` on the left by ``P = a I + b A + c A^2``, a polynomial in
    ``A = X X^T``, so after ``k`` steps ``X_k = Q_k X_0`` where ``Q_k = P_k ... P_1`` is a
    polynomial in ``A_0``: all of them commute, and ``A_{k+1} = P_k A_k P_k``. Iterating on the
    ``m x m`` matrices ``Q`` and ``A`` and applying ``Q`` once at the end costs
    ``2 m^2 n + 17 m^3`` multiply-adds per matrix over five steps, against ``10 m^2 n + 5 m^3``
    written out: 0.56x for the ``C x 4C`` feed-forward matrices. The rounding differs: ``Q``
    grows up to ``a ** steps`` along small singular values, so in bf16 its 8 bits ruin the
    result (errors of order 1 where a few directions dominate, tested); in fp32 it stays
    within 1e-3 (relative) of the written-out iteration on matrices whose singular values
    spread over three decades (tested).
    """
    a, b, c = coefficients
    gram = x @ x.mT
    a_eye = a * torch.eye(gram.size(-1), dtype=gram.dtype, device=gram.device)
    q = None
    for step in range(steps):
        p = a_eye + torch.baddbmm(gram, gram, gram, beta=b, alpha=c)  # a I + b A + c A^2
        q = p if q is None else p @ q
        if step < steps - 1:  # the last step's A is not needed
            gram = p @ gram @ p
    return q @ x  # type: ignore[operator]


class Muon(torch.optim.Muon):
    """``torch.optim.Muon`` with Newton-Schulz in ``dtype`` and fused matrices split in blocks.

    Args:
        params: parameters or groups, as for ``torch.optim.Muon`` (2-D parameters only). A group
            may set ``ns_chunks`` (default 1): each matrix is orthogonalised as that many equal
            blocks of rows.
        dtype: the dtype of the Newton-Schulz iteration (:func:`newton_schulz_dtype`). It is a
            property of the machine, not of the run, so it is not saved with the state: a run
            resumed on another machine computes in that machine's best dtype.
        **defaults: ``lr``, ``weight_decay``, ``momentum``, ``nesterov``, ``ns_coefficients``,
            ``eps``, ``ns_steps``, ``adjust_lr_fn``, as for ``torch.optim.Muon``.
    """

    def __init__(
        self,
        params: Iterable[Any],
        *,
        dtype: torch.dtype = torch.float32,
        **defaults: Any,
    ) -> None:
        super().__init__(params, **defaults)
        self.dtype = dtype
        self.defaults["ns_chunks"] = 1
        for group in self.param_groups:
            group.setdefault("ns_chunks", 1)
            for param in group["params"]:
                if param.size(0) % group["ns_chunks"]:
                    raise ValueError(
                        f"ns_chunks={group['ns_chunks']} does not divide the {param.size(0)} "
                        "rows of a parameter"
                    )

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One update of every parameter with a gradient; see the module docstring.

        The momentum of every parameter is updated first; then all blocks of one shape (and
        one group setting) are orthogonalised in one batch, across groups; then each
        parameter moves.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        pending: list[tuple[torch.Tensor, torch.Tensor, dict[str, Any]]] = []
        for group in self.param_groups:
            params: list[torch.Tensor] = []
            grads: list[torch.Tensor] = []
            buffers: list[torch.Tensor] = []
            self._init_group(group, params, grads, buffers)
            momentum = group["momentum"]
            for param, grad, buffer in zip(params, grads, buffers, strict=True):
                buffer.lerp_(grad, 1 - momentum)  # buffer = momentum * buffer + (1 - momentum) grad
                update = grad.lerp(buffer, momentum) if group["nesterov"] else buffer
                pending.append((param, update, group))
        orthogonal = self._orthogonalized([(update, group) for _, update, group in pending])
        for (param, _, group), (result, block_shape) in zip(pending, orthogonal, strict=True):
            lr = float(group["lr"])
            param.mul_(1 - lr * group["weight_decay"])
            param.add_(result, alpha=-_adjust_lr(lr, group["adjust_lr_fn"], block_shape))
        return loss

    def _orthogonalized(
        self, updates: list[tuple[torch.Tensor, dict[str, Any]]]
    ) -> list[tuple[torch.Tensor, torch.Size]]:
        """Each ``(update, group)`` orthogonalised block by block, with a block's shape.

        An update (``(m, n)``) is cut into its group's ``ns_chunks`` blocks of rows; blocks of
        the same shape and iteration settings go through :func:`orthogonalize` as one batch.
        A sharded ``DTensor`` is gathered whole first, and its result sharded the same way
        (each rank slices its own shard: no communication).
        """
        blocks: list[tuple[torch.Tensor, ...]] = []
        batches: dict[tuple[Any, ...], list[tuple[int, int]]] = {}  # key -> (update, block)
        for index, (update, group) in enumerate(updates):
            full = update.full_tensor() if _is_sharded(update) else update  # type: ignore[attr-defined]
            blocks.append(full.chunk(group["ns_chunks"], dim=0))
            settings = (tuple(group["ns_coefficients"]), group["ns_steps"], group["eps"])
            for position, block in enumerate(blocks[-1]):
                key = (block.shape, block.device, *settings)
                batches.setdefault(key, []).append((index, position))
        done: list[list[torch.Tensor | None]] = [[None] * len(b) for b in blocks]
        for (_, _, coefficients, steps, eps), members in batches.items():
            stacked = torch.stack([blocks[i][j] for i, j in members])
            for (i, j), result in zip(
                members, orthogonalize(stacked, coefficients, steps, eps, self.dtype), strict=True
            ):
                done[i][j] = result
        results = []
        for (update, _), parts, original in zip(updates, done, blocks, strict=True):
            result = torch.cat(parts).to(update.dtype)  # type: ignore[arg-type]
            if _is_sharded(update):
                from torch.distributed.tensor import distribute_tensor

                result = distribute_tensor(
                    result, update.device_mesh, update.placements, src_data_rank=None
                )
            results.append((result, original[0].shape))
        return results


def _is_sharded(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is a sharded ``DTensor`` (FSDP2)."""
    return type(tensor).__name__ == "DTensor"
