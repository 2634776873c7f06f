"""``quill prepare``: build or reuse a corpus, tokenizer and token files, and say what was built.

Examples::

    quill prepare                                   # built-in Shakespeare, BPE 2048
    quill prepare --tokenizer char
    quill prepare path/to/texts/ --tokenizer bpe --tokenizer-vocab 8192
    quill prepare stories.jsonl --text-column story
    quill prepare roneneldan/TinyStories --split train --val-split validation
    quill prepare --tokenizer gpt2/tokenizer.json   # an existing tokenizer file

The data options are :class:`~quillgpt.data.DataOptions`, ``quill train``'s under the same names
(``quill train --data stories.jsonl --text-column story`` reads what the fourth line builds).
"""

from __future__ import annotations

import argparse
import os
import time

HELP = "load a corpus, train or load a tokenizer, and write cached token files"

OLD_SPELLINGS = {
    "data_config": ("--config",),
    "val_seed": ("--seed",),
    "tokenizer_vocab": ("--vocab-size",),
}
"""The options' names before ``quill prepare`` shared them with ``quill train``; still accepted."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the data options (positional ``SOURCE`` for ``data``) and those of preparing."""
    from quillgpt.commands.options import add_config_options
    from quillgpt.config import field_doc
    from quillgpt.data import DataOptions

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("Examples::", 1)[1].split("The data options", 1)[0].rstrip()
    parser.add_argument(
        "data",
        nargs="?",
        metavar="SOURCE",
        default=argparse.SUPPRESS,
        help=" ".join(field_doc(DataOptions, "data").replace("``", "").split())
        + " (default: shakespeare)",
    )
    group = parser.add_argument_group("data (DataOptions: the same options as quill train's)")
    add_config_options(group, DataOptions, skip=("data",), aliases=OLD_SPELLINGS)
    parser.add_argument(
        "--num-proc",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="processes for tokenizing with Dataset.map (default: cores, at most 4)",
    )
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")
    parser.add_argument(
        "--block-size",
        type=int,
        default=None,
        help="also check that both splits are long enough for this context length",
    )


def run(args: argparse.Namespace) -> int:
    """Prepare the data, print a summary table, return 0."""
    from quillgpt.commands.options import refuse_unused_vocab
    from quillgpt.config import load_dataclass
    from quillgpt.data import DATA_FIELDS, SPLITS, DataOptions, make_eval_loader
    from quillgpt.errors import QuillError

    given = {name: value for name, value in vars(args).items() if name in DATA_FIELDS}
    options = load_dataclass(DataOptions, {}, text=given)
    refuse_unused_vocab(options.tokenizer, given)
    if args.block_size is not None and args.block_size < 1:  # before minutes of preparing
        raise QuillError(f"--block-size must be >= 1, got {args.block_size}")
    start = time.perf_counter()
    data = options.prepare_data(num_proc=args.num_proc, force=args.force)
    if args.block_size is not None:
        for split in SPLITS:
            make_eval_loader(data, args.block_size, batch_size=1, split=split)
    elapsed = time.perf_counter() - start

    meta = data.meta
    tok = meta["tokenizer"]
    tok_name = {"bpe": "byte-level BPE", "char": "char"}.get(tok["kind"], "given")
    how = (
        f"reused the cache (built earlier in {meta['seconds']['total']:.1f} s)"
        if data.reused
        else f"built in {elapsed:.1f} s"
    )
    print(f"{options.data}: {tok_name} tokenizer, vocab {data.vocab_size}; {how}")
    header = ("split", "documents", "characters", "bytes", "tokens", "bytes/token")
    print(f"  {header[0]:<11}" + "".join(f"{h:>13}" for h in header[1:]))
    for split in SPLITS:
        s = meta["splits"][split]
        cells = [f"{s[k]:,}" for k in ("documents", "characters", "bytes", "tokens")]
        cells.append(f"{s['bytes'] / s['tokens']:.2f}")
        print(f"  {split:<11}" + "".join(f"{c:>13}" for c in cells))
    if meta["validation_titles"]:
        print(f"  held out for validation: {', '.join(meta['validation_titles'])}")
    for split in SPLITS:
        unknown = meta["splits"][split]["unknown_tokens"]
        if unknown:
            print(f"  note: {unknown:,} {split} characters are unknown to the tokenizer (<|unk|>)")
    print(f"  end-of-text id {data.eot_id}, {data.dtype.name} token files")
    print(f"  files: {data.directory}/ (tokenizer.json, train.bin, validation.bin, meta.json)")
    return 0
