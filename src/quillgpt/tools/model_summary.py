"""What a profile says about a model's weights: the kind of its linear layers, and their bytes."""

from __future__ import annotations

from torch import nn


def linear_kind(model: nn.Module, fast: bool = True) -> str:
    """``int8``, ``nn.Linear``, or how many linear layers decode as ``DecodeLinear``."""
    from quillgpt.inference.quantized_linear import is_quantized_linear
    from quillgpt.model.decode_layout import decoding_layout

    if any(is_quantized_linear(m) for m in model.modules()):
        return "int8"
    with decoding_layout(model, fast) as swapped:
        if not swapped:
            return "nn.Linear"
        return f"DecodeLinear ({swapped} of {sum(type(m) is nn.Linear for m in model.modules())})"


def parameter_bytes(model: nn.Module) -> int:
    """Bytes of parameters and buffers (shared tensors once); int8 layers at their packed size."""
    from quillgpt.inference.quantize import linear_weight_bytes
    from quillgpt.inference.quantized_linear import is_quantized_linear

    quantized = [name for name, module in model.named_modules() if is_quantized_linear(module)]
    skip = {id(p) for name in quantized for p in model.get_submodule(name).parameters()}
    tensors = {id(t): t for t in (*model.parameters(), *model.buffers()) if id(t) not in skip}
    sizes = linear_weight_bytes(model)
    return sum(t.nbytes for t in tensors.values()) + sum(sizes[name] for name in quantized)
