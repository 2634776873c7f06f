"""The data options: one definition of what ``quill prepare`` builds and ``quill train`` reads.

Both verbs take the same options, under the same names and with the same defaults, because both
are made from :class:`DataOptions`: ``quill prepare`` generates its options from its fields, and
:class:`~quillgpt.training.TrainConfig` inherits them. So ``quill prepare stories.jsonl
--text-column story`` and ``quill train --data stories.jsonl --text-column story`` build one
:class:`~quillgpt.data.CorpusSpec` and one tokenizer request, and name one cached folder::

    options = DataOptions(data="stories.jsonl", text_column="story")
    data = options.prepare_data()          # <data_dir>/prepared/stories-bpe2048-<hash>/
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

from pydantic import Field
from pydantic.dataclasses import dataclass

from quillgpt.config import STRICT
from quillgpt.data.corpus import BUILTIN, CorpusSpec
from quillgpt.data.prepare import prepare_data
from quillgpt.data.tokenizer import DEFAULT_BPE_VOCAB, MIN_BPE_VOCAB
from quillgpt.data.tokens import PreparedData

Fraction = Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)]
Seed = Annotated[int, Field(ge=0)]
VocabSize = Annotated[int, Field(ge=MIN_BPE_VOCAB, le=2**32)]  # 256 bytes + EOT; uint32 ids


@dataclass(config=STRICT)
class DataOptions:
    """The corpus, how it is split, the tokenizer, and where the result is cached.

    Every field but ``data_dir`` decides the token ids (:data:`TOKEN_FIELDS`).
    """

    data: str = BUILTIN
    """The corpus: ``shakespeare`` (built in), a local ``.txt``/``.jsonl``/``.json``/``.parquet``
    file or folder of them, a folder written by ``save_to_disk``, or a Hugging Face hub dataset
    name."""
    data_config: str | None = None
    """Configuration of a hub dataset, as in ``load_dataset(data, data_config)``."""
    split: str = "train"
    """The split of ``data`` to train on."""
    val_split: str | None = None
    """The split to validate on; ``none``: ``validation`` where ``data`` has one, else whole
    documents held out of ``split`` (``val_fraction``, ``val_seed``)."""
    text_column: str = "text"
    """The column that holds the text, in ``.jsonl``/``.json``/``.parquet`` files and in saved
    or hub datasets."""
    val_fraction: Fraction = 0.1
    """Share of the characters held out, as whole documents, when a validation split is carved
    out of ``split``."""
    val_seed: Seed = 0
    """Seed of the hash that picks the held-out documents when a validation split is carved."""
    tokenizer: str = "bpe"
    """``bpe`` (byte-level BPE trained on the training split), ``char``, or the path of an
    existing ``tokenizer.json``."""
    tokenizer_vocab: VocabSize = DEFAULT_BPE_VOCAB
    """Vocabulary size of a trained BPE tokenizer. Only for ``tokenizer=bpe``: ``char`` and a
    ``tokenizer.json`` bring their own (a config file's value is then ignored, a command line's
    refused). The model's ``vocab_size`` always follows the tokenizer."""
    data_dir: str | None = None
    """Where prepared data is cached; ``none``: ``$QUILLGPT_DATA_DIR``, else ``./data``."""

    def __post_init__(self) -> None:
        is_file = self.tokenizer.endswith(".json")
        if self.tokenizer not in ("bpe", "char") and not is_file:
            raise ValueError(
                f"tokenizer must be 'bpe', 'char' or a tokenizer.json path, got {self.tokenizer!r}"
            )

    def corpus_spec(self) -> CorpusSpec:
        """The corpus half of the options, as :func:`~quillgpt.data.load_corpus` takes it."""
        return CorpusSpec(
            source=self.data,
            config=self.data_config,
            split=self.split,
            val_split=self.val_split,
            text_column=self.text_column,
            val_fraction=self.val_fraction,
            seed=self.val_seed,
        )

    @property
    def bpe_vocab(self) -> int | None:
        """The vocabulary size to train a BPE with; ``None`` for tokenizers that have their own."""
        return self.tokenizer_vocab if self.tokenizer == "bpe" else None

    def prepare_data(self, *, num_proc: int = 1, force: bool = False) -> PreparedData:
        """Build the token files these options name, or open them from the cache.

        ``num_proc`` and ``force`` are as for :func:`~quillgpt.data.prepare_data`; neither
        changes the ids, so neither is an option here.

        Raises:
            DataError: any input that cannot be used (see :func:`~quillgpt.data.prepare_data`).
        """
        return prepare_data(
            self.corpus_spec(),
            self.tokenizer,
            self.bpe_vocab,
            data_dir=self.data_dir,
            num_proc=num_proc,
            force=force,
        )


DATA_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(DataOptions))
"""Every data option, in order: ``quill prepare``'s options and the first of ``TrainConfig``'s."""

TOKEN_FIELDS: tuple[str, ...] = tuple(name for name in DATA_FIELDS if name != "data_dir")
"""The options that decide the token ids: all but ``data_dir``, which only says where they live."""


def token_options(values: dict[str, Any]) -> dict[str, Any]:
    """The :data:`TOKEN_FIELDS` of a saved config's ``train`` table, defaults filled in.

    A run saved before an option existed was trained with its default. The vocabulary size is
    ``None`` unless the tokenizer is a trained BPE: runs record it for every tokenizer.
    """
    defaults = dataclasses.asdict(DataOptions())
    chosen = {name: values.get(name, defaults[name]) for name in TOKEN_FIELDS}
    if chosen["tokenizer"] != "bpe":
        chosen["tokenizer_vocab"] = None
    return chosen
