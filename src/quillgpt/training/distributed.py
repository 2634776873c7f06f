"""Many processes through ``torchrun``: process-group set-up, DDP and FSDP2 wrapping, agreement.

``torchrun --nproc_per_node N -m quillgpt.cli train ...`` starts N copies of the trainer with
``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` in their environment. :func:`init_distributed` reads
them, binds each process to its device and joins the process group with the backend made for it:
NCCL on CUDA, XCCL on Intel XPU, gloo on CPU. With no such variables it is a one-process run and
nothing is initialised.

The model is then wrapped by PyTorch's own engines, not a home-made one:

* **DDP** (:class:`torch.nn.parallel.DistributedDataParallel`): every rank holds the whole model;
  gradients are averaged by all-reduce during the backward pass. During gradient accumulation the
  trainer enters ``no_sync()`` for all micro-batches but the last, so the all-reduce runs once per
  optimiser step.
* **FSDP2** (:func:`torch.distributed.fsdp.fully_shard`): parameters, gradients and optimiser state
  are sharded across ranks; each block's full weights are all-gathered just before it runs and
  freed after. Each block is its own shard group, and the root holds embeddings, final norm and the
  (tied) head. Accumulation turns gradient reduction off with ``set_requires_gradient_sync``.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from quillgpt.errors import QuillError


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job.

    Attributes:
        rank: global rank, ``0 .. world_size - 1``; rank 0 alone logs and writes files.
        local_rank: rank on this machine; selects the GPU.
        world_size: number of processes.
        backend: the ``torch.distributed`` backend, or ``None`` for a one-process run.
    """

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """Whether this process is rank 0."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """Whether a process group is in use."""
        return self.backend is not None


def backend_for(device: torch.device) -> str:
    """Return the collective backend for ``device``: nccl (CUDA), xccl (XPU) or gloo (CPU)."""
    if device.type == "cuda":
        return "nccl"
    if device.type == "xpu":
        return "xccl"
    if device.type == "mps":
        raise QuillError("multi-process training on Apple MPS is not supported; use one process")
    return "gloo"


def launched_by_torchrun() -> bool:
    """Whether ``torchrun`` (or another launcher) set ``WORLD_SIZE`` above 1."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Join the process group described by torchrun's environment, if any.

    Returns the process's :class:`DistInfo` and its device: with several GPUs per machine, rank
    ``local_rank`` takes ``cuda:<local_rank>`` (or ``xpu:<local_rank>``).

    Raises:
        QuillError: if the environment is incomplete (launch with torchrun), or the device kind
            cannot run collectives.
    """
    if not launched_by_torchrun():
        return DistInfo(), device
    missing = [
        v for v in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ
    ]
    if missing:
        raise QuillError(
            f"WORLD_SIZE is set but {', '.join(missing)} are not: launch with "
            "`torchrun --nproc_per_node N -m quillgpt.cli train ...` (see docs/training.md)"
        )
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    backend = backend_for(device)
    if device.type in ("cuda", "xpu"):
        device = torch.device(device.type, local_rank)
        getattr(torch, device.type).set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(
            backend=backend,
            timeout=datetime.timedelta(minutes=30),
            device_id=device if device.type in ("cuda", "xpu") else None,
        )
    return DistInfo(rank, local_rank, world_size, backend), device


def shutdown_distributed() -> None:
    """Leave the process group (a no-op for one process)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """Wrap ``model`` in DDP: parameters broadcast from rank 0, gradients all-reduced."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type in ("cuda", "xpu") else None
    return DistributedDataParallel(model, device_ids=ids)


def wrap_fsdp(model: nn.Module, param_dtype: torch.dtype | None = None) -> nn.Module:
    """Shard ``model`` with FSDP2: one ``fully_shard`` group per block, then the root.

    With ``param_dtype`` (bf16/fp16 mixed precision) parameters are all-gathered in that dtype
    while gradients are reduced, and kept, in fp32.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for block in model.blocks:
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def all_reduce_max(values: list[float], device: torch.device) -> list[float]:
    """Element-wise maximum of ``values`` over all ranks (identity for one process).

    The trainer uses it once per step so that every rank takes the same decisions: stop on a
    signal or at the end of the time budget, and the step count fitted to the budget.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor.tolist()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum of ``values`` over all ranks (identity for one process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def gather_objects(obj: object) -> list[object]:
    """Return ``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` for one process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    """Wait for every rank (a no-op for one process)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def full_state_dicts(
    model: nn.Module, optimizer: torch.optim.Optimizer, *, sharded: bool
) -> tuple[dict[str, object], dict[str, object]]:
    """Return complete (unsharded) model and optimiser state dicts, on the CPU where gathered.

    With FSDP this is a collective (every rank must call it) and only rank 0 receives the
    tensors; the other ranks get empty dicts. Otherwise it is ``state_dict()`` of each.
    """
    if not sharded:
        return model.state_dict(), optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return (
        get_model_state_dict(model, options=options),
        get_optimizer_state_dict(model, optimizer, options=options),
    )


def load_full_state_dicts(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    model_state: dict[str, object],
    optimizer_state: dict[str, object],
    *,
    sharded: bool,
) -> None:
    """Load what :func:`full_state_dicts` returned (with FSDP: read on rank 0, broadcast)."""
    if not sharded:
        model.load_state_dict(model_state)
        optimizer.load_state_dict(optimizer_state)
        return
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_model_state_dict(model, model_state, options=options)
    set_optimizer_state_dict(model, optimizer, optimizer_state, options=options)


def full_model_state_dict(model: nn.Module) -> dict[str, object]:
    """Gather an FSDP model's complete state dict on rank 0 (a collective; others get ``{}``)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(
        model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
