"""``quill eval``: validation loss, perplexity and bits per byte of a checkpoint.

Examples::

    quill eval runs/shakespeare-char-cpu                   # the data it was trained on
    quill eval runs/shakespeare-char-cpu/best --quantize int8
    quill eval runs/shakespeare-bpe-cpu --dataset path/to/texts/ --max-batches 50 --json
    quill eval runs/mine --dataset stories.jsonl --text-column story --val-fraction 0.2
    quill eval runs/mine --dataset user/corpus --data-config en --val-split test

Every token of the split but the first is predicted once, with up to ``block_size`` tokens of
context (consecutive windows). Bits per byte divides the total loss by the UTF-8 bytes of the
text, so models with different tokenizers compare on it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from quillgpt.commands import add_runtime_arguments

HELP = "validation loss, perplexity and bits per byte of a checkpoint (fp32 or int8)"

NOT_CORPUS = ("data", "split", "tokenizer", "tokenizer_vocab", "data_dir")
"""Data options ``quill eval`` does not take: ``--dataset`` names the corpus, ``--split`` the
prepared split to evaluate, ``--data-dir`` the cache, and the tokenizer is the checkpoint's."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``quill eval``."""
    from quillgpt.inference.loading import QUANTIZE_CHOICES

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("Examples::", 1)[1].rstrip()
    parser.add_argument("run_dir", help="run or checkpoint directory")
    parser.add_argument(
        "--dataset",
        default=None,
        help="corpus to evaluate on, as for `quill prepare` (default: the training data)",
    )
    parser.add_argument("--split", default="validation", choices=("validation", "train"))
    parser.add_argument(
        "--data-dir", default=None, help="data cache for --dataset (default: as quill prepare)"
    )
    from quillgpt.commands.options import add_config_options
    from quillgpt.data import DataOptions

    group = parser.add_argument_group("how --dataset is read and split (as for quill prepare)")
    add_config_options(group, DataOptions, skip=NOT_CORPUS)
    parser.add_argument("--batch-size", type=int, default=8, help="windows per batch (default 8)")
    parser.add_argument(
        "--max-batches", type=int, default=None, help="stop after this many batches (default: all)"
    )
    add_runtime_arguments(parser)
    parser.add_argument("--quantize", default="none", choices=QUANTIZE_CHOICES)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")


def run(args: argparse.Namespace) -> int:
    """Evaluate and print the figures; return 0."""
    from quillgpt.config import load_dataclass
    from quillgpt.data import DATA_FIELDS, DataOptions
    from quillgpt.errors import QuillError
    from quillgpt.inference.loading import evaluate_loaded, load_for_inference, open_eval_data
    from quillgpt.threads import set_threads

    set_threads(args.threads)
    if args.batch_size < 1 or (args.max_batches is not None and args.max_batches < 1):
        raise QuillError("--batch-size and --max-batches must be >= 1")
    given = {k: v for k, v in vars(args).items() if k in DATA_FIELDS and k not in NOT_CORPUS}
    if given and args.dataset is None:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise QuillError(
            f"options for --dataset only: {flags}; without --dataset the training data is "
            "evaluated as it was prepared"
        )
    corpus = None  # the training data, as recorded
    if args.dataset is not None:  # checked with the same rules as quill prepare's options
        options = load_dataclass(DataOptions, {}, text={"data": args.dataset, **given})
        corpus = options.corpus_spec()
    loaded = load_for_inference(args.run_dir, device=args.device, quantize=args.quantize)
    for note in loaded.notes:
        print(f"quill eval: {note}", file=sys.stderr)
    data = open_eval_data(loaded, corpus, args.data_dir)
    start = time.perf_counter()
    result = evaluate_loaded(
        loaded, data, split=args.split, batch_size=args.batch_size, max_batches=args.max_batches
    )
    seconds = time.perf_counter() - start
    record = {
        "checkpoint": str(loaded.path),
        "data": str(data.directory),
        "split": args.split,
        "quantized": "int8" if loaded.quantized else None,
        "device": loaded.device.type,
        "loss": result.loss,
        "perplexity": result.perplexity,
        "bpb": result.bpb,
        "targets": result.targets,
        "seconds": seconds,
    }
    if args.json:
        print(json.dumps(record))
        return 0
    weights = "int8" if loaded.quantized else "fp32"
    print(f"checkpoint   {loaded.path} ({weights}, {loaded.device.type})")
    print(f"data         {data.directory} [{args.split}]")
    print(f"loss         {result.loss:.4f} nats/token")
    print(f"perplexity   {result.perplexity:.3f}")
    print(f"bits/byte    {result.bpb:.4f}")
    print(f"targets      {result.targets:,} tokens in {seconds:.1f}s")
    return 0
