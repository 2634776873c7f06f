"""A :class:`~quillgpt.DecoderLM` and its tokenizer as one GGUF file, for llama.cpp and its kin.

GGUF is llama.cpp's file format (ollama and LM Studio read it too): key-value metadata that name
a llama.cpp *architecture* and its hyper-parameters, the tokenizer, and the tensors under the
names that architecture loads. llama.cpp has no "configurable GPT" graph, so a quillgpt model is
written as the architecture that computes the same function (the bundled llama.cpp source is the
authority; ``src/models/<arch>.cpp`` builds each graph):

* absolute positions (learned, or sinusoidal written out as the table it adds), LayerNorm, GELU
  -> ``gpt2``. llama.cpp's ``gpt2`` always has biases, so a bias-free model gets zero biases.
* RoPE, LayerNorm, GELU -> ``gptneox`` with sequential residuals (``use_parallel_residual``
  false) and rotary over the whole head: NEOX rotation pairs ``(i, i + D/2)``, as quillgpt does.
* RoPE, RMSNorm, ReLU², no biases -> ``arcee`` (Llama's blocks with a non-gated ReLU² FFN). Its
  rotation pairs neighbours ``(2i, 2i+1)``, so each head's query and key rows are reordered, as
  llama.cpp's ``convert_hf_to_gguf.py`` does for Llama (the attention scores are unchanged).

The fused ``qkv`` weight is written as it is: all three architectures split ``attn_qkv`` into
``[q; k; v]`` rows. llama.cpp's GELU is the tanh form (looked up in an fp16 table on CPUs), so a
model trained with the exact GELU gives logits a little further from quillgpt's (docs/interop.md
has the measured figures). Anything else (``qk_norm``, ``logit_softcap``, other mixes of norm,
activation and positions) is refused, naming the option to change.

The tokenizer goes in as llama.cpp's ``gpt2`` BPE (:mod:`~quillgpt.interop.gguf_vocab`).
``gguf`` is an optional dependency (``pip install 'quillgpt[gguf]'``), imported only when
writing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from quillgpt.checkpoint import atomic_write
from quillgpt.config import ModelConfig
from quillgpt.errors import QuillError
from quillgpt.interop.gguf_vocab import NEVER_MERGE, GGUFVocab, gguf_vocab
from quillgpt.model.decoder import DecoderLM

FILE_TYPES = ("f32", "f16", "q8_0")
"""What the matrices are stored as; vectors (norms, biases) and position tables stay f32."""

DEFAULT_FILE_TYPE = "f16"

Q8_BLOCK = 32  # q8_0 quantizes rows in blocks of 32 values, one fp16 scale each


@dataclass
class GGUFExport:
    """What :func:`write_gguf` wrote.

    Attributes:
        path: the GGUF file.
        arch: the llama.cpp architecture (``gpt2``, ``gptneox`` or ``arcee``).
        file_type: the requested storage of the matrices.
        tensor_types: tensor name -> what it is stored as (``F32``, ``F16``, ``Q8_0``).
        notes: what was decided on the user's behalf, to print.
    """

    path: Path
    arch: str
    file_type: str
    tensor_types: dict[str, str]
    notes: list[str] = field(default_factory=list)


def gguf_architecture(config: ModelConfig) -> str:
    """The llama.cpp architecture that computes what a model of ``config`` computes.

    Raises:
        QuillError: for an option none of ``gpt2``, ``gptneox`` and ``arcee`` has, naming it.
    """
    if config.qk_norm:
        raise QuillError(
            "llama.cpp's gpt2, gptneox and arcee do not normalise queries and keys; a model "
            "with qk_norm=true cannot be exported to GGUF (train with qk_norm=false)"
        )
    if config.logit_softcap is not None:
        raise QuillError(
            "llama.cpp's gpt2, gptneox and arcee have no logit soft-cap; a model with "
            f"logit_softcap={config.logit_softcap} cannot be exported to GGUF (train with "
            "logit_softcap=none)"
        )
    gelu = config.activation in ("gelu", "gelu_tanh")
    if config.pos_encoding != "rope":
        wrong = [] if config.norm == "layernorm" else [f"norm={config.norm}"]
        wrong += [] if gelu else [f"activation={config.activation}"]
        if wrong:
            raise QuillError(
                f"pos_encoding={config.pos_encoding} exports as llama.cpp's gpt2, which has "
                f"LayerNorm and GELU, not {' and '.join(wrong)}; train with norm=layernorm "
                "and activation=gelu, or with pos_encoding=rope"
            )
        return "gpt2"
    if config.norm == "layernorm":
        if not gelu:
            raise QuillError(
                "rope with layernorm exports as llama.cpp's gptneox, which has GELU, not "
                f"activation={config.activation}; train with activation=gelu, or with "
                "norm=rmsnorm and activation=relu2 (arcee)"
            )
        return "gptneox"
    if config.activation != "relu2":
        raise QuillError(
            "rope with rmsnorm exports as llama.cpp's arcee, whose feed-forward is ReLU², not "
            f"activation={config.activation}; train with activation=relu2, or with "
            "norm=layernorm and a GELU (gptneox)"
        )
    if config.bias:
        raise QuillError(
            "rope with rmsnorm exports as llama.cpp's arcee, which has no output-projection or "
            "feed-forward biases; train with bias=false"
        )
    return "arcee"


def gguf_tensors(model: DecoderLM, arch: str) -> dict[str, np.ndarray]:
    """The model's weights under the GGUF names ``arch`` loads, as fp32 arrays.

    Arrays keep PyTorch's ``(out, in)`` shape: GGUF lists dimensions innermost first, so
    ``(V, C)`` is the ``{n_embd, n_vocab}`` llama.cpp asks for.

    Raises:
        QuillError: the model's layers are not the plain ones a checkpoint loads as (int8,
            or converted for decoding).
    """
    cfg = model.config
    state = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    if cfg.pos_encoding == "sinusoidal":  # a buffer left out of the state dict, not a weight
        state["pos_emb.embed.weight"] = model.pos_emb.table.detach().float().cpu()
    with_bias = arch != "arcee"

    def get(name: str, shape: tuple[int, ...]) -> torch.Tensor:
        tensor = state.get(name)
        if tensor is None and name.endswith(".bias") and with_bias:
            return torch.zeros(shape)  # a bias-free model: llama.cpp's gpt2 and gptneox add 0
        if tensor is None or tuple(tensor.shape) != shape:
            raise QuillError(
                f"the model has no plain {name} of shape {shape} (int8, or prepared for "
                "decoding?); export the fp32 model that load_checkpoint returns"
            )
        return tensor

    C, F, V = cfg.n_embd, cfg.ffn_hidden, cfg.vocab_size
    norm_parts = ("weight", "bias") if with_bias else ("weight",)
    out: dict[str, torch.Tensor] = {"token_embd.weight": get("tok_emb.embed.weight", (V, C))}
    if arch == "gpt2":
        out["position_embd.weight"] = get("pos_emb.embed.weight", (cfg.block_size, C))
    for i in range(cfg.n_layer):
        ours, theirs = f"blocks.{i}.", f"blk.{i}."
        for part in norm_parts:
            out[f"{theirs}attn_norm.{part}"] = get(f"{ours}ln1.{part}", (C,))
        qkv = get(f"{ours}attn.qkv.weight", (3 * C, C))
        if arch == "arcee":  # NORM rotary: reorder q and k rows of every head, leave v
            q, k, v = qkv.split(C)
            qkv = torch.cat(
                (_interleave_rotary(q, cfg.n_head), _interleave_rotary(k, cfg.n_head), v)
            )
        out[f"{theirs}attn_qkv.weight"] = qkv
        out[f"{theirs}attn_output.weight"] = get(f"{ours}attn.proj.weight", (C, C))
        for part in norm_parts:
            out[f"{theirs}ffn_norm.{part}"] = get(f"{ours}ln2.{part}", (C,))
        out[f"{theirs}ffn_up.weight"] = get(f"{ours}ffn.fc.weight", (F, C))
        out[f"{theirs}ffn_down.weight"] = get(f"{ours}ffn.proj.weight", (C, F))
        if with_bias:
            out[f"{theirs}attn_qkv.bias"] = get(f"{ours}attn.qkv.bias", (3 * C,))
            out[f"{theirs}attn_output.bias"] = get(f"{ours}attn.proj.bias", (C,))
            out[f"{theirs}ffn_up.bias"] = get(f"{ours}ffn.fc.bias", (F,))
            out[f"{theirs}ffn_down.bias"] = get(f"{ours}ffn.proj.bias", (C,))
    for part in norm_parts:
        out[f"output_norm.{part}"] = get(f"ln_f.{part}", (C,))
    if not cfg.tie_weights or arch == "gptneox":  # gptneox has no tied head: write a copy
        out["output.weight"] = get("lm_head.weight", (V, C))
    return {name: t.numpy() for name, t in out.items()}


def write_gguf(
    model: DecoderLM,
    tokenizer: Any,
    path: str | Path,
    *,
    file_type: str = DEFAULT_FILE_TYPE,
    name: str = "quillgpt",
) -> GGUFExport:
    """Write ``model`` and its ``tokenizers.Tokenizer`` as the GGUF file ``path``.

    Matrices are stored as ``file_type``; norms, biases and the position table stay f32, as
    llama.cpp's own converter keeps them. A q8_0 matrix whose rows are not a multiple of 32
    long is stored as f16 instead (``notes`` says which). The file is written under a temporary
    name beside ``path`` and renamed, so a failure leaves nothing at ``path``.

    Raises:
        QuillError: the model or tokenizer cannot be exported (see :func:`gguf_architecture`,
            :func:`gguf_vocab`), ``file_type`` is unknown, or ``gguf`` is not installed.
    """
    if file_type not in FILE_TYPES:
        raise QuillError(f"unknown GGUF type {file_type!r}; choose one of {', '.join(FILE_TYPES)}")
    cfg = model.config
    arch = gguf_architecture(cfg)
    vocab = gguf_vocab(tokenizer, cfg.vocab_size)
    tensors = gguf_tensors(model, arch)
    gguf = _import_gguf()
    stored = {key: _storage(gguf, key, array, file_type) for key, array in tensors.items()}
    types = {key: qtype.name for key, (qtype, _) in stored.items()}
    result = GGUFExport(Path(path), arch, file_type, types)
    kept = sorted(key for key, qtype in types.items() if file_type == "q8_0" and qtype == "F16")
    if kept:
        result.notes.append(
            f"{len(kept)} matrices have rows that are not a multiple of {Q8_BLOCK} long "
            f"(e.g. {kept[0]}): stored as f16, not q8_0"
        )

    def write(tmp: Path) -> None:
        writer = gguf.GGUFWriter(str(tmp), arch)
        try:
            _write_metadata(gguf, writer, cfg, arch, vocab, file_type, name)
            for key, (qtype, data) in stored.items():
                writer.add_tensor(key, data, raw_dtype=qtype)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()

    atomic_write(path, write)
    return result


def _write_metadata(
    gguf: Any,
    writer: Any,
    cfg: ModelConfig,
    arch: str,
    vocab: GGUFVocab,
    file_type: str,
    name: str,
) -> None:
    """The key-values llama.cpp reads for ``arch`` (llama-model.cpp, src/models/<arch>.cpp)."""
    writer.add_name(name)
    writer.add_file_type(_FILE_TYPE_IDS[file_type])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_context_length(cfg.block_size)  # also the rows llama.cpp expects in position_embd
    writer.add_embedding_length(cfg.n_embd)
    writer.add_block_count(cfg.n_layer)
    writer.add_feed_forward_length(cfg.ffn_hidden)
    writer.add_head_count(cfg.n_head)
    writer.add_head_count_kv(cfg.n_head)
    if arch == "arcee":
        writer.add_layer_norm_rms_eps(cfg.layer_norm_eps)
    else:
        writer.add_layer_norm_eps(cfg.layer_norm_eps)
    if arch != "gpt2":
        writer.add_rope_dimension_count(cfg.head_size)  # rotary over the whole head
        writer.add_rope_freq_base(cfg.rope_base)
    if arch == "gptneox":
        writer.add_parallel_residual(False)  # x + attn(ln1(x)), then x + ffn(ln2(x))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    writer.add_token_merges(vocab.merges or [NEVER_MERGE])
    writer.add_bos_token_id(vocab.eot_id)
    writer.add_eos_token_id(vocab.eot_id)
    if vocab.unk_id is not None:
        writer.add_unk_token_id(vocab.unk_id)
    writer.add_add_bos_token(False)  # quillgpt conditions on the prompt's own tokens only
    writer.add_add_eos_token(False)


_FILE_TYPE_IDS = {"f32": 0, "f16": 1, "q8_0": 7}  # gguf.LlamaFileType: ALL_F32, MOSTLY_F16, _Q8_0


def _storage(gguf: Any, name: str, array: np.ndarray, file_type: str) -> tuple[Any, np.ndarray]:
    """``(GGML type, data to write)`` of one tensor, following llama.cpp's converter."""
    types = gguf.GGMLQuantizationType
    if array.ndim == 1 or name == "position_embd.weight" or file_type == "f32":
        qtype = types.F32
    elif file_type == "q8_0" and array.shape[-1] % Q8_BLOCK == 0:
        qtype = types.Q8_0
    else:
        qtype = types.F16
    return qtype, gguf.quants.quantize(array, qtype)


def _interleave_rotary(weight: torch.Tensor, n_head: int) -> torch.Tensor:
    """Reorder each head's output rows from rotate-half pairs to neighbouring pairs.

    ``weight`` is ``(H*D, C)``; within a head, row ``i`` and row ``i + D/2`` (rotated together
    by quillgpt) become rows ``2i`` and ``2i+1`` (rotated together by llama.cpp's NORM rope, at
    the same frequency ``base^(-2i/D)``). Queries and keys are reordered alike, so their dot
    products, and the attention, are the same. This is ``convert_hf_to_gguf.py``'s ``permute``.
    """
    rows, cols = weight.shape
    return weight.reshape(n_head, 2, rows // n_head // 2, cols).transpose(1, 2).reshape(rows, cols)


def _import_gguf() -> Any:
    try:
        import gguf
    except ImportError:
        raise QuillError(
            "GGUF export needs the gguf package: pip install 'quillgpt[gguf]'"
        ) from None
    return gguf
