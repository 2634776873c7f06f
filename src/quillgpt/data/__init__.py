"""Data: corpora, tokenizers, cached token files and fast loaders of ``(x, y)`` windows.

The pipeline, and the one call that runs it::

    corpus (built-in Shakespeare / hub / local files)  -> DatasetDict {train, validation}
      -> tokenizers.Tokenizer (byte-level BPE or char)  -> tokenizer.json
      -> flat uint16/uint32 token file per split + meta.json      [cached, atomic]
      -> DataLoader of (x, y), int64 (B, T), y = x shifted by one

    from quillgpt.data import DataOptions, prepare_data, make_train_loader, make_eval_loader
    data = prepare_data("shakespeare", tokenizer="bpe", vocab_size=2048)
    data = DataOptions(data="stories.jsonl", text_column="story").prepare_data()  # as the CLI
    train = make_train_loader(data, block_size=256, batch_size=16, seed=0, start_step=step)
    val = make_eval_loader(data, block_size=256, batch_size=16)
    bits_per_byte = total_nats / data.val_bytes / math.log(2)

``datasets`` is imported only when a corpus is loaded, so training code that only reads prepared
token files does not pay for it. This package never imports :mod:`quillgpt.model`.
"""

from quillgpt.data.cache import DATA_DIR_ENV, resolve_data_dir
from quillgpt.data.corpus import BUILTIN, CorpusSpec, carve_validation, load_corpus
from quillgpt.data.loader import (
    RandomWindowSampler,
    SequentialWindowSampler,
    TokenWindows,
    make_eval_loader,
    make_train_loader,
)
from quillgpt.data.options import DATA_FIELDS, TOKEN_FIELDS, DataOptions, token_options
from quillgpt.data.prepare import prepare_data
from quillgpt.data.tokenizer import (
    DEFAULT_BPE_VOCAB,
    EOT,
    MIN_BPE_VOCAB,
    UNK,
    eot_id,
    load_tokenizer,
    tokenizer_sha256,
    train_bpe,
    train_char,
)
from quillgpt.data.tokens import SPLITS, PreparedData, token_dtype

__all__ = [
    "BUILTIN",
    "DATA_DIR_ENV",
    "DATA_FIELDS",
    "DEFAULT_BPE_VOCAB",
    "EOT",
    "MIN_BPE_VOCAB",
    "SPLITS",
    "TOKEN_FIELDS",
    "UNK",
    "CorpusSpec",
    "DataOptions",
    "PreparedData",
    "RandomWindowSampler",
    "SequentialWindowSampler",
    "TokenWindows",
    "carve_validation",
    "eot_id",
    "load_corpus",
    "load_tokenizer",
    "make_eval_loader",
    "make_train_loader",
    "prepare_data",
    "resolve_data_dir",
    "token_dtype",
    "token_options",
    "tokenizer_sha256",
    "train_bpe",
    "train_char",
]
