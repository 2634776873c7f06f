"""quillgpt models to and from Hugging Face ``transformers``, weights and tokenizer.

Three ``transformers`` architectures compute exactly what a :class:`~quillgpt.DecoderLM`
computes, each for part of its options (the tests compare logits within 1e-4):

================================  ==========================================================
quillgpt                          ``transformers``
================================  ==========================================================
learned or sinusoidal positions,  ``gpt2`` (``GPT2LMHeadModel``); sinusoidal positions are
LayerNorm                         written as GPT-2's position table, so they import back as
                                  ``pos_encoding="learned"``
RoPE, LayerNorm                   ``gpt_neox`` with sequential residuals
                                  (``use_parallel_residual=False``) and full rotary
RoPE, RMSNorm                     ``arcee`` (Llama's attention and RMSNorm, a non-gated MLP)
================================  ==========================================================

Any activation (``gelu``, ``gelu_tanh``, ``relu2``), with or without biases (a bias that the
architecture always has is written as zeros), tied or untied head. Not representable, and so
refused with the option to change: ``qk_norm``, ``logit_softcap``, and RMSNorm with absolute
positions. Every architecture rotates the same ``(i, i + D/2)`` pairs as quillgpt's RoPE, so no
rows are permuted; GPT-NeoX only orders its fused QKV rows head by head.

``transformers`` is an optional dependency (``pip install 'quillgpt[hf]'``), imported only here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from quillgpt.checkpoint import write_new_directory
from quillgpt.config import ModelConfig
from quillgpt.data.tokenizer import EOT, UNK
from quillgpt.errors import QuillError
from quillgpt.model.decoder import DecoderLM

State = dict[str, torch.Tensor]

_TO_HF_ACTIVATION = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu2": "relu2"}
_FROM_HF_ACTIVATION = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "relu2": "relu2",
}

# Per architecture: quillgpt name -> transformers name; "{i}" is the layer. QKV is handled apart.
_BLOCK_NAMES: dict[str, dict[str, str]] = {
    "gpt2": {
        "ln1": "transformer.h.{i}.ln_1",
        "attn.proj": "transformer.h.{i}.attn.c_proj",
        "ln2": "transformer.h.{i}.ln_2",
        "ffn.fc": "transformer.h.{i}.mlp.c_fc",
        "ffn.proj": "transformer.h.{i}.mlp.c_proj",
    },
    "gpt_neox": {
        "ln1": "gpt_neox.layers.{i}.input_layernorm",
        "attn.proj": "gpt_neox.layers.{i}.attention.dense",
        "ln2": "gpt_neox.layers.{i}.post_attention_layernorm",
        "ffn.fc": "gpt_neox.layers.{i}.mlp.dense_h_to_4h",
        "ffn.proj": "gpt_neox.layers.{i}.mlp.dense_4h_to_h",
    },
    "arcee": {
        "ln1": "model.layers.{i}.input_layernorm",
        "attn.proj": "model.layers.{i}.self_attn.o_proj",
        "ln2": "model.layers.{i}.post_attention_layernorm",
        "ffn.fc": "model.layers.{i}.mlp.up_proj",
        "ffn.proj": "model.layers.{i}.mlp.down_proj",
    },
}
_TOP_NAMES: dict[str, dict[str, str]] = {
    "gpt2": {
        "tok_emb.embed": "transformer.wte",
        "pos_emb.embed": "transformer.wpe",
        "ln_f": "transformer.ln_f",
    },
    "gpt_neox": {"tok_emb.embed": "gpt_neox.embed_in", "ln_f": "gpt_neox.final_layer_norm"},
    "arcee": {"tok_emb.embed": "model.embed_tokens", "ln_f": "model.norm"},
}
_QKV_NAMES = {
    "gpt2": ("transformer.h.{i}.attn.c_attn",),
    "gpt_neox": ("gpt_neox.layers.{i}.attention.query_key_value",),
    "arcee": tuple(f"model.layers.{{i}}.self_attn.{x}_proj" for x in "qkv"),
}


def hf_architecture(config: ModelConfig) -> str:
    """The ``transformers`` ``model_type`` that computes what a model of ``config`` computes.

    Raises:
        QuillError: for options no supported architecture has, naming the option to change.
    """
    if config.qk_norm:
        raise QuillError(
            "transformers' GPT-2, GPT-NeoX and Arcee have no qk_norm; train with "
            "qk_norm=false to export"
        )
    if config.logit_softcap is not None:
        raise QuillError(
            "transformers' GPT-2, GPT-NeoX and Arcee have no logit soft-cap; train "
            "with logit_softcap=none to export"
        )
    if config.pos_encoding == "rope":
        return "gpt_neox" if config.norm == "layernorm" else "arcee"
    if config.norm == "rmsnorm":
        raise QuillError(
            f"pos_encoding={config.pos_encoding!r} with norm='rmsnorm' has no transformers "
            "equivalent (GPT-2 uses LayerNorm); train with norm='layernorm', or with "
            "pos_encoding='rope' (exported as Arcee)"
        )
    return "gpt2"


def to_hf(model: DecoderLM, out_dir: str | Path, tokenizer: Any = None) -> Path:
    """Write ``model`` (and its ``tokenizers.Tokenizer``) as a ``transformers`` directory.

    ``AutoModelForCausalLM.from_pretrained(out_dir)`` loads it, and with a tokenizer so do
    ``AutoTokenizer`` and ``pipeline("text-generation")``. The directory is written under a
    temporary name and renamed, so a failure leaves nothing at ``out_dir``.

    Raises:
        QuillError: the model has an option no architecture represents (see
            :func:`hf_architecture`), ``out_dir`` is a non-empty directory or a file, or
            ``transformers`` is missing.
    """
    cfg = model.config
    arch = hf_architecture(cfg)
    transformers = _import_transformers()
    hf_config = _hf_config(transformers, arch, cfg)
    if tokenizer is not None:
        eot = tokenizer.token_to_id(EOT)
        hf_config.bos_token_id = hf_config.eos_token_id = hf_config.pad_token_id = eot
    hf = transformers.AutoModelForCausalLM.from_config(hf_config)
    theirs = _to_hf_state(arch, _our_state(model), cfg)
    expected = set(hf.state_dict())
    for name in expected - theirs.keys():
        if name.endswith(".bias"):  # a bias this architecture always has and we have not
            theirs[name] = torch.zeros(hf.get_parameter(name).shape)
    hf.load_state_dict({k: theirs[k] for k in expected & theirs.keys()}, strict=True)
    if cfg.tie_weights:
        hf.tie_weights()

    def write(staging: Path) -> None:
        hf.save_pretrained(str(staging))
        if tokenizer is not None:
            _hf_tokenizer(transformers, tokenizer).save_pretrained(str(staging))

    return write_new_directory(out_dir, write)


def from_hf(model_or_dir: Any) -> DecoderLM:
    """Build a :class:`DecoderLM` holding the weights of a ``transformers`` causal LM.

    Args:
        model_or_dir: a GPT-2, GPT-NeoX or Arcee model object, or the path of a directory
            written by ``save_pretrained`` (read locally; nothing is downloaded).

    Returns:
        An fp32 model in eval mode that computes the same logits. ``bias`` is false when every
        bias of the source is zero (as in a quillgpt export of a bias-free model).

    Raises:
        QuillError: not a directory, another architecture, or an option quillgpt does not have
            (parallel residuals, partial rotary, grouped-query attention, rope scaling...).
    """
    transformers = _import_transformers()
    if isinstance(model_or_dir, (str, Path)):
        _check_hf_config(Path(model_or_dir))
        try:
            hf = transformers.AutoModelForCausalLM.from_pretrained(
                str(model_or_dir), local_files_only=True, dtype=torch.float32
            )
        except (OSError, ValueError, KeyError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise QuillError(f"cannot load {model_or_dir} with transformers: {first}") from None
    else:
        hf = model_or_dir
    arch = hf.config.model_type
    if arch not in _BLOCK_NAMES:
        raise QuillError(
            f"{arch!r} models cannot be imported; quillgpt computes what gpt2, gpt_neox "
            "(sequential residuals, full rotary) and arcee models compute"
        )
    cfg = _our_config(arch, hf.config)
    state = _from_hf_state(arch, {k: v.detach().float() for k, v in hf.state_dict().items()}, cfg)
    biases = [name for name in state if name.endswith(".bias")]
    if not any(state[name].any() for name in biases):
        cfg = ModelConfig.from_dict({**cfg.to_dict(), "bias": False})
        state = {name: t for name, t in state.items() if name not in biases}
    model = DecoderLM(cfg)
    model.load_state_dict(state)
    return model.eval()


def hf_snapshot(name_or_dir: str | Path) -> Path:
    """A local ``save_pretrained`` directory for ``name_or_dir``: itself, or a hub download.

    A name that is not a directory is taken as a hub model id (``gpt2``) and its config,
    weights and tokenizer files are fetched into the Hugging Face cache (network needed).

    Raises:
        QuillError: not a directory, and the hub cannot provide it (offline, or no such model).
    """
    path = Path(name_or_dir)
    if path.is_dir() or path.exists() or str(name_or_dir).startswith((".", "/", "~")):
        return path  # a local path: from_hf and load_hf_tokenizer explain what is wrong with it
    try:
        from huggingface_hub import snapshot_download

        files = ["*.json", "*.safetensors", "*.txt"]
        return Path(snapshot_download(str(name_or_dir), allow_patterns=files))
    except Exception as exc:  # offline, unknown id, gated: the hub's own reason, in one line
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise QuillError(
            f"{name_or_dir} is not a directory, and the Hugging Face hub cannot provide it "
            f"({reason}); pass a save_pretrained directory"
        ) from None


def load_hf_tokenizer(directory: str | Path) -> Any:
    """The ``tokenizers.Tokenizer`` of a ``save_pretrained`` directory (its ``tokenizer.json``).

    Raises:
        QuillError: if the directory has no fast tokenizer (``tokenizer.json``).
    """
    from tokenizers import Tokenizer

    _check_hf_config(Path(directory))
    path = Path(directory) / "tokenizer.json"
    if not path.is_file():
        raise QuillError(
            f"{directory} has no tokenizer.json; save a fast tokenizer there "
            "(AutoTokenizer.from_pretrained(...).save_pretrained(dir))"
        )
    return Tokenizer.from_file(str(path))


def _check_hf_config(directory: Path) -> None:
    """Refuse a directory without a ``transformers`` ``config.json``, saying what it is."""
    import json

    if not (directory / "config.json").is_file():
        raise QuillError(
            f"{directory} is not a directory written by save_pretrained (no config.json)"
        )
    try:
        document = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise QuillError(f"{directory}/config.json is unreadable ({exc})") from None
    if isinstance(document, dict) and "model_type" in document:
        return
    if isinstance(document, dict) and isinstance(document.get("model"), dict):
        raise QuillError(
            f"{directory} is a quillgpt run already: use it as it is, or write it for "
            "transformers with quill export-hf"
        )
    raise QuillError(f"{directory}/config.json is not a transformers config (no model_type)")


def _import_transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise QuillError(
            "Hugging Face interop needs transformers: pip install 'quillgpt[hf]'"
        ) from None
    transformers.logging.set_verbosity_error()  # its notes about unused defaults are noise here
    transformers.logging.disable_progress_bar()  # and bars for loading a few files
    return transformers


def _our_state(model: DecoderLM) -> State:
    """The model's fp32 CPU tensors, with sinusoidal positions as a table like learned ones."""
    state = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    if model.config.pos_encoding == "sinusoidal":
        state["pos_emb.embed.weight"] = model.pos_emb.table.detach().float().cpu()
    return state


def _hf_config(transformers: Any, arch: str, cfg: ModelConfig) -> Any:
    """The ``transformers`` config of architecture ``arch`` for a model of ``cfg``."""
    common = dict(vocab_size=cfg.vocab_size, tie_word_embeddings=cfg.tie_weights)
    act = _TO_HF_ACTIVATION[cfg.activation]
    if arch == "gpt2":
        return transformers.GPT2Config(
            **common,
            n_positions=cfg.block_size,
            n_embd=cfg.n_embd,
            n_layer=cfg.n_layer,
            n_head=cfg.n_head,
            n_inner=cfg.ffn_hidden,
            activation_function=act,
            layer_norm_epsilon=cfg.layer_norm_eps,
            resid_pdrop=cfg.dropout,
            embd_pdrop=cfg.dropout,
            attn_pdrop=cfg.dropout,
        )
    shape = dict(
        hidden_size=cfg.n_embd,
        num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head,
        intermediate_size=cfg.ffn_hidden,
        hidden_act=act,
        max_position_embeddings=cfg.block_size,
        attention_bias=cfg.bias,
        attention_dropout=cfg.dropout,
    )
    rope = {"rope_type": "default", "rope_theta": cfg.rope_base}
    if arch == "gpt_neox":
        return transformers.GPTNeoXConfig(
            **common,
            **shape,
            layer_norm_eps=cfg.layer_norm_eps,
            use_parallel_residual=False,  # quillgpt's blocks: x + attn(ln1 x), then + ffn(ln2 x)
            rope_parameters={**rope, "partial_rotary_factor": 1.0},
            hidden_dropout=cfg.dropout,
        )
    return transformers.ArceeConfig(
        **common,
        **shape,
        num_key_value_heads=cfg.n_head,
        head_dim=cfg.head_size,
        rms_norm_eps=cfg.layer_norm_eps,
        mlp_bias=cfg.bias,
        rope_parameters=rope,
    )


def _our_config(arch: str, hc: Any) -> ModelConfig:
    """The :class:`ModelConfig` of a ``transformers`` config, or a :class:`QuillError`."""
    unsupported: dict[str, Any] = {}
    if arch == "gpt2":
        act_name = hc.activation_function
        for option in ("scale_attn_by_inverse_layer_idx", "add_cross_attention"):
            if getattr(hc, option, False):
                unsupported[option] = True
        shape = dict(
            block_size=hc.n_positions,
            n_layer=hc.n_layer,
            n_head=hc.n_head,
            n_embd=hc.n_embd,
            ffn_hidden=hc.n_inner or 4 * hc.n_embd,
            pos_encoding="learned",
            norm="layernorm",
            layer_norm_eps=hc.layer_norm_epsilon,
        )
    else:
        act_name = hc.hidden_act
        rope = dict(hc.rope_parameters or {})
        if rope.get("rope_type", "default") != "default":
            unsupported["rope_type"] = rope["rope_type"]
        if rope.get("partial_rotary_factor", 1.0) != 1.0:
            unsupported["partial_rotary_factor"] = rope["partial_rotary_factor"]
        if arch == "gpt_neox" and hc.use_parallel_residual:
            unsupported["use_parallel_residual"] = True
        if arch == "arcee":
            if (hc.num_key_value_heads or hc.num_attention_heads) != hc.num_attention_heads:
                unsupported["num_key_value_heads"] = hc.num_key_value_heads
            if hc.head_dim not in (None, hc.hidden_size // hc.num_attention_heads):
                unsupported["head_dim"] = hc.head_dim
        shape = dict(
            block_size=hc.max_position_embeddings,
            n_layer=hc.num_hidden_layers,
            n_head=hc.num_attention_heads,
            n_embd=hc.hidden_size,
            ffn_hidden=hc.intermediate_size,
            pos_encoding="rope",
            rope_base=float(rope.get("rope_theta", 10000.0)),
            norm="layernorm" if arch == "gpt_neox" else "rmsnorm",
            layer_norm_eps=hc.layer_norm_eps if arch == "gpt_neox" else hc.rms_norm_eps,
        )
    if act_name not in _FROM_HF_ACTIVATION:
        unsupported["activation"] = act_name
    if unsupported:
        raise QuillError(
            f"this {arch} model has options quillgpt does not have: {unsupported}; "
            f"supported activations: {sorted(_FROM_HF_ACTIVATION)}"
        )
    ffn_hidden = shape.pop("ffn_hidden")
    return ModelConfig(
        vocab_size=hc.vocab_size,
        ffn_mult=ffn_hidden / shape["n_embd"],
        activation=_FROM_HF_ACTIVATION[act_name],
        bias=True,
        tie_weights=bool(getattr(hc, "tie_word_embeddings", False)),
        dropout=0.0,
        **shape,
    )


def _names(arch: str, n_layer: int) -> dict[str, str]:
    """Our parameter prefixes -> ``transformers`` prefixes, QKV excepted."""
    names = dict(_TOP_NAMES[arch])
    for i in range(n_layer):
        for ours, theirs in _BLOCK_NAMES[arch].items():
            names[f"blocks.{i}.{ours}"] = theirs.format(i=i)
    return names


def _neox_qkv_order(cfg: ModelConfig) -> torch.Tensor:
    """Row order that takes quillgpt's ``[q; k; v]`` rows to GPT-NeoX's head-by-head rows.

    GPT-NeoX views its fused output as ``(H, 3, D)``: each head's query, key and value rows sit
    together; quillgpt's are ``(3, H, D)``.
    """
    rows = torch.arange(3 * cfg.n_embd).view(3, cfg.n_head, cfg.head_size)
    return rows.transpose(0, 1).reshape(-1)


def _to_hf_state(arch: str, ours: State, cfg: ModelConfig) -> State:
    """Our tensors under ``transformers`` names, laid out as ``arch`` stores them."""
    conv1d = arch == "gpt2"  # GPT-2 stores linear weights as Conv1D (in, out): transposed
    theirs: State = {}

    def put(name: str, tensor: torch.Tensor, is_weight_matrix: bool) -> None:
        theirs[name] = tensor.t().contiguous() if conv1d and is_weight_matrix else tensor

    for prefix, hf_prefix in _names(arch, cfg.n_layer).items():
        for kind in ("weight", "bias"):
            if f"{prefix}.{kind}" in ours:
                matrix = kind == "weight" and (".attn." in prefix or ".ffn." in prefix)
                put(f"{hf_prefix}.{kind}", ours[f"{prefix}.{kind}"], matrix)
    for i in range(cfg.n_layer):
        targets = [name.format(i=i) for name in _QKV_NAMES[arch]]
        for kind in ("weight", "bias"):
            tensor = ours.get(f"blocks.{i}.attn.qkv.{kind}")
            if tensor is None:
                continue
            if arch == "gpt_neox":
                tensor = tensor[_neox_qkv_order(cfg)]
            for target, part in zip(targets, tensor.chunk(len(targets)), strict=True):
                put(f"{target}.{kind}", part, kind == "weight")
    theirs["lm_head.weight"] = ours["lm_head.weight"]
    return theirs


def _from_hf_state(arch: str, theirs: State, cfg: ModelConfig) -> State:
    """The inverse of :func:`_to_hf_state`; a bias that ``arch`` lacks comes back as zeros."""
    conv1d = arch == "gpt2"
    ours: State = {}

    def weight(name: str, is_weight_matrix: bool) -> torch.Tensor:
        tensor = theirs[f"{name}.weight"]
        return tensor.t().contiguous() if conv1d and is_weight_matrix else tensor

    def bias(name: str, size: int) -> torch.Tensor:
        return theirs.get(f"{name}.bias", torch.zeros(size))  # Arcee without mlp_bias, say

    for prefix, hf_prefix in _names(arch, cfg.n_layer).items():
        linear = ".attn." in prefix or ".ffn." in prefix
        ours[f"{prefix}.weight"] = weight(hf_prefix, linear)
        if linear or (prefix.endswith(("ln1", "ln2", "ln_f")) and cfg.norm == "layernorm"):
            ours[f"{prefix}.bias"] = bias(hf_prefix, ours[f"{prefix}.weight"].shape[0])
    for i in range(cfg.n_layer):
        sources = [name.format(i=i) for name in _QKV_NAMES[arch]]
        qkv_weight = torch.cat([weight(s, True) for s in sources])
        part = 3 * cfg.n_embd // len(sources)
        qkv_bias = torch.cat([bias(s, part) for s in sources])
        if arch == "gpt_neox":
            back = torch.argsort(_neox_qkv_order(cfg))
            qkv_weight, qkv_bias = qkv_weight[back], qkv_bias[back]
        ours[f"blocks.{i}.attn.qkv.weight"] = qkv_weight
        ours[f"blocks.{i}.attn.qkv.bias"] = qkv_bias
    ours["lm_head.weight"] = theirs["lm_head.weight"]
    return ours


def _hf_tokenizer(transformers: Any, tokenizer: Any) -> Any:
    """A ``PreTrainedTokenizerFast`` around a quillgpt tokenizer, EOT as its BOS/EOS/pad."""
    special = {"bos_token": EOT, "eos_token": EOT, "pad_token": EOT}
    if tokenizer.token_to_id(UNK) is not None:  # char tokenizers
        special["unk_token"] = UNK
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, **special)
