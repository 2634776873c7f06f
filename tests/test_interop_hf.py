"""Hugging Face interop: the external check that the model computes what transformers computes.

Every positional encoding, with and without biases and weight tying, exports to the architecture
that computes the same function (GPT-2, GPT-NeoX, Arcee): logits within 1e-4 and the same greedy
tokens as ``transformers``' own ``generate``, and the import gives the weights back exactly.
"""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from quillgpt import DecoderLM, ModelConfig
from quillgpt.data.tokenizer import EOT, train_bpe, train_char
from quillgpt.errors import QuillError

transformers = pytest.importorskip("transformers")
from quillgpt.interop import from_hf, to_hf  # noqa: E402
from quillgpt.interop.hf import hf_architecture  # noqa: E402

GPT2_SHAPES = [
    dict(n_layer=1, n_head=1, n_embd=16, vocab_size=50, n_positions=64),
    dict(n_layer=2, n_head=4, n_embd=64, vocab_size=211, n_positions=96),
    dict(n_layer=3, n_head=6, n_embd=96, vocab_size=300, n_positions=128, n_inner=200),
]

# (options, architecture): every positional encoding, norm, activation, bias and tying.
EXPORTS = [
    (dict(pos_encoding="learned"), "gpt2"),
    (dict(pos_encoding="learned", bias=False, tie_weights=False, activation="relu2"), "gpt2"),
    (dict(pos_encoding="sinusoidal", activation="gelu_tanh"), "gpt2"),
    (dict(pos_encoding="sinusoidal", bias=False, tie_weights=False), "gpt2"),
    (dict(pos_encoding="rope"), "gpt_neox"),
    (dict(pos_encoding="rope", bias=False, tie_weights=False, activation="relu2"), "gpt_neox"),
    (dict(pos_encoding="rope", norm="rmsnorm", bias=False, activation="relu2"), "arcee"),
    (dict(pos_encoding="rope", norm="rmsnorm", tie_weights=False, rope_base=500.0), "arcee"),
]


def perturbed(cfg: ModelConfig) -> DecoderLM:
    """A model whose every tensor is far from its initial value, so a wrong mapping shows."""
    model = DecoderLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def small(**options) -> ModelConfig:
    shape = dict(vocab_size=97, block_size=48, n_layer=2, n_head=2, n_embd=32)
    return ModelConfig(**{**shape, **options})


def random_gpt2(shape: dict) -> torch.nn.Module:
    cfg = transformers.GPT2Config(**shape, bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # non-trivial LayerNorm and bias values, so a wrong mapping shows
        for name, p in model.named_parameters():
            if "ln" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("shape", GPT2_SHAPES)
def test_gpt2_logits_match_transformers(shape):
    hf = random_gpt2(shape)
    ours = from_hf(hf)
    assert ours.config.activation == "gelu_tanh" and ours.config.bias
    idx = torch.randint(0, shape["vocab_size"], (2, 40))
    with torch.no_grad():
        assert_close(ours(idx)[0], hf(idx).logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize("shape", GPT2_SHAPES[1:])
def test_gpt2_greedy_generation_matches_transformers(shape):
    hf = random_gpt2(shape)
    ours = from_hf(hf)
    idx = torch.randint(0, shape["vocab_size"], (2, 12))
    expected = hf.generate(
        idx, attention_mask=torch.ones_like(idx), max_new_tokens=40, do_sample=False, pad_token_id=0
    )
    assert torch.equal(ours.generate(idx, max_new_tokens=40, use_cache=True), expected)


@pytest.mark.parametrize(("options", "arch"), EXPORTS, ids=[str(o) for o, _ in EXPORTS])
def test_export_computes_the_same_function(tmp_path, options, arch):
    ours = perturbed(small(**options))
    assert hf_architecture(ours.config) == arch
    to_hf(ours, tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf")).eval()
    assert hf.config.model_type == arch
    idx = torch.randint(0, 97, (3, 30))
    with torch.no_grad():
        assert_close(hf(idx).logits, ours(idx)[0], atol=1e-4, rtol=0)
    prompt = idx[:, :6]
    expected = hf.generate(
        prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=24, do_sample=False,
        pad_token_id=0,
    )  # fmt: skip
    assert torch.equal(ours.generate(prompt, max_new_tokens=24, use_cache=True), expected)


@pytest.mark.parametrize(("options", "arch"), EXPORTS, ids=[str(o) for o, _ in EXPORTS])
def test_import_gives_the_exported_model_back(tmp_path, options, arch):
    ours = perturbed(small(**options))
    back = from_hf(to_hf(ours, tmp_path / "hf"))
    expected = ours.config.to_dict()
    if options["pos_encoding"] == "sinusoidal":  # written as GPT-2's table: comes back learned
        expected["pos_encoding"] = "learned"
    assert back.config.to_dict() == {**expected, "attention": back.config.attention}
    theirs = back.state_dict()
    for name, tensor in ours.state_dict().items():
        assert torch.equal(theirs[name], tensor), name
    if options["pos_encoding"] == "sinusoidal":
        assert torch.equal(theirs["pos_emb.embed.weight"], ours.pos_emb.table)


@pytest.mark.parametrize(
    ("make_config", "model_class"),
    [
        (
            lambda: transformers.GPTNeoXConfig(
                vocab_size=80, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=72, use_parallel_residual=False, max_position_embeddings=64,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                 "partial_rotary_factor": 1.0},
            ),
            "GPTNeoXForCausalLM",
        ),
        (
            lambda: transformers.ArceeConfig(
                vocab_size=80, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=72, max_position_embeddings=64, bos_token_id=0,
                eos_token_id=0,
            ),
            "ArceeForCausalLM",
        ),
    ],
    ids=["gpt_neox", "arcee"],
)  # fmt: skip
def test_models_built_by_transformers_import(make_config, model_class):
    hf = getattr(transformers, model_class)(make_config()).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    ours = from_hf(hf)
    idx = torch.randint(0, 80, (2, 24))
    with torch.no_grad():
        assert_close(ours(idx)[0], hf(idx).logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_tokenizer_exports_for_autotokenizer_and_pipeline(tmp_path, kind):
    text = ["to be or not to be, that is the question\n"] * 20
    tokenizer = train_bpe(text, vocab_size=300) if kind == "bpe" else train_char(text)
    vocab = tokenizer.get_vocab_size()
    ours = perturbed(small(vocab_size=vocab, pos_encoding="rope", norm="rmsnorm"))
    to_hf(ours, tmp_path / "hf", tokenizer)
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    prompt = "to be or not"
    assert hf_tok(prompt)["input_ids"] == tokenizer.encode(prompt).ids
    assert hf_tok.eos_token == EOT and hf_tok.eos_token_id == tokenizer.token_to_id(EOT)
    generator = transformers.pipeline("text-generation", model=str(tmp_path / "hf"))
    out = generator(prompt, max_new_tokens=12, do_sample=False)[0]["generated_text"]
    ids = torch.tensor([tokenizer.encode(prompt).ids])
    greedy = ours.generate(ids, max_new_tokens=12, use_cache=True)[0].tolist()
    eot = tokenizer.token_to_id(EOT)
    if eot in greedy[ids.shape[1] :]:  # transformers stops at the end-of-text token
        greedy = greedy[: greedy.index(eot, ids.shape[1]) + 1]
    assert out == tokenizer.decode(greedy, skip_special_tokens=True)


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"qk_norm": True}, "qk_norm=false"),
        ({"logit_softcap": 30.0}, "logit_softcap=none"),
        ({"norm": "rmsnorm"}, "norm='layernorm', or with pos_encoding='rope'"),
        ({"norm": "rmsnorm", "pos_encoding": "sinusoidal"}, "norm='layernorm'"),
    ],
)
def test_options_without_an_equivalent_are_refused_by_name(tmp_path, options, says):
    with pytest.raises(QuillError, match=says.replace("(", r"\(").replace(")", r"\)")):
        to_hf(DecoderLM(small(**options)), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.iterdir()) == []


def test_export_refuses_a_non_empty_directory_and_leaves_nothing_on_failure(tmp_path, monkeypatch):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(QuillError, match="already exists"):
        to_hf(DecoderLM(small()), tmp_path / "taken")
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["notes.txt"]

    def disk_full(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", disk_full)
    with pytest.raises(OSError, match="No space"):
        to_hf(DecoderLM(small()), tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]  # no staging folder left


def test_import_refuses_what_quillgpt_does_not_compute(tmp_path):
    parallel = transformers.GPTNeoXConfig(
        vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, use_parallel_residual=True,
    )  # fmt: skip
    with pytest.raises(QuillError, match="use_parallel_residual"):
        from_hf(transformers.GPTNeoXForCausalLM(parallel))
    llama = transformers.LlamaConfig(
        vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32,
    )  # fmt: skip
    with pytest.raises(QuillError, match="'llama' models cannot be imported"):
        from_hf(transformers.LlamaForCausalLM(llama))
    with pytest.raises(QuillError, match="not a directory written by save_pretrained"):
        from_hf(tmp_path / "missing")
