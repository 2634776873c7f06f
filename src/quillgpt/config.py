"""Model configuration: one typed dataclass, validated on construction, with named presets.

A :class:`ModelConfig` fully determines the shape of a :class:`~quillgpt.DecoderLM`; it is what a
checkpoint stores next to the weights (as JSON), so a model can always be rebuilt from its run
directory. Presets range from a model that trains in seconds to the GPT-2 124M shape::

    cfg = ModelConfig.preset("gpt2", dropout=0.1)

The configs are `pydantic <https://docs.pydantic.dev>`_ dataclasses in strict mode: still plain
dataclasses (``dataclasses.replace``, ``asdict`` and ``fields`` work), but every field is checked
against its annotation whenever one is built, so ``bias="false"`` or ``dropout="0.1"`` is refused
rather than silently meaning something else, and an unknown keyword is an error. The string under
each field is its documentation: pydantic reads it as the field's description, which is also the
``quill train --help`` text. :func:`load_dataclass` builds a config from a config file's table or
from command-line text and turns any mistake into one line that names the field and the source.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Annotated, Any, Literal, TypeVar

from pydantic import ConfigDict, Field, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass

from quillgpt.errors import ConfigError

ConfigT = TypeVar("ConfigT")

STRICT = ConfigDict(strict=True, extra="forbid", use_attribute_docstrings=True)
"""Validation of every config: exact types (an int is accepted for a float), no unknown keys."""

Positive = Annotated[int, Field(gt=0)]
PosEncoding = Literal["learned", "sinusoidal", "rope"]
AttentionImpl = Literal["sdpa", "reference"]
Activation = Literal["gelu", "gelu_tanh", "relu2"]
Norm = Literal["layernorm", "rmsnorm"]
Init = Literal["gpt2", "zero_proj"]


@dataclass(config=STRICT)
class ModelConfig:
    """Hyper-parameters of a decoder-only transformer (each field is documented below it)."""

    vocab_size: Positive = 50257
    """Number of distinct token ids (the tokenizer's vocabulary size)."""
    block_size: Positive = 1024
    """The context window ``T_max``: the longest sequence the model attends over."""
    n_layer: Positive = 12
    """Number of stacked decoder blocks."""
    n_head: Positive = 12
    """Attention heads per block; ``n_embd`` must be divisible by it."""
    n_embd: Positive = 768
    """Width ``C`` of the residual stream."""
    pos_encoding: PosEncoding = "learned"
    """``learned`` (GPT-2), ``sinusoidal`` (fixed, the original Transformer) or ``rope`` (rotary,
    applied to queries and keys inside attention)."""
    attention: AttentionImpl = "sdpa"
    """``sdpa``: PyTorch's fused ``scaled_dot_product_attention``; ``reference``: the
    hand-written ``softmax(QK^T/sqrt(d) + mask) V``. The same function (the tests prove it); the
    reference exists to be read."""
    ffn_mult: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 4.0
    """Hidden width of the feed-forward network as a multiple of ``n_embd``."""
    activation: Activation = "gelu"
    """``gelu`` (exact, with erf), ``gelu_tanh`` (GPT-2's tanh approximation, used when
    importing GPT-2 weights so logits match exactly) or ``relu2`` (``relu(x)**2``, the
    speedrun's choice: sparse and cheap). The two GELUs differ by < 1e-3; the exact form is the
    default GELU because it is cheaper on a CPU (docs/performance.md)."""
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    """Probability used for attention, residual and embedding dropout."""
    bias: bool = True
    """Whether linear layers and LayerNorms carry a bias (GPT-2 does)."""
    norm: Norm = "layernorm"
    """``layernorm`` (``nn.LayerNorm``, GPT-2) or ``rmsnorm`` (``nn.RMSNorm``: divides by the root
    mean square without centring; no bias, fewer operations)."""
    qk_norm: bool = False
    """Normalise every head's queries and keys over the head dimension (the ``norm`` kind, no
    learned gain) before RoPE and the dot product: attention logits stay bounded, which lets
    larger learning rates train stably."""
    logit_softcap: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None
    """Soft-cap the output logits at ``cap * tanh(logits / cap)`` (training and generation);
    ``None`` leaves them as they are. Keeps the head from growing overconfident early."""
    init: Init = "gpt2"
    """``gpt2``: every matrix N(0, 0.02), the two residual projections of each block scaled by
    ``1/sqrt(2 n_layer)``; ``zero_proj``: those projections (and an untied head) start at zero,
    so each block starts as the identity and learns what to add."""
    tie_weights: bool = True
    """Share the token embedding matrix with the output head (saves ``V*C`` parameters and
    usually helps small models)."""
    rope_base: Annotated[float, Field(gt=1, allow_inf_nan=False)] = 10000.0
    """The base ``theta`` of rotary frequencies."""
    layer_norm_eps: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 1e-5
    """Epsilon of every normalisation layer."""

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
        """Raise ``ValueError`` for a combination of fields that cannot work, naming the fix.

        Each field's type and range are checked when the config is built; this checks how they
        fit together (it runs then too, and again when a model is built).
        """
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}); "
                f"try n_head={_nearest_divisor(self.n_embd, self.n_head)} or change n_embd"
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
        if self.ffn_hidden < 1:
            raise ValueError(f"ffn_mult * n_embd must be at least 1, got ffn_mult={self.ffn_mult}")

    def to_dict(self) -> dict[str, Any]:
        """Return the configuration as a JSON-serialisable dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "") -> ModelConfig:
        """Build a config from a dict (a config file's ``[model]`` table, a ``config.json``)."""
        return load_dataclass(cls, data, source=source)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> ModelConfig:
        """Return the named preset (see :data:`MODEL_PRESETS`), with fields overridden."""
        if name not in MODEL_PRESETS:
            raise ConfigError(f"unknown model preset {name!r}; choose from {sorted(MODEL_PRESETS)}")
        return cls.from_dict({**MODEL_PRESETS[name], **overrides})


def field_doc(cls: type, name: str) -> str:
    """The documentation of field ``name`` of config dataclass ``cls``: the string under it.

    Looked up through the base classes too: pydantic reads a dataclass's attribute docstrings
    from its own body only, so the fields a config inherits (``TrainConfig``'s data options)
    have none of their own.
    """
    for klass in cls.__mro__:
        info = getattr(klass, "__pydantic_fields__", {}).get(name)
        if info is not None and info.description:
            return str(info.description)
    return ""


def load_dataclass(
    cls: type[ConfigT],
    data: dict[str, Any],
    *,
    source: str = "",
    text: dict[str, str] | None = None,
    text_source: str = "--",
) -> ConfigT:
    """Build the config dataclass ``cls`` from ``data`` and command-line ``text`` values.

    Values in ``data`` (a file's table) must already have their types: ``bias = "false"`` is an
    error. Values in ``text`` are strings from a command line, converted by pydantic's string
    rules (``"false"`` is a bool there; ``none`` means ``None`` where the field allows it); they
    override ``data``. Both then pass the same strict validation.

    Raises:
        ConfigError: one line naming the field, where its value came from (``source`` for
            ``data``, ``--name`` for ``text``) and what is wrong (an unknown key comes with the
            closest valid names).
    """
    values = dict(data)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    for name, raw in (text or {}).items():
        if name not in names:
            raise _unknown(cls, name, text_source)
        values[name] = parse_text(cls, name, raw, where=f"{text_source}{name}")
    for name in values:
        if name not in names:
            raise _unknown(cls, name, source)
    try:
        return cls(**values)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else ""
        where = f"{text_source}{field}" if field in (text or {}) else _place(cls, field, source)
        message = str(error["msg"]).removeprefix("Value error, ")
        got = f", got {error['input']!r}" if field else ""
        if message.endswith(got):  # a validator that names the value itself (max_time)
            got = ""
        raise ConfigError(f"{where}: {message}{got}") from None


def parse_text(cls: type, name: str, raw: Any, *, where: str) -> Any:
    """Convert command-line text for field ``name`` of ``cls`` to the field's type."""
    if not isinstance(raw, str):  # a flag given without a value (``--bias``) is already True
        return raw
    hint = cls.__pydantic_fields__[name].rebuild_annotation()  # type: ignore[attr-defined]
    adapter = TypeAdapter(hint)
    if raw.strip().lower() in ("none", "null") and _allows_none(adapter):
        return None
    try:
        return adapter.validate_strings(raw)
    except ValidationError as exc:
        if name == "max_time":  # a duration: its own parser gives the better message
            return raw
        message = str(exc.errors()[0]["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"{where}: {message}, got {raw!r}") from None


def _allows_none(adapter: TypeAdapter[Any]) -> bool:
    try:
        adapter.validate_python(None)
    except ValidationError:
        return False
    return True


def _place(cls: type, field: str, source: str) -> str:
    prefix = f"{source}: " if source else ""
    return f"{prefix}{cls.__name__}.{field}" if field else f"{prefix}{cls.__name__}"


def _unknown(cls: type, name: str, source: str) -> ConfigError:
    valid = sorted(f.name for f in dataclasses.fields(cls))
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    where = f"{source}: " if source and source != "--" else ""
    return ConfigError(
        f"{where}unknown {cls.__name__} field {name!r}; {hint}valid fields are {valid}"
    )


def _nearest_divisor(n: int, target: int) -> int:
    """The divisor of ``n`` closest to ``target`` (1 always is one, so look at most 2x up)."""
    divisors = [d for d in range(1, min(n, 2 * target, 1 << 16) + 1) if n % d == 0]
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
