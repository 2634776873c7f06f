"""Loading a checkpoint for inference, and turning token streams into text.

What ``quill generate`` and ``quill eval`` share: open a checkpoint directory (fp32 or written by
``quill quantize``), optionally quantize it to int8, put it on a device, and check that its
``tokenizer.json`` is the one the model was trained with::

    from quillgpt.inference import load_for_inference, stream_text
    loaded = load_for_inference("runs/shakespeare-char-cpu", device="cpu", quantize="int8")
    for piece in stream_text(loaded, "ROMEO:", max_new_tokens=100, temperature=0.8, top_k=50):
        print(piece, end="", flush=True)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from quillgpt.checkpoint import (
    TOKENIZER_FILE,
    WEIGHTS_FILE,
    load_checkpoint,
    model_section,
    read_config,
)
from quillgpt.config import ModelConfig
from quillgpt.device import resolve_device
from quillgpt.errors import CheckpointError, QuillError
from quillgpt.model.decoder import DecoderLM

if TYPE_CHECKING:
    from quillgpt.data import CorpusSpec

QUANTIZE_CHOICES = ("none", "int8")


@dataclass
class LoadedModel:
    """A model ready for inference with its tokenizer.

    Attributes:
        model: the model, in eval mode, on ``device``.
        tokenizer: the ``tokenizers.Tokenizer`` of the checkpoint.
        device: where the model runs.
        path: the checkpoint directory.
        document: its parsed ``config.json``.
        quantized: whether the linear layers are int8.
        notes: what was decided on the user's behalf (device fallbacks, layouts), to print.
    """

    model: DecoderLM
    tokenizer: Any
    device: torch.device
    path: Path
    document: dict[str, Any]
    quantized: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def eot_id(self) -> int | None:
        """Id of the end-of-text token, or ``None`` if the tokenizer has none."""
        return self.tokenizer.token_to_id("<|endoftext|>")


def load_tokenizer_checked(path: str | Path, document: dict[str, Any], vocab_size: int) -> Any:
    """Load ``path/tokenizer.json`` and check it belongs to the model described by ``document``.

    Raises:
        CheckpointError: if the file is missing, unreadable, has more ids than the model's
            vocabulary, or differs from the tokenizer recorded at training time.
    """
    from quillgpt.data.tokenizer import load_tokenizer, tokenizer_sha256

    tokenizer_path = Path(path) / TOKENIZER_FILE
    if not tokenizer_path.is_file():
        raise CheckpointError(
            f"no {TOKENIZER_FILE} in {path}: the model's ids cannot be turned into text; copy "
            "the tokenizer.json of the data it was trained on (its prepared data folder) there"
        )
    try:
        tokenizer = load_tokenizer(tokenizer_path)
    except QuillError as exc:
        raise CheckpointError(str(exc)) from exc
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    if size > vocab_size:
        raise CheckpointError(
            f"{tokenizer_path} has {size} tokens but the model only {vocab_size}: it is not the "
            "tokenizer this model was trained with; use the run's own tokenizer.json"
        )
    expected = document.get("data", {}).get("tokenizer_sha256")
    if expected is not None and tokenizer_sha256(tokenizer) != expected:
        raise CheckpointError(
            f"{tokenizer_path} does not match the tokenizer recorded when the model was trained "
            "(config.json data.tokenizer_sha256); restore the run's own tokenizer.json"
        )
    return tokenizer


def open_checkpoint(path: str | Path) -> tuple[dict[str, Any], ModelConfig, Any]:
    """``config.json``, the model config and the checked tokenizer of checkpoint ``path``.

    The weights are not read yet, so what is wrong with the folder is found first.

    Raises:
        CheckpointError: no checkpoint there (a run's ``best/`` is suggested when it has one),
            another program's ``config.json``, or a missing or mismatched tokenizer.
    """
    path = Path(path)
    if not (path / WEIGHTS_FILE).is_file() and (path / "best" / WEIGHTS_FILE).is_file():
        raise CheckpointError(f"no {WEIGHTS_FILE} in {path}; did you mean {path / 'best'}?")
    document = read_config(path)
    config = ModelConfig.from_dict(model_section(path, document), source=str(path))
    return document, config, load_tokenizer_checked(path, document, config.vocab_size)


def load_for_inference(
    path: str | Path,
    *,
    device: str = "auto",
    quantize: str = "none",
) -> LoadedModel:
    """Open the checkpoint directory ``path`` for generation or evaluation.

    Args:
        path: a run directory or any checkpoint directory (e.g. ``run/best``) holding
            ``model.safetensors``, ``config.json`` and ``tokenizer.json``.
        device: ``auto|cpu|cuda|mps|xpu``; int8 models run on the CPU (``auto`` then picks it).
        quantize: ``"none"`` or ``"int8"`` (dynamic int8 of the linear layers, see
            :mod:`quillgpt.inference.quantize`). A checkpoint written by ``quill quantize`` is
            int8 whatever this says.

    The model keeps its ``nn.Linear`` layers: on a CPU in fp32, ``generate`` and ``stream`` take
    the faster decode layout themselves for each call (:mod:`quillgpt.model.decode_layout`).

    On an Intel GPU (``xpu``), Intel's Extension for PyTorch is applied (``ipex.optimize``) only
    if it is installed and built for this torch version, and ``notes`` says so.

    Raises:
        CheckpointError: if the directory is not a usable checkpoint or its tokenizer is missing
            or does not match.
        QuillError: if an int8 model is asked to run on an accelerator.
    """
    from quillgpt.inference.quantize import quantize_int8
    from quillgpt.inference.quantized_checkpoint import is_quantized_checkpoint, load_quantized

    if quantize not in QUANTIZE_CHOICES:
        raise QuillError(f"unknown --quantize {quantize!r}; choose one of {QUANTIZE_CHOICES}")
    path = Path(path)
    document, _, tokenizer = open_checkpoint(path)
    stored_int8 = is_quantized_checkpoint(path)
    int8 = stored_int8 or quantize == "int8"
    notes: list[str] = []
    if int8 and device != "cpu":
        if device != "auto":
            raise QuillError(
                f"int8 models run on the CPU only, but --device {device} was asked; "
                "use --device cpu, or drop --quantize int8"
            )
        if resolve_device("auto").type != "cpu":
            notes.append("int8 model: running on the CPU")
        device = "cpu"
    target = resolve_device(device)
    if stored_int8:
        model = load_quantized(path)
    else:
        model = load_checkpoint(path, device="cpu" if int8 else target)
        if int8:
            quantize_int8(model)
    if target.type == "xpu":
        from quillgpt.device import ipex_optimize

        model, _, applied = ipex_optimize(model.eval())
        if applied:
            notes.append("intel_extension_for_pytorch matches torch: ipex.optimize applied")
    return LoadedModel(model.eval(), tokenizer, target, path, document, int8, notes)


def load_for_export(
    path: str | Path, check: Callable[[ModelConfig], Any] | None = None
) -> tuple[DecoderLM, Any]:
    """Open checkpoint directory ``path`` as an fp32 CPU model and its tokenizer, to convert.

    What ``quill export-hf`` and ``quill export-gguf`` share. ``check`` sees the model's
    config before the weights are read, so a model the format cannot hold costs nothing.

    Raises:
        CheckpointError: not a usable checkpoint, or one written by ``quill quantize`` (its
            int8 weights are not the model's: export the fp32 run it came from).
        QuillError: whatever ``check`` raises.
    """
    from quillgpt.inference.quantized_checkpoint import is_quantized_checkpoint

    _, config, tokenizer = open_checkpoint(path)
    if is_quantized_checkpoint(path):
        raise CheckpointError(
            f"{path} holds int8 weights written by quill quantize; export the fp32 run it was "
            "quantized from"
        )
    if check is not None:
        check(config)
    return load_checkpoint(path), tokenizer


def encode_prompt(loaded: LoadedModel, prompt: str) -> tuple[list[int], str | None]:
    """Token ids of ``prompt`` ready to condition on, and a notice if it had to be changed.

    An empty prompt becomes the end-of-text token (the start of a fresh document); a prompt longer
    than the context window keeps its last ``block_size`` tokens.
    """
    ids = loaded.tokenizer.encode(prompt).ids if prompt else []
    block_size = loaded.model.config.block_size
    if not ids:
        if loaded.eot_id is None:
            raise QuillError("the prompt is empty and the tokenizer has no <|endoftext|> token")
        return [loaded.eot_id], None
    if len(ids) > block_size:
        notice = (
            f"the prompt is {len(ids)} tokens, longer than the context window "
            f"({block_size}): keeping its last {block_size}"
        )
        return ids[-block_size:], notice
    return ids, None


def stream_text(
    loaded: LoadedModel,
    prompt_ids: list[int],
    *,
    max_new_tokens: int = 200,
    temperature: float = 0.8,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    stop_at_eot: bool = True,
) -> Iterator[tuple[str, int]]:
    """Generate after ``prompt_ids``; yield ``(new text, tokens generated so far)`` per token.

    Tokens are decoded together, not one by one: a byte-level BPE token can hold part of a UTF-8
    character, so the text of a token that ends inside a character is held back (yielded as
    ``""``) until the character is complete. Generation stops after ``max_new_tokens`` or, with
    ``stop_at_eot``, at the end-of-text token (which is not yielded).
    """
    idx = torch.tensor([prompt_ids], dtype=torch.long, device=loaded.device)
    stop = loaded.eot_id if stop_at_eot else None
    generated: list[int] = []
    emitted = ""
    for token in loaded.model.stream(
        idx,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        stop_tokens=stop,
    ):
        token_id = int(token[0])
        if token_id == stop:
            break
        generated.append(token_id)
        text = loaded.tokenizer.decode(generated, skip_special_tokens=False)
        if text.endswith("\ufffd"):
            yield "", len(generated)  # wait for the rest of a multi-byte character
            continue
        yield text[len(emitted) :], len(generated)
        emitted = text
    text = loaded.tokenizer.decode(generated, skip_special_tokens=False)
    if len(text) > len(emitted):
        yield text[len(emitted) :], len(generated)


def open_eval_data(
    loaded: LoadedModel, dataset: CorpusSpec | str | None = None, data_dir: str | None = None
):
    """The prepared data to evaluate on, tokenized with the checkpoint's own tokenizer.

    Without ``dataset``: the prepared folder the model was trained on (``config.json`` records
    it). With one (a corpus name or path as for ``quill prepare``, or a
    :class:`~quillgpt.data.CorpusSpec` with its text column, hub configuration and split): that
    corpus, prepared with the checkpoint's ``tokenizer.json`` (cached like any prepared data).

    Raises:
        QuillError: if no dataset is given and the checkpoint does not record its training data,
            or if the prepared data was tokenized differently.
    """
    from quillgpt.data import PreparedData, prepare_data, tokenizer_sha256

    if dataset is None:
        recorded = loaded.document.get("data", {}).get("prepared")
        if recorded is None:
            raise QuillError(
                f"{loaded.path}/config.json does not say what data the model was trained on; "
                "pass --dataset (e.g. --dataset shakespeare)"
            )
        data = PreparedData.load(recorded)
    else:
        data = prepare_data(dataset, tokenizer=loaded.tokenizer, data_dir=data_dir)
    if data.meta["tokenizer"]["sha256"] != tokenizer_sha256(loaded.tokenizer):
        raise QuillError(
            f"{data.directory} was tokenized with another tokenizer than {loaded.path}'s; "
            "pass --dataset to tokenize the corpus with the checkpoint's tokenizer"
        )
    return data


def evaluate_loaded(
    loaded: LoadedModel,
    data: Any,
    *,
    split: str = "validation",
    batch_size: int = 8,
    max_batches: int | None = None,
) -> Any:
    """Loss, perplexity and bits per byte of ``loaded`` on ``split`` of prepared ``data``.

    :func:`quillgpt.evaluation_model` under ``torch.inference_mode``: every token of the
    split but the first is a target exactly once; ``max_batches`` stops early. Returns a
    :class:`quillgpt.evaluation.EvalResult`.
    """
    from quillgpt.evaluation import evaluate_model

    with torch.inference_mode():
        return evaluate_model(
            loaded.model, data, split=split, batch_size=batch_size, max_batches=max_batches
        )
