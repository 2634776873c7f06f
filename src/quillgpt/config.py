"""Model configuration: one plain dataclass, validated on construction, with named presets.

A :class:`ModelConfig` fully determines the shape of a :class:`~quillgpt.DecoderLM`; it is what a
checkpoint stores next to the weights (as JSON), so a model can always be rebuilt from its run
directory. Presets range from a model that trains in seconds to the GPT-2 124M shape::

    cfg = ModelConfig.preset("gpt2", dropout=0.1)
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

ConfigT = TypeVar("ConfigT")

PosEncoding = Literal["learned", "sinusoidal", "rope"]
AttentionImpl = Literal["sdpa", "reference"]
Activation = Literal["gelu", "gelu_tanh"]

POS_ENCODINGS: tuple[str, ...] = ("learned", "sinusoidal", "rope")
ATTENTION_IMPLS: tuple[str, ...] = ("sdpa", "reference")
ACTIVATIONS: tuple[str, ...] = ("gelu", "gelu_tanh")


@dataclass
class ModelConfig:
    """Hyper-parameters of a decoder-only transformer.

    Attributes:
        vocab_size: number of distinct token ids (the tokenizer's vocabulary size).
        block_size: the context window ``T_max``: the longest sequence the model attends over.
        n_layer: number of stacked decoder blocks.
        n_head: attention heads per block; ``n_embd`` must be divisible by it.
        n_embd: width ``C`` of the residual stream.
        pos_encoding: ``"learned"`` (GPT-2), ``"sinusoidal"`` (fixed, the original Transformer) or
            ``"rope"`` (rotary, applied to queries and keys inside attention).
        attention: ``"sdpa"`` uses PyTorch's fused ``scaled_dot_product_attention``;
            ``"reference"`` is the hand-written ``softmax(QK^T/sqrt(d) + mask) V``. Both compute
            the same function (the tests prove it); the reference exists to be read.
        ffn_mult: hidden width of the feed-forward network as a multiple of ``n_embd``.
        activation: ``"gelu"`` (exact, with erf) or ``"gelu_tanh"`` (GPT-2's tanh approximation,
            used when importing GPT-2 weights so logits match exactly). The exact form is the
            default: it is the same function to within 1e-3 and measured ~2x faster on CPU.
        dropout: probability used for attention, residual and embedding dropout.
        bias: whether linear layers and LayerNorms carry a bias (GPT-2 does).
        tie_weights: share the token embedding matrix with the output head (saves ``V*C``
            parameters and usually helps small models).
        rope_base: the base ``theta`` of rotary frequencies.
        layer_norm_eps: epsilon of every LayerNorm.
    """

    vocab_size: int = 50257
    block_size: int = 1024
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    pos_encoding: PosEncoding = "learned"
    attention: AttentionImpl = "sdpa"
    ffn_mult: float = 4.0
    activation: Activation = "gelu"
    dropout: float = 0.0
    bias: bool = True
    tie_weights: bool = True
    rope_base: float = 10000.0
    layer_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        self.validate()

    @property
    def head_size(self) -> int:
        """Width ``D`` of one attention head: ``n_embd // n_head``."""
        return self.n_embd // self.n_head

    @property
    def ffn_hidden(self) -> int:
        """Hidden width of the feed-forward network (``ffn_mult * n_embd``, rounded)."""
        return int(round(self.ffn_mult * self.n_embd))

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field to change when the configuration is impossible."""
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"ModelConfig.{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"ModelConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}); "
                f"try n_head={_nearest_divisor(self.n_embd, self.n_head)} or change n_embd"
            )
        if self.pos_encoding not in POS_ENCODINGS:
            raise ValueError(
                f"ModelConfig.pos_encoding must be one of {POS_ENCODINGS}, "
                f"got {self.pos_encoding!r}"
            )
        if self.attention not in ATTENTION_IMPLS:
            raise ValueError(
                f"ModelConfig.attention must be one of {ATTENTION_IMPLS}, got {self.attention!r}"
            )
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"ModelConfig.activation must be one of {ACTIVATIONS}, got {self.activation!r}"
            )
        if self.pos_encoding == "rope" and self.head_size % 2 != 0:
            raise ValueError(
                f"rotary positions need an even head size, but n_embd/n_head = {self.head_size}; "
                "change n_embd or n_head, or use pos_encoding='learned'"
            )
        if self.pos_encoding == "sinusoidal" and self.n_embd % 2 != 0:
            raise ValueError(
                f"sinusoidal positions need an even n_embd, got {self.n_embd}; change n_embd"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ModelConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if not self.ffn_mult > 0 or self.ffn_hidden < 1:
            raise ValueError(f"ModelConfig.ffn_mult must be positive, got {self.ffn_mult!r}")
        if not self.rope_base > 1.0:
            raise ValueError(f"ModelConfig.rope_base must be > 1, got {self.rope_base!r}")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"ModelConfig.layer_norm_eps must be > 0, got {self.layer_norm_eps!r}")

    def to_dict(self) -> dict[str, Any]:
        """Return the configuration as a JSON-serialisable dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Build a config from a dict, rejecting unknown keys with the list of valid ones."""
        return dataclass_from_dict(cls, data)

    def to_json(self, path: str | Path) -> None:
        """Write the configuration to ``path`` as indented JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> ModelConfig:
        """Return the named preset (see :data:`MODEL_PRESETS`), with fields overridden."""
        if name not in MODEL_PRESETS:
            raise ValueError(f"unknown model preset {name!r}; choose from {sorted(MODEL_PRESETS)}")
        return cls.from_dict({**MODEL_PRESETS[name], **overrides})


def dataclass_from_dict(cls: type[ConfigT], data: dict[str, Any]) -> ConfigT:
    """Build the dataclass ``cls`` from ``data``, rejecting unknown keys with the valid ones.

    A typo in a config file (``n_layers`` for ``n_layer``) then fails loudly instead of being
    silently ignored.
    """
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(
            f"unknown {cls.__name__} field(s) {unknown}; valid fields are {sorted(known)}"
        )
    return cls(**data)


def _nearest_divisor(n: int, target: int) -> int:
    divisors = [d for d in range(1, n + 1) if n % d == 0]
    return min(divisors, key=lambda d: (abs(d - target), d))


MODEL_PRESETS: dict[str, dict[str, Any]] = {
    # ~0.2M parameters: unit tests and smoke runs, seconds on a laptop.
    "tiny": dict(vocab_size=256, block_size=64, n_layer=2, n_head=2, n_embd=64),
    # ~0.8M: the small benchmark shape; minutes on a CPU.
    "mini": dict(vocab_size=256, block_size=128, n_layer=4, n_head=4, n_embd=128),
    # ~10M: the nanoGPT "shakespeare-char" shape.
    "small": dict(vocab_size=256, block_size=256, n_layer=6, n_head=6, n_embd=384),
    # GPT-2 family shapes (vocab 50257, context 1024).
    "gpt2": dict(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768),
    "gpt2-medium": dict(vocab_size=50257, block_size=1024, n_layer=24, n_head=16, n_embd=1024),
    "gpt2-large": dict(vocab_size=50257, block_size=1024, n_layer=36, n_head=20, n_embd=1280),
    "gpt2-xl": dict(vocab_size=50257, block_size=1024, n_layer=48, n_head=25, n_embd=1600),
}
