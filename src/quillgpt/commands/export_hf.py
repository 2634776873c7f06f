"""``quill export-hf``: write a run's model and tokenizer as a ``transformers`` directory.

Examples::

    quill export-hf runs/demo hf/demo
    python -c "import transformers; print(transformers.pipeline('text-generation', 'hf/demo')('A'))"
"""

from __future__ import annotations

import argparse

HELP = "write a run as a transformers directory (GPT-2, GPT-NeoX or Arcee) with its tokenizer"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the two directories."""
    parser.add_argument("run_dir", help="a quillgpt run or checkpoint directory (e.g. runs/demo)")
    parser.add_argument("out_dir", help="directory to write (must not exist, or be empty)")


def run(args: argparse.Namespace) -> int:
    """Export, say which architecture was written, return 0."""
    from quillgpt.checkpoint import check_new_directory
    from quillgpt.inference.loading import load_for_export
    from quillgpt.interop.hf import hf_architecture, to_hf

    check_new_directory(args.out_dir)
    model, tokenizer = load_for_export(args.run_dir, check=hf_architecture)
    out = to_hf(model, args.out_dir, tokenizer)
    arch = hf_architecture(model.config)
    print(
        f"wrote {out}/ as a transformers {arch} model with its tokenizer; load it with "
        f"AutoModelForCausalLM.from_pretrained({str(out)!r})"
    )
    return 0
