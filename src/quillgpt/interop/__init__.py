"""Moving models between quillgpt and other libraries."""

from quillgpt.interop.hf import from_hf, to_hf

__all__ = ["from_hf", "to_hf"]
