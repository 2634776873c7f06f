"""The optimisers: AdamW for every parameter, or Muon for the blocks' matrices and AdamW beside.

Weight decay pulls weights towards zero. That is a useful prior for the matrices of linear layers,
but not for biases and norm gains (decaying a LayerNorm gain towards 0 fights the normalisation)
nor for embeddings (rare tokens' rows would shrink simply for being rare). So AdamW's parameters
are split into two groups: matrices of ``nn.Linear`` layers decay; everything else does not. A
tied output head *is* the token embedding, so it does not decay either.

With ``optimizer="muon"`` the weight matrices of the decoder blocks (attention ``qkv`` and
``proj``, feed-forward ``fc`` and ``proj``) go to :class:`~quillgpt.training.muon.Muon` instead,
which is made for hidden matrices; the embeddings, the head (tied or not), norms and biases stay
with AdamW, grouped as above. The two are held by one :class:`MuonAndAdamW`.

The schedule gives one factor per step; :func:`set_rates` multiplies each optimiser's own peak
rate (``lr`` for AdamW, ``muon_lr`` for Muon) by it, and sets Muon's warming-up momentum.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from quillgpt.errors import ConfigError
from quillgpt.training.config import TrainConfig


def param_groups(
    model: nn.Module, weight_decay: float, exclude: Iterable[nn.Parameter] = ()
) -> list[dict[str, object]]:
    """Split ``model``'s trainable parameters into a decayed and a non-decayed group.

    Decayed: parameters with two or more dimensions that are not embedding tables. Not decayed:
    biases, norm weights, embedding tables (and a head tied to one). Shared parameters are
    listed once; parameters in ``exclude`` (another optimiser's) are left out.
    """
    embedding_ids = {
        id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()
    }
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    seen: set[int] = {id(p) for p in exclude}
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


def muon_param_groups(model: nn.Module) -> list[dict[str, Any]]:
    """Muon's parameters: the weights of every ``nn.Linear`` inside ``model.blocks``.

    Two groups: the fused query/key/value projections (``attn.qkv``, ``3C x C``), orthogonalised
    as three ``C x C`` blocks (``ns_chunks=3``), and the other matrices, whole.
    """
    qkv: list[nn.Parameter] = []
    other: list[nn.Parameter] = []
    for name, module in model.blocks.named_modules():  # type: ignore[union-attr]
        if isinstance(module, nn.Linear) and module.weight.requires_grad:
            (qkv if name.endswith("attn.qkv") else other).append(module.weight)
    return [{"params": qkv, "ns_chunks": 3}, {"params": other, "ns_chunks": 1}]


class MuonAndAdamW:
    """Muon and AdamW stepped as one optimiser.

    Why one object: the loop, ``torch.amp.GradScaler`` (``unscale_`` and ``step`` use only
    ``param_groups`` and ``step``), ``RunDir.save``/``restore`` (``state_dict``,
    ``load_state_dict``) and ``Parallel`` (:attr:`parts`, for ``torch.distributed.checkpoint``,
    which takes a list of optimisers) each take one optimiser, and stay as they are for AdamW
    alone; passing a list instead would put a Muon case in each of them. Why not one
    ``torch.optim.Optimizer`` with both kinds of groups (as Keller Jordan's ``MuonWithAuxAdam``):
    its ``step`` would re-implement AdamW and lose torch's fused kernel. Optimizer hooks
    registered globally (``register_optimizer_step_pre_hook``) run for each of the two.

    Attributes:
        adamw: ``torch.optim.AdamW`` over the embeddings, head, norms and biases.
        muon: :class:`~quillgpt.training.muon.Muon` over the blocks' matrices.
    """

    def __init__(self, adamw: torch.optim.Optimizer, muon: torch.optim.Optimizer) -> None:
        self.adamw, self.muon = adamw, muon

    @property
    def parts(self) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
        """``(adamw, muon)``."""
        return self.adamw, self.muon

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """AdamW's groups, then Muon's (the same dicts: setting a group's ``lr`` sets it)."""
        return self.adamw.param_groups + self.muon.param_groups

    def step(self, closure: None = None) -> None:
        """Step both optimisers (no closure: the loop computes the loss itself)."""
        if closure is not None:
            raise ValueError("MuonAndAdamW.step takes no closure")
        self.adamw.step()
        self.muon.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear every parameter's gradient."""
        self.adamw.zero_grad(set_to_none=set_to_none)
        self.muon.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        """``{"adamw": ..., "muon": ...}``: each optimiser's own state dict."""
        return {"adamw": self.adamw.state_dict(), "muon": self.muon.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load what :meth:`state_dict` returned."""
        self.adamw.load_state_dict(state["adamw"])
        self.muon.load_state_dict(state["muon"])


def _is_dtensor(param: torch.Tensor) -> bool:
    """Whether ``param`` is a sharded ``DTensor`` (FSDP2)."""
    return type(param).__name__ == "DTensor"


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW | MuonAndAdamW:
    """The optimiser ``cfg.optimizer`` names, over ``model``'s parameters (already on its device).

    ``adamw``: one ``torch.optim.AdamW`` over :func:`param_groups`. ``muon``: a
    :class:`MuonAndAdamW`: Muon over :func:`muon_param_groups` (momentum ``muon_momentum``,
    decoupled weight decay ``weight_decay``, Newton-Schulz in ``muon_dtype``: by default bf16
    where the device computes it natively, else fp32) and AdamW over everything else.

    ``cfg.optimizer_impl`` picks AdamW's kernel: ``fused`` (one kernel for all parameters: CUDA,
    XPU, MPS and CPU), ``foreach`` (multi-tensor operations), ``for-loop`` (one parameter at a
    time, the reference), or ``auto``: fused, except foreach for sharded (FSDP2) parameters and
    where fused is unavailable. Fused is the fastest on the CPUs measured
    (``benchmarks/bench_optimizer.py``, docs/performance.md).

    Raises:
        ConfigError: ``muon`` with a torch that has no ``torch.optim.Muon`` (before 2.9).
    """
    if cfg.optimizer == "adamw":
        return _adamw(param_groups(model, cfg.weight_decay), cfg)
    if not hasattr(torch.optim, "Muon"):
        raise ConfigError(
            f"optimizer=muon needs torch.optim.Muon (torch >= 2.9; this is {torch.__version__}): "
            "upgrade torch or use --optimizer adamw"
        )
    from quillgpt.training.muon import Muon, newton_schulz_dtype  # needs torch.optim.Muon

    matrices = muon_param_groups(model)
    owned = [p for group in matrices for p in group["params"]]
    muon = Muon(
        matrices,
        lr=cfg.muon_lr,
        momentum=cfg.muon_momentum,
        weight_decay=cfg.weight_decay,
        dtype=newton_schulz_dtype(next(model.parameters()).device, cfg.muon_dtype),
    )
    rest = param_groups(model, cfg.weight_decay, exclude=owned)
    # With a tied head nothing of AdamW's decays; torch.distributed.checkpoint refuses an empty
    # group when it handles two optimisers (FSDP), so that group is left out.
    return MuonAndAdamW(_adamw([g for g in rest if g["params"]], cfg), muon)


def _adamw(groups: list[dict[str, Any]], cfg: TrainConfig) -> torch.optim.AdamW:
    """``torch.optim.AdamW`` over ``groups`` with the kernel ``cfg.optimizer_impl`` picks."""
    sharded = any(_is_dtensor(p) for g in groups for p in g["params"])
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
            warnings.warn(f"fused AdamW is unavailable here ({exc}); using foreach", stacklevel=3)
        return torch.optim.AdamW(groups, **common, foreach=True)


def set_rates(
    optimizer: torch.optim.Optimizer | MuonAndAdamW,
    cfg: TrainConfig,
    factor: float,
    momentum: float,
) -> None:
    """Set each group's learning rate to its optimiser's peak times ``factor``; Muon's momentum.

    The peaks come from ``cfg`` (``lr``, ``muon_lr``), not from the groups: a restored state
    replaces the groups' values, and the rates of a resumed run must follow its config, as
    they always have for AdamW.

    Args:
        optimizer: what :func:`build_optimizer` returned.
        cfg: the run's config.
        factor: the schedule's fraction of the peak (:func:`~quillgpt.training.schedule.lr_factor`).
        momentum: Muon's momentum this step (:func:`~quillgpt.training.schedule.muon_momentum_at`).
    """
    adamw, muon = optimizer.parts if isinstance(optimizer, MuonAndAdamW) else (optimizer, None)
    for group in adamw.param_groups:
        group["lr"] = cfg.lr * factor
    for group in muon.param_groups if muon is not None else ():
        group["lr"] = cfg.muon_lr * factor
        group["momentum"] = momentum
