"""GPT-2 weights to and from Hugging Face ``transformers``.

GPT-2 is a :class:`~quillgpt.DecoderLM` with learned positions, biases, tied weights, pre-norm
blocks and tanh-GELU (``activation="gelu_tanh"``), so its weights map one to one. The only
twist: ``transformers`` stores GPT-2's linear layers as ``Conv1D`` with weights of shape
``(in, out)``, the transpose of ``nn.Linear``'s ``(out, in)``.

``transformers`` is an optional dependency (``pip install quillgpt[hf]``), imported only here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from quillgpt.config import ModelConfig
from quillgpt.errors import QuillError
from quillgpt.model.decoder import DecoderLM

# quillgpt name -> (transformers name, stored transposed?) for block i; "{i}" is the layer.
_BLOCK_MAP: dict[str, tuple[str, bool]] = {
    "blocks.{i}.ln1.weight": ("transformer.h.{i}.ln_1.weight", False),
    "blocks.{i}.ln1.bias": ("transformer.h.{i}.ln_1.bias", False),
    "blocks.{i}.attn.qkv.weight": ("transformer.h.{i}.attn.c_attn.weight", True),
    "blocks.{i}.attn.qkv.bias": ("transformer.h.{i}.attn.c_attn.bias", False),
    "blocks.{i}.attn.proj.weight": ("transformer.h.{i}.attn.c_proj.weight", True),
    "blocks.{i}.attn.proj.bias": ("transformer.h.{i}.attn.c_proj.bias", False),
    "blocks.{i}.ln2.weight": ("transformer.h.{i}.ln_2.weight", False),
    "blocks.{i}.ln2.bias": ("transformer.h.{i}.ln_2.bias", False),
    "blocks.{i}.ffn.fc.weight": ("transformer.h.{i}.mlp.c_fc.weight", True),
    "blocks.{i}.ffn.fc.bias": ("transformer.h.{i}.mlp.c_fc.bias", False),
    "blocks.{i}.ffn.proj.weight": ("transformer.h.{i}.mlp.c_proj.weight", True),
    "blocks.{i}.ffn.proj.bias": ("transformer.h.{i}.mlp.c_proj.bias", False),
}
_TOP_MAP: dict[str, tuple[str, bool]] = {
    "tok_emb.embed.weight": ("transformer.wte.weight", False),
    "pos_emb.embed.weight": ("transformer.wpe.weight", False),
    "ln_f.weight": ("transformer.ln_f.weight", False),
    "ln_f.bias": ("transformer.ln_f.bias", False),
}


_FROM_HF_ACTIVATION = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}
_TO_HF_ACTIVATION = {"gelu_tanh": "gelu_new", "gelu": "gelu"}


def _name_map(n_layer: int) -> dict[str, tuple[str, bool]]:
    mapping = dict(_TOP_MAP)
    for i in range(n_layer):
        for ours, (theirs, transposed) in _BLOCK_MAP.items():
            mapping[ours.format(i=i)] = (theirs.format(i=i), transposed)
    return mapping


def _import_transformers() -> Any:
    try:
        import transformers
    except ImportError as exc:
        raise QuillError(
            "Hugging Face interop needs transformers: pip install 'quillgpt[hf]'"
        ) from exc
    return transformers


def from_hf_gpt2(model_or_dir: Any) -> DecoderLM:
    """Build a :class:`DecoderLM` holding the weights of a ``transformers`` GPT-2.

    Args:
        model_or_dir: a ``GPT2LMHeadModel`` or the path of a directory written by its
            ``save_pretrained`` (loaded locally; nothing is downloaded).

    Returns:
        An fp32 model in eval mode with ``pos_encoding="learned"`` that computes the same
        logits as the source (the tests check within 1e-4).
    """
    transformers = _import_transformers()
    if isinstance(model_or_dir, (str, Path)):
        if not Path(model_or_dir).is_dir():
            raise QuillError(f"{model_or_dir} is not a directory written by save_pretrained")
        hf = transformers.GPT2LMHeadModel.from_pretrained(str(model_or_dir), local_files_only=True)
    else:
        hf = model_or_dir
    hc = hf.config
    activation = _FROM_HF_ACTIVATION.get(getattr(hc, "activation_function", "gelu_new"))
    if activation is None:
        raise QuillError(
            f"GPT-2 with activation {hc.activation_function!r} is not supported; "
            f"supported: {sorted(_FROM_HF_ACTIVATION)}"
        )
    config = ModelConfig(
        vocab_size=hc.vocab_size,
        block_size=hc.n_positions,
        n_layer=hc.n_layer,
        n_head=hc.n_head,
        n_embd=hc.n_embd,
        ffn_mult=(hc.n_inner or 4 * hc.n_embd) / hc.n_embd,
        activation=activation,
        pos_encoding="learned",
        bias=True,
        tie_weights=bool(getattr(hc, "tie_word_embeddings", True)),
        layer_norm_eps=hc.layer_norm_epsilon,
        dropout=0.0,
    )
    hf_state = hf.state_dict()
    state = {}
    for ours, (theirs, transposed) in _name_map(config.n_layer).items():
        tensor = hf_state[theirs].detach().float()
        state[ours] = tensor.t() if transposed else tensor
    state["lm_head.weight"] = hf_state["lm_head.weight"].detach().float()
    model = DecoderLM(config)
    model.load_state_dict(state)
    return model.eval()


def to_hf_gpt2(model: DecoderLM, out_dir: str | Path) -> Path:
    """Write ``model`` as a ``transformers`` GPT-2 directory (``GPT2LMHeadModel.from_pretrained``).

    Only GPT-2-shaped models can be exported: learned positions, biases, LayerNorm, GELU (exact
    GELU is written as ``activation_function="gelu"``, which ``transformers`` also implements).

    Raises:
        QuillError: if the model uses rotary or sinusoidal positions, or has no biases.
    """
    cfg = model.config
    if cfg.pos_encoding != "learned" or not cfg.bias:
        raise QuillError(
            "only GPT-2-shaped models export to transformers: need pos_encoding='learned' and "
            f"bias=True (this one has pos_encoding={cfg.pos_encoding!r}, bias={cfg.bias})"
        )
    gpt2_like = {"norm": "layernorm", "qk_norm": False, "logit_softcap": None}
    different = {k: getattr(cfg, k) for k, v in gpt2_like.items() if getattr(cfg, k) != v}
    if cfg.activation not in _TO_HF_ACTIVATION:
        different["activation"] = cfg.activation
    if different:
        raise QuillError(
            f"GPT-2 has no equivalent of {different}; train with norm='layernorm', "
            "qk_norm=False, logit_softcap=None and a GELU activation to export"
        )
    transformers = _import_transformers()
    hc = transformers.GPT2Config(
        vocab_size=cfg.vocab_size,
        n_positions=cfg.block_size,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        n_inner=cfg.ffn_hidden,
        activation_function=_TO_HF_ACTIVATION[cfg.activation],
        layer_norm_epsilon=cfg.layer_norm_eps,
        tie_word_embeddings=cfg.tie_weights,
        resid_pdrop=cfg.dropout,
        embd_pdrop=cfg.dropout,
        attn_pdrop=cfg.dropout,
        bos_token_id=cfg.vocab_size - 1,
        eos_token_id=cfg.vocab_size - 1,
    )
    hf = transformers.GPT2LMHeadModel(hc)
    ours_state = model.state_dict()
    hf_state = {}
    for ours, (theirs, transposed) in _name_map(cfg.n_layer).items():
        tensor = ours_state[ours].detach().float().cpu()
        hf_state[theirs] = tensor.t().contiguous() if transposed else tensor
    hf_state["lm_head.weight"] = ours_state["lm_head.weight"].detach().float().cpu()
    with torch.no_grad():
        missing, unexpected = hf.load_state_dict(hf_state, strict=False)
    leftover = [name for name in missing if not name.endswith("attn.bias")]
    if leftover or unexpected:
        raise QuillError(f"GPT-2 export mismatch: missing {leftover}, unexpected {unexpected}")
    out = Path(out_dir)
    hf.save_pretrained(str(out))
    return out
