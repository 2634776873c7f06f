"""``quill prepare``: build or reuse a corpus, tokenizer and token files, and say what was built.

Examples::

    quill prepare                                   # built-in Shakespeare, BPE 4096
    quill prepare --tokenizer char
    quill prepare path/to/texts/ --tokenizer bpe --vocab-size 8192
    quill prepare roneneldan/TinyStories --text-column text
    quill prepare --tokenizer gpt2/tokenizer.json   # an existing tokenizer file
"""

from __future__ import annotations

import argparse
import os
import time

HELP = "load a corpus, train or load a tokenizer, and write cached token files"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``quill prepare``."""
    parser.add_argument(
        "source",
        nargs="?",
        default="shakespeare",
        help="'shakespeare' (built in, default), a .txt/.jsonl/.json/.parquet file or folder, "
        "a folder written by save_to_disk, or a Hugging Face hub dataset name",
    )
    parser.add_argument("--config", default=None, help="hub dataset configuration name")
    parser.add_argument("--split", default="train", help="split to train on (default: train)")
    parser.add_argument(
        "--val-split",
        default=None,
        help="split to validate on (default: 'validation' if present, else carved out of --split)",
    )
    parser.add_argument("--text-column", default="text", help="column with the text")
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="share of characters held out, by whole documents, when carving (default: 0.1)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the held-out choice")
    parser.add_argument(
        "--tokenizer",
        default="bpe",
        help="'bpe' (byte-level BPE trained on the corpus, default), 'char', or a tokenizer.json",
    )
    parser.add_argument(
        "--vocab-size", type=int, default=None, help="BPE vocabulary size (default: 4096)"
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        help="where data is cached (default: $QUILLGPT_DATA_DIR, else ./data)",
    )
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
    from quillgpt.data import SPLITS, CorpusSpec, make_eval_loader, prepare_data
    from quillgpt.errors import QuillError

    if args.block_size is not None and args.block_size < 1:  # before minutes of preparing
        raise QuillError(f"--block-size must be >= 1, got {args.block_size}")
    start = time.perf_counter()
    spec = CorpusSpec(
        source=args.source,
        config=args.config,
        split=args.split,
        val_split=args.val_split,
        text_column=args.text_column,
        val_fraction=args.val_fraction,
        seed=args.seed,
    )
    data = prepare_data(
        spec,
        tokenizer=args.tokenizer,
        vocab_size=args.vocab_size,
        data_dir=args.data_dir,
        num_proc=args.num_proc,
        force=args.force,
    )
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
    print(f"{args.source}: {tok_name} tokenizer, vocab {data.vocab_size}; {how}")
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
