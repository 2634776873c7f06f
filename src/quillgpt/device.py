"""Device selection and per-device mixed-precision policy.

``--device auto`` picks CUDA, then Intel XPU (integrated Iris Xe and Arc GPUs through PyTorch's
native ``xpu`` backend), then Apple MPS, then the CPU. Everything device-specific that the rest of
the code needs (autocast dtype, synchronisation, peak memory, a sum over processes) goes through
this module, so the trainer and the benchmarks read the same on every device. CPU threads have
their own module, :mod:`quillgpt.threads`.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import platform
import resource
import shutil
import sys
import warnings
from pathlib import Path

import torch

from quillgpt.errors import QuillError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps", "xpu")
PRECISION_CHOICES = ("auto", "fp32", "bf16", "fp16")


def xpu_available() -> bool:
    """Whether PyTorch sees an Intel GPU (``torch.xpu``)."""
    return hasattr(torch, "xpu") and torch.xpu.is_available()


def mps_available() -> bool:
    """Whether PyTorch sees an Apple GPU (``torch.backends.mps``)."""
    return torch.backends.mps.is_available()


def resolve_device(name: str = "auto") -> torch.device:
    """Turn ``auto|cpu|cuda[:i]|mps|xpu[:i]`` into a ``torch.device`` that exists here.

    Raises:
        QuillError: if the requested device is unknown or not available on this machine.
    """
    kind = name.split(":", 1)[0]
    if kind not in DEVICE_CHOICES:
        raise QuillError(f"unknown device {name!r}; choose one of {', '.join(DEVICE_CHOICES)}")
    if kind == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if xpu_available():
            return torch.device("xpu")
        if mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available(),
        "xpu": xpu_available(),
        "mps": mps_available(),
    }[kind]
    if not available:
        hint = {
            "cuda": "install a CUDA build of torch and check nvidia-smi",
            "xpu": "install torch with XPU support and Intel's GPU driver (see docs/devices.md)",
            "mps": "MPS needs Apple silicon and macOS 12.3+",
        }[kind]
        raise QuillError(f"device {name!r} was requested but is not available: {hint}")
    return torch.device(name)


@functools.cache
def cpu_supports_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX on x86, BF16 on Arm).

    Without it, PyTorch emulates bf16 matmuls, which are hundreds of times slower than fp32.
    """
    if platform.machine().lower() in ("arm64", "aarch64"):
        return sys.platform == "darwin" or _cpu_flags_contain(("bf16",))
    return _cpu_flags_contain(("avx512_bf16", "amx_bf16"))


def _cpu_flags_contain(wanted: tuple[str, ...]) -> bool:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags = set(line.split(":", 1)[1].split())
            return any(flag in flags for flag in wanted)
    return False


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """Choose the autocast dtype for ``device``; ``None`` means "run in fp32".

    ``auto`` picks bf16 on CUDA GPUs that support it (Ampere and newer), else fp16; bf16 on XPU;
    fp16 on MPS; bf16 on a CPU only if it computes bf16 natively, else fp32. An explicit
    ``bf16`` on a CPU without native support falls back to fp32 with a warning.
    """
    if precision not in PRECISION_CHOICES:
        raise QuillError(f"unknown precision {precision!r}; choose one of {PRECISION_CHOICES}")
    if precision == "fp32":
        return None
    kind = device.type
    if precision == "auto":
        if kind == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if kind == "xpu":
            return torch.bfloat16
        if kind == "mps":
            return torch.float16
        return torch.bfloat16 if cpu_supports_bf16() else None
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    if kind == "cpu" and not (dtype == torch.bfloat16 and cpu_supports_bf16()):
        warnings.warn(
            f"{precision} autocast on this CPU would be emulated (hundreds of times slower "
            "than fp32): training in fp32 instead",
            stacklevel=2,
        )
        return None
    return dtype


def needs_grad_scaler(dtype: torch.dtype | None) -> bool:
    """fp16 has too few exponent bits for small gradients: it needs loss scaling; bf16 does not."""
    return dtype == torch.float16


def synchronize(device: torch.device) -> None:
    """Block until queued work on ``device`` has finished (for honest timings)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "xpu":
        torch.xpu.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory measurement on an accelerator (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    elif device.type == "xpu":
        torch.xpu.reset_peak_memory_stats(device)


def peak_memory_bytes(device: torch.device) -> int:
    """Peak bytes allocated by tensors on an accelerator, or the process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    if device.type == "xpu":
        return torch.xpu.max_memory_allocated(device)
    if device.type == "mps":
        return torch.mps.driver_allocated_memory()
    return peak_rss_bytes()


def peak_rss_bytes() -> int:
    """Peak resident set size of this process in bytes (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def ipex_optimize(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[torch.nn.Module, torch.optim.Optimizer | None, bool]:
    """Apply Intel Extension for PyTorch's ``ipex.optimize`` when it is installed and usable.

    IPEX stopped at torch 2.8 (its work moved into PyTorch's native ``xpu`` backend), so it is
    used only if importable and built for the installed torch's major.minor version. Returns
    ``(model, optimizer, applied)``.
    """
    if importlib.util.find_spec("intel_extension_for_pytorch") is None:
        return model, optimizer, False
    try:
        import intel_extension_for_pytorch as ipex
    except Exception as exc:  # a mismatched build fails at import with various errors
        warnings.warn(f"intel_extension_for_pytorch is installed but unusable: {exc}", stacklevel=2)
        return model, optimizer, False
    if ipex.__version__.split(".")[:2] != torch.__version__.split(".")[:2]:
        warnings.warn(
            f"intel_extension_for_pytorch {ipex.__version__} does not match torch "
            f"{torch.__version__}: not applied",
            stacklevel=2,
        )
        return model, optimizer, False
    if optimizer is None:
        return ipex.optimize(model, dtype=dtype), None, True
    model, optimizer = ipex.optimize(model, optimizer=optimizer, dtype=dtype)
    return model, optimizer, True


def compiler_pays_off(device: torch.device) -> bool:
    """Whether ``torch.compile`` is worth turning on for ``device`` (``--compile auto``).

    On CUDA and XPU it is. On a CPU, inductor generates C++ and needs a compiler; with one it
    paid off on the measured CPUs (docs/performance.md). MPS support is still experimental: off.
    """
    if device.type in ("cuda", "xpu"):
        return True
    if device.type == "cpu":
        compilers = (os.environ.get("CXX", "g++"), "clang++")
        return any(shutil.which(c) is not None for c in compilers)
    return False


def all_reduce(values: list[float], device: torch.device, op: str = "sum") -> list[float]:
    """Element-wise ``sum`` or ``max`` of ``values`` over every process (identity for one).

    Training and evaluation call it so that all ranks agree: on the summed loss, on a stop.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return tensor.tolist()
