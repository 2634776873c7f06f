"""One process or many: process groups, DDP and FSDP2, and agreeing across ranks.

``torchrun --nproc_per_node N -m quillgpt.cli train ...`` starts N copies of the training with
``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` in their environment. :meth:`Parallel.start` reads
them, binds each process to its device and joins the process group with the backend made for it:
NCCL on CUDA, XCCL on Intel XPU, gloo on CPU. Without them it is a one-process run, and every
method below is the plain single-process operation, so the loop never asks which case it is in.

The model is wrapped by PyTorch's own engines, not a home-made one:

* **DDP** (:class:`torch.nn.parallel.DistributedDataParallel`): every rank holds the whole model;
  gradients are averaged by all-reduce during the backward pass. During gradient accumulation
  :meth:`Parallel.grad_sync` enters ``no_sync()`` for all micro-batches but the last, so the
  all-reduce runs once per optimiser step.
* **FSDP2** (:func:`torch.distributed.fsdp.fully_shard`): parameters, gradients and optimiser
  state are sharded across ranks; each block's full weights are all-gathered just before it runs
  and freed after. Each block is its own shard group, and the root holds embeddings, final norm
  and the (tied) head. Accumulation turns gradient reduction off with
  ``set_requires_gradient_sync``. Saving gathers the full state on rank 0.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import importlib
import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from quillgpt.device import all_reduce
from quillgpt.errors import QuillError
from quillgpt.training.optim import MuonAndAdamW


@dataclass
class Parallel:
    """Where this process sits in the job, and how its model is spread over the processes.

    Attributes:
        device: this process's device (``cuda:<local_rank>`` with several GPUs per machine).
        rank: global rank, ``0 .. world_size - 1``; rank 0 alone logs and writes files.
        world_size: number of processes.
        mode: ``ddp`` or ``fsdp`` (what :meth:`wrap` does with several processes).
    """

    device: torch.device
    rank: int = 0
    world_size: int = 1
    mode: str = "ddp"
    _ddp: Any = field(default=None, repr=False)

    @classmethod
    def start(cls, device: torch.device, mode: str = "ddp") -> Parallel:
        """Join the process group described by torchrun's environment, if any.

        Raises:
            QuillError: if the environment is incomplete (launch with torchrun), or the device
                kind cannot run collectives.
        """
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls(device, mode=mode)
        missing = [
            v for v in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ
        ]
        if missing:
            raise QuillError(
                f"WORLD_SIZE is set but {', '.join(missing)} are not: launch with "
                "`torchrun --nproc_per_node N -m quillgpt.cli train ...` (see docs/training.md)"
            )
        if device.type == "mps":
            raise QuillError(
                "multi-process training on Apple MPS is not supported; use one process"
            )
        if device.type in ("cuda", "xpu"):
            device = torch.device(device.type, int(os.environ["LOCAL_RANK"]))
            getattr(torch, device.type).set_device(device)
        if not dist.is_initialized():
            # torch.distributed.nn binds the default group into default arguments when first
            # imported (DDP's constructor imports it): imported after the group exists, it
            # would keep it alive past shutdown() (see there). Imported first, it binds None.
            importlib.import_module("torch.distributed.nn")

            backend = {"cuda": "nccl", "xpu": "xccl"}.get(device.type, "gloo")
            dist.init_process_group(
                backend=backend,
                timeout=datetime.timedelta(minutes=30),
                device_id=device if device.type in ("cuda", "xpu") else None,
            )
        return cls(device, int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), mode)

    @property
    def is_main(self) -> bool:
        """Whether this process is rank 0."""
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        """Whether parameters are sharded across processes (FSDP)."""
        return self.world_size > 1 and self.mode == "fsdp"

    @property
    def can_sample(self) -> bool:
        """Whether this process can generate text alone: rank 0, holding the whole model.

        With FSDP each forward pass is a collective, so sampling would need every rank.
        """
        return self.is_main and not self.sharded

    def wrap(self, model: nn.Module) -> nn.Module:
        """Return the module the training step calls: ``model`` itself, DDP- or FSDP-wrapped.

        FSDP2 shards ``model`` in place (it stays the same object); DDP returns a wrapper.
        """
        if self.world_size == 1:
            return model
        if self.sharded:
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

            mesh = init_device_mesh(self.device.type, (self.world_size,))
            _MESHES.append(mesh)  # its group references are dropped at shutdown()
            policy = MixedPrecisionPolicy(reduce_dtype=torch.float32)
            for block in model.blocks:  # type: ignore[union-attr]
                fully_shard(block, mesh=mesh, mp_policy=policy)
            return fully_shard(model, mesh=mesh, mp_policy=policy)
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type in ("cuda", "xpu") else None
        self._ddp = DistributedDataParallel(model, device_ids=ids)
        return self._ddp

    def grad_sync(self, model: nn.Module, *, last: bool) -> contextlib.AbstractContextManager[Any]:
        """Context of one micro-batch: gradients are reduced across ranks only on the ``last``."""
        if self.sharded:
            model.set_requires_gradient_sync(last)  # type: ignore[operator]
        if self._ddp is None or last:
            return contextlib.nullcontext()
        return self._ddp.no_sync()

    def clip_grad_norm(self, model: nn.Module, max_norm: float) -> float:
        """Clip the gradients of all ranks together to ``max_norm``; return the norm before."""
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        if self.sharded:
            norm = norm.full_tensor()  # a DTensor: the norm over every rank's shard
        return float(norm)

    def agree(self, elapsed: float, stop: bool) -> tuple[float, bool]:
        """Share rank 0's clock and whether any rank was asked to stop (one collective).

        Every rank then sets the same learning rate and stops at the same step.
        """
        clock, stopping = all_reduce(
            [elapsed if self.is_main else 0.0, float(stop)], self.device, op="max"
        )
        return clock, bool(stopping)

    def mean(self, value: float) -> float:
        """The mean of ``value`` over all ranks."""
        return all_reduce([value], self.device)[0] / self.world_size

    def gather(self, obj: object) -> list[object]:
        """Return ``[obj of rank 0, obj of rank 1, ...]`` on every rank."""
        if self.world_size == 1:
            return [obj]
        out: list[object] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        """Wait for every rank."""
        if self.world_size > 1:
            dist.barrier()

    def full_state_dicts(
        self, model: nn.Module, optimizer: torch.optim.Optimizer | MuonAndAdamW | None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Complete model (and optimiser) state dicts.

        With FSDP they are gathered on rank 0 (a collective: every rank must call it; the other
        ranks get empty dicts). Muon and AdamW then give one dict of both, keyed by parameter
        name.
        """
        if not self.sharded:
            return model.state_dict(), optimizer.state_dict() if optimizer else {}
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_state = get_model_state_dict(model, options=options)
        if optimizer is None:
            return model_state, {}
        return model_state, get_optimizer_state_dict(model, _parts(optimizer), options=options)

    def load_full_state_dicts(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | MuonAndAdamW,
        model_state: dict[str, Any],
        optimizer_state: dict[str, Any],
    ) -> None:
        """Load what :meth:`full_state_dicts` returned (with FSDP: read on rank 0, broadcast)."""
        if not self.sharded:
            model.load_state_dict(model_state)
            optimizer.load_state_dict(optimizer_state)
            return
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
        set_model_state_dict(model, model_state if self.is_main else {}, options=options)
        set_optimizer_state_dict(
            model, _parts(optimizer), optimizer_state if self.is_main else {}, options=options
        )

    def shutdown(self) -> None:
        """Leave the process group and stop its threads (a no-op for one process).

        Call it after the last collective, once the wrapped model is gone (DDP and FSDP hold the
        group). The group is then freed here, and gloo's destructor joins its worker threads
        while the interpreter is alive. Left to interpreter exit, a worker thread that releases
        a finished collective's last reference to a Python tensor needs the GIL; Python ends
        such a thread during finalisation, and unwinding through a C++ destructor aborts the
        process ("terminate called without an active exception", SIGABRT after a finished run:
        the flaky CI failure of the 2-process tests).
        """
        if self.world_size == 1 or not dist.is_initialized():
            return
        # DTensor's caches keep every DTensor's DeviceMesh, and a mesh its groups in
        # _pg_registry (used while tracing for torch.compile): drop them so the group can go.
        for mesh in _MESHES:
            registry = getattr(mesh, "_pg_registry", None)
            if isinstance(registry, dict):
                registry.clear()
        _MESHES.clear()
        gc.collect()  # FSDP's module states and hooks form reference cycles that reach the group
        dist.destroy_process_group()  # drops the last reference: the backend joins its threads


_MESHES: list[Any] = []  # the DeviceMeshes wrap() made for FSDP, for shutdown()


def _parts(
    optimizer: torch.optim.Optimizer | MuonAndAdamW,
) -> torch.optim.Optimizer | tuple[torch.optim.Optimizer, ...]:
    """What ``torch.distributed.checkpoint`` takes: one torch optimiser, or a tuple of them."""
    return optimizer.parts if isinstance(optimizer, MuonAndAdamW) else optimizer
