"""The model, one component per module; see ``docs/architecture.md`` for how they fit."""

from quillgpt.model.attention import (
    MultiHeadSelfAttention,
    causal_mask,
    scaled_dot_product_attention,
)
from quillgpt.model.block import DecoderBlock
from quillgpt.model.decoder import IGNORE_INDEX, DecoderLM
from quillgpt.model.dropout import Dropout
from quillgpt.model.embedding import TokenEmbedding
from quillgpt.model.feedforward import FeedForward
from quillgpt.model.kv_cache import KVCache
from quillgpt.model.positional import (
    LearnedPositionalEmbedding,
    RotaryEmbedding,
    SinusoidalPositionalEncoding,
    apply_rotary,
)

__all__ = [
    "IGNORE_INDEX",
    "DecoderBlock",
    "DecoderLM",
    "Dropout",
    "FeedForward",
    "KVCache",
    "LearnedPositionalEmbedding",
    "MultiHeadSelfAttention",
    "RotaryEmbedding",
    "SinusoidalPositionalEncoding",
    "TokenEmbedding",
    "apply_rotary",
    "causal_mask",
    "scaled_dot_product_attention",
]
