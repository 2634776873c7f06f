"""Moving weights between quillgpt and other libraries."""

from quillgpt.interop.hf import from_hf_gpt2, to_hf_gpt2

__all__ = ["from_hf_gpt2", "to_hf_gpt2"]
