"""AdamW with decoupled weight decay on weight matrices only.

Weight decay pulls weights towards zero. That is a useful prior for the matrices of linear layers,
but not for biases and norm gains (decaying a LayerNorm gain towards 0 fights the normalisation)
nor for embeddings (rare tokens' rows would shrink simply for being rare). So parameters are split
into two groups: matrices of ``nn.Linear`` layers decay; everything else does not. A tied output
head *is* the token embedding, so it does not decay either.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from quillgpt.training.config import TrainConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, object]]:
    """Split ``model``'s trainable parameters into a decayed and a non-decayed group.

    Decayed: parameters with two or more dimensions that are not embedding tables. Not decayed:
    biases, norm weights, embedding tables (and a head tied to one). Shared parameters are
    listed once.
    """
    embedding_ids = {
        id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()
    }
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    seen: set[int] = set()
    for param in model.parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        if param.dim() >= 2 and id(param) not in embedding_ids:
            decay.append(param)
        else:
            no_decay.append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def _is_dtensor(param: torch.Tensor) -> bool:
    """Whether ``param`` is a sharded ``DTensor`` (FSDP2)."""
    return type(param).__name__ == "DTensor"


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """Return ``torch.optim.AdamW`` over :func:`param_groups`, set from ``cfg``.

    ``cfg.optimizer_impl`` picks the kernel: ``fused`` (one kernel for all parameters: CUDA,
    XPU, MPS and CPU), ``foreach`` (multi-tensor operations), ``for-loop`` (one parameter at a
    time, the reference), or ``auto``: fused, except foreach for sharded (FSDP2) parameters and
    where fused is unavailable. Fused is the fastest on the CPUs measured
    (``benchmarks/bench_optimizer.py``, docs/performance.md).
    """
    groups = param_groups(model, cfg.weight_decay)
    sharded = any(_is_dtensor(p) for g in groups for p in g["params"])  # type: ignore[attr-defined]
    impl = cfg.optimizer_impl
    if impl == "auto":
        impl = "foreach" if sharded else "fused"
    common: dict[str, Any] = {"lr": cfg.lr, "betas": (cfg.beta1, cfg.beta2), "eps": cfg.eps}
    kernel = {"fused": {"fused": True}, "foreach": {"foreach": True}}.get(impl, {"foreach": False})
    try:
        return torch.optim.AdamW(groups, **common, **kernel)
    except RuntimeError as exc:
        if impl != "fused":
            raise
        if cfg.optimizer_impl == "fused":
            warnings.warn(f"fused AdamW is unavailable here ({exc}); using foreach", stacklevel=2)
        return torch.optim.AdamW(groups, **common, foreach=True)
