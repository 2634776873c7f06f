"""``quill export-gguf``: write a run as one GGUF file for llama.cpp, ollama and LM Studio.

Examples::

    quill export-gguf runs/shakespeare-bpe-cpu shakespeare.gguf             # f16
    quill export-gguf runs/shakespeare-bpe-cpu/best shakespeare-q8.gguf --type q8_0
    llama-completion -m shakespeare.gguf -no-cnv -p "ROMEO:" -n 100 --temp 0    # greedy

The file holds the weights (as llama.cpp's gpt2, gptneox or arcee architecture, whichever
computes what the model computes) and the tokenizer. docs/interop.md lists the mapping, the
measured agreement with quillgpt for each type, and how to run the file in ollama.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "write a checkpoint as a GGUF file for llama.cpp, ollama, LM Studio (f32, f16, q8_0)"

GGUF_MAGIC = b"GGUF"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``quill export-gguf``."""
    from quillgpt.interop.gguf import DEFAULT_FILE_TYPE, FILE_TYPES

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("Examples::", 1)[1].rstrip()
    parser.add_argument(
        "run_dir", help="run or checkpoint directory (model.safetensors, tokenizer.json)"
    )
    parser.add_argument("out", help="the GGUF file to write (e.g. model.gguf)")
    parser.add_argument(
        "--type",
        default=DEFAULT_FILE_TYPE,
        choices=FILE_TYPES,
        help=f"how the matrices are stored (default: {DEFAULT_FILE_TYPE}: half of f32's size, the "
        "same greedy tokens; q8_0: a quarter, logits off by up to ~0.3; docs/interop.md)",
    )


def check_paths(source: Path, out: Path) -> None:
    """Refuse a ``run_dir`` that is not a folder and an ``out`` that cannot be replaced.

    An existing GGUF file at ``out`` is replaced, as asked; any other file (a checkpoint's own
    weights, say) is kept.

    Raises:
        QuillError: saying what is wrong and what to give instead.
    """
    from quillgpt.errors import QuillError

    if not source.is_dir():
        what = "is a file" if source.exists() else "does not exist"
        raise QuillError(
            f"run_dir {source} {what}; give a quillgpt run or checkpoint directory (the "
            "out_dir of quill train, or its best/)"
        )
    if out.is_dir():
        raise QuillError(f"{out} is a folder; give the name of the file to write, e.g. model.gguf")
    if not out.parent.is_dir():
        raise QuillError(f"the folder {out.parent} does not exist; create it or write elsewhere")
    if out.exists():
        with open(out, "rb") as f:
            if f.read(len(GGUF_MAGIC)) != GGUF_MAGIC:
                raise QuillError(
                    f"{out} exists and is not a GGUF file; it would be overwritten, so choose "
                    "another name"
                )


def run(args: argparse.Namespace) -> int:
    """Check, load and write the GGUF file; print what was written; return 0."""
    from quillgpt.inference.loading import load_for_export
    from quillgpt.interop.gguf import gguf_architecture, write_gguf

    source, out = Path(args.run_dir), Path(args.out)
    check_paths(source, out)
    model, tokenizer = load_for_export(source, check=gguf_architecture)
    name = (source.resolve().parent if source.resolve().name == "best" else source.resolve()).name
    result = write_gguf(model, tokenizer, out, file_type=args.type, name=name)
    for note in result.notes:
        print(f"quill export-gguf: note: {note}", file=sys.stderr)
    size = out.stat().st_size / 2**20
    print(
        f"wrote {out}: llama.cpp architecture {result.arch}, {result.file_type}, "
        f"{size:.1f} MiB, {len(result.tensor_types)} tensors"
    )
    return 0
