"""``quill import-hf``: turn a ``transformers`` directory into a quillgpt checkpoint directory.

Examples::

    quill import-hf hf/gpt2 runs/gpt2            # a save_pretrained directory
    quill generate runs/gpt2 --prompt "Hello"

GPT-2, GPT-NeoX (sequential residuals, full rotary) and Arcee models import; the directory needs
a fast tokenizer (``tokenizer.json``). To train further, use ``quill train --init_from DIR``.
"""

from __future__ import annotations

import argparse

HELP = "turn a transformers GPT-2 / GPT-NeoX / Arcee directory into a quillgpt checkpoint"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the two directories."""
    parser.add_argument(
        "hf_dir", help="a save_pretrained directory (with network access, also a hub name)"
    )
    parser.add_argument(
        "out_run", help="checkpoint directory to write (must not exist, or be empty)"
    )


def run(args: argparse.Namespace) -> int:
    """Import, print the model's shape, return 0."""
    from quillgpt.checkpoint import check_new_directory, save_checkpoint, write_new_directory
    from quillgpt.errors import QuillError
    from quillgpt.interop.hf import from_hf, hf_snapshot, load_hf_tokenizer

    out = check_new_directory(args.out_run)  # before loading gigabytes
    source = hf_snapshot(args.hf_dir)
    tokenizer = load_hf_tokenizer(source)
    model = from_hf(source)
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    if size > model.config.vocab_size:
        raise QuillError(
            f"{source}/tokenizer.json has {size} tokens but the model only "
            f"{model.config.vocab_size}: they do not belong together"
        )
    imported = {"imported_from": str(args.hf_dir)}
    write_new_directory(
        out, lambda tmp: save_checkpoint(model, tmp, tokenizer, extra_config=imported)
    )
    cfg = model.config
    print(
        f"wrote {out}/: {cfg.n_layer} layers x {cfg.n_embd}, {cfg.n_head} heads, vocabulary "
        f"{cfg.vocab_size}, {cfg.pos_encoding} positions, {cfg.norm}, {cfg.activation}; "
        f"try: quill generate {out} --prompt 'Hello'"
    )
    return 0
