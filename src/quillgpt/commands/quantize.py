"""``quill quantize``: write an int8 copy of a checkpoint (dynamic quantization, no pickle).

Examples::

    quill quantize runs/shakespeare-bpe-cpu runs/shakespeare-bpe-cpu-int8
    quill quantize runs/shakespeare-bpe-cpu/best out/int8 --keep-head-fp32
    quill generate runs/shakespeare-bpe-cpu-int8 --prompt "ROMEO:"

Linear layers get int8 weights with one fp32 scale per output row; activations are quantized on
the fly at run time. The output directory is a normal checkpoint directory (safetensors + JSON +
tokenizer) that ``quill generate`` and ``quill eval`` load as int8 on the CPU.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "quantize a checkpoint's linear layers to int8 (dynamic) and save it, pickle-free"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``quill quantize``."""
    from quillgpt.inference.quantized_linear import BACKENDS, DEFAULT_BACKEND

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("Examples::", 1)[1].rstrip()
    parser.add_argument("run_dir", help="fp32 checkpoint directory")
    parser.add_argument("out_dir", help="where to write the int8 checkpoint")
    parser.add_argument(
        "--backend",
        default=DEFAULT_BACKEND,
        choices=BACKENDS,
        help=f"int8 kernels to run with (default: {DEFAULT_BACKEND}; see docs/performance.md)",
    )
    parser.add_argument(
        "--keep-head-fp32",
        action="store_true",
        help="leave the output head in fp32 (larger file, sometimes a little more accurate)",
    )


def check_out_dir(out: Path) -> None:
    """Refuse an ``out_dir`` whose files would be replaced, unless they are an int8 copy.

    Quantizing again into the folder of an earlier int8 copy (another backend, say) replaces
    it, as asked; any other folder with files in it (a training run, another program's) is
    kept as it is.

    Raises:
        QuillError: saying what is there and what to choose instead.
    """
    from quillgpt.errors import CheckpointError, QuillError
    from quillgpt.inference.quantized_checkpoint import is_quantized_checkpoint

    if not out.exists():
        return
    if not out.is_dir():
        raise QuillError(f"out_dir {out} is a file; choose a folder for the int8 checkpoint")
    if not any(out.iterdir()):
        return
    try:
        if is_quantized_checkpoint(out):
            return
    except CheckpointError:
        pass  # no config.json, or not ours: another program's folder
    raise QuillError(
        f"out_dir {out} already holds files that are not an int8 checkpoint, and they would "
        "be overwritten; choose a new or empty folder"
    )


def run(args: argparse.Namespace) -> int:
    """Quantize and save; print the sizes; return 0."""
    from quillgpt import load_checkpoint
    from quillgpt.checkpoint import TOKENIZER_FILE, read_config
    from quillgpt.errors import QuillError
    from quillgpt.inference.loading import load_tokenizer_checked
    from quillgpt.inference.quantize import linear_weight_bytes, quantize_int8
    from quillgpt.inference.quantized_checkpoint import is_quantized_checkpoint, save_quantized

    source, out = Path(args.run_dir), Path(args.out_dir)
    if source.resolve() == out.resolve():
        raise QuillError("out_dir must differ from run_dir: the fp32 checkpoint is kept")
    if is_quantized_checkpoint(source):
        raise QuillError(f"{source} is already int8; quantize its fp32 checkpoint instead")
    check_out_dir(out)
    model = load_checkpoint(source)
    document = read_config(source)
    tokenizer = source / TOKENIZER_FILE
    has_tokenizer = tokenizer.is_file()
    if has_tokenizer:  # the copy must be the model's own, or the int8 checkpoint is unusable
        load_tokenizer_checked(source, document, model.config.vocab_size)
    fp32 = linear_weight_bytes(model)
    quantize_int8(model, backend=args.backend, include_head=not args.keep_head_fp32)
    int8 = linear_weight_bytes(model)
    layers = model.quantization["layers"]
    extra = {k: v for k, v in document.items() if k != "model"}
    save_quantized(model, out, tokenizer=tokenizer if has_tokenizer else None, extra_config=extra)
    before = sum(fp32[name] for name in layers)
    after = sum(int8[name] for name in layers)
    print(
        f"quantized {len(layers)} linear layers ({args.backend}, engine "
        f"{model.quantization['engine']}): {before / 2**20:.1f} MiB fp32 -> "
        f"{after / 2**20:.1f} MiB int8 ({100 * after / before:.1f}%); wrote {out}"
    )
    if not has_tokenizer:
        print(f"quill quantize: warning: {source} has no {TOKENIZER_FILE}", file=sys.stderr)
    return 0
