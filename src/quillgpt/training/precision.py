"""Mixed precision: the autocast context and the gradient scaler, chosen per device.

The policy itself lives in :func:`quillgpt.device.autocast_dtype`: bf16 on GPUs that
have it, fp16 (with loss scaling) on older ones, bf16 on a CPU only when it computes bf16 natively
(AVX-512 BF16 / AMX), fp32 otherwise, with a warning when an explicit request cannot be honoured.

Under ``torch.autocast`` the matrix multiplications run in the low-precision dtype while the
weights, the optimiser state and numerically sensitive operations (softmax, norms, the loss) stay
in fp32. fp16 has a narrow exponent range, so small gradients underflow to zero;
``torch.amp.GradScaler`` multiplies the loss by a large factor before the backward pass, divides
the gradients by it before the optimiser step, skips steps whose gradients overflowed, and adapts
the factor. bf16 has fp32's exponent range and needs no scaling: the scaler is then disabled and
all its methods pass through.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from quillgpt.device import autocast_dtype, needs_grad_scaler

_DTYPE_NAMES = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


@dataclass
class Precision:
    """The numeric format of a training run on one device.

    Attributes:
        device: where the model runs.
        dtype: the autocast dtype, or ``None`` for plain fp32.
        scaler: a ``GradScaler``, enabled only for fp16.
    """

    device: torch.device
    dtype: torch.dtype | None
    scaler: torch.amp.GradScaler

    @classmethod
    def for_device(cls, device: torch.device, precision: str = "auto") -> Precision:
        """Resolve ``precision`` (``auto|fp32|bf16|fp16``) for ``device``."""
        dtype = autocast_dtype(device, precision)
        scaler = torch.amp.GradScaler(device.type, enabled=needs_grad_scaler(dtype))
        return cls(device, dtype, scaler)

    @property
    def name(self) -> str:
        """``fp32``, ``bf16`` or ``fp16``."""
        return _DTYPE_NAMES[self.dtype]

    def autocast(self) -> contextlib.AbstractContextManager[object]:
        """Return the context manager to run forward passes (and the loss) under."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)
