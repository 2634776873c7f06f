"""``quill profile``: where time and memory go in a training step, a prefill and decoding.

Examples::

    quill profile --preset gpt2 --batch-size 1 --seq-len 256     # a model shape, random weights
    quill profile runs/shakespeare-char-cpu --quantize int8        # a checkpoint, int8 decoding
    quill profile --preset small --device cuda --out profile/cuda

Writes ``profile.md``, ``profile.json`` and a Chrome trace ``trace.json`` (open it in
https://ui.perfetto.dev) into ``--out``, and prints the Markdown.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys

from quillgpt.commands import add_runtime_arguments

HELP = "profile a training step, prefill and decoding: top operators, memory, trace"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``quill profile``."""
    from quillgpt.config import MODEL_PRESETS
    from quillgpt.device import PRECISION_CHOICES
    from quillgpt.inference.loading import QUANTIZE_CHOICES

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("Examples::", 1)[1].rstrip()
    parser.add_argument(
        "run_dir", nargs="?", default=None, help="checkpoint to profile (default: --preset)"
    )
    parser.add_argument(
        "--preset",
        default="small",
        choices=sorted(MODEL_PRESETS),
        help="model shape with random weights, when no run_dir is given (default: small)",
    )
    parser.add_argument("--batch-size", type=int, default=4, help="default: 4")
    parser.add_argument("--seq-len", type=int, default=None, help="training sequence length")
    parser.add_argument("--prompt-len", type=int, default=64, help="default: 64")
    parser.add_argument("--decode-tokens", type=int, default=32, help="default: 32")
    add_runtime_arguments(parser)
    parser.add_argument(
        "--precision", default="auto", choices=PRECISION_CHOICES, help="of the training step"
    )
    parser.add_argument(
        "--quantize",
        default="none",
        choices=QUANTIZE_CHOICES,
        help="int8: prefill and decode with int8 linear layers (CPU)",
    )
    parser.add_argument(
        "--plain-linear",
        action="store_true",
        help="prefill and decode with the plain forward pass, as generate(fast=False) does",
    )
    parser.add_argument("--no-train", action="store_true", help="skip the training step")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per phase")
    parser.add_argument("--top", type=int, default=12, help="operators per phase")
    parser.add_argument("--out", default="profile", help="output folder (default: profile/)")


def run(args: argparse.Namespace) -> int:
    """Profile, write the three files, print the Markdown; return 0."""
    from pathlib import Path

    from quillgpt import DecoderLM, ModelConfig, load_checkpoint
    from quillgpt.device import resolve_device
    from quillgpt.errors import QuillError
    from quillgpt.inference.quantize import quantize_int8
    from quillgpt.threads import set_threads
    from quillgpt.tools.profile import profile_model
    from quillgpt.tools.profile_report import to_markdown

    set_threads(args.threads)
    sizes = {"--batch-size": args.batch_size, "--seq-len": args.seq_len,
             "--prompt-len": args.prompt_len, "--decode-tokens": args.decode_tokens,
             "--repeats": args.repeats, "--top": args.top}  # fmt: skip
    for flag, value in sizes.items():
        if value is not None and value < 1:
            raise QuillError(f"{flag} must be >= 1, got {value}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():  # found out now, not after minutes of profiling
        raise QuillError(f"--out {out} is a file; choose a folder for the profile")
    device = resolve_device(args.device)
    if args.quantize == "int8" and device.type != "cpu":
        raise QuillError("int8 layers run on the CPU only: add --device cpu")
    if args.run_dir is not None:
        model = load_checkpoint(args.run_dir, device=device)
    else:
        model = DecoderLM(ModelConfig.preset(args.preset)).to(device)
    inference_model = None
    if args.quantize == "int8":
        inference_model = quantize_int8(copy.deepcopy(model))
    report = profile_model(
        model,
        device=device,
        inference_model=inference_model,
        fast=not args.plain_linear,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        prompt_len=args.prompt_len,
        decode_tokens=args.decode_tokens,
        precision=args.precision,
        train=not args.no_train,
        repeats=args.repeats,
        top=args.top,
        trace_path=out / "trace.json",
    )
    markdown = to_markdown(report)
    (out / "profile.md").write_text(markdown, encoding="utf-8")
    (out / "profile.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    sys.stdout.write(markdown)
    print(f"quill profile: wrote {out}/profile.md, profile.json, trace.json", file=sys.stderr)
    return 0
