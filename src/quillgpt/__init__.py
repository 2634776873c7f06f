"""quillgpt: a decoder-only transformer language model written from scratch in PyTorch."""

from quillgpt.checkpoint import load_checkpoint, save_checkpoint
from quillgpt.config import MODEL_PRESETS, ModelConfig
from quillgpt.model import DecoderLM

__version__ = "0.1.0"

__all__ = [
    "MODEL_PRESETS",
    "DecoderLM",
    "ModelConfig",
    "__version__",
    "load_checkpoint",
    "save_checkpoint",
]
