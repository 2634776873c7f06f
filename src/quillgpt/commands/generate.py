"""``quill generate``: stream text from a trained model.

Examples::

    quill generate runs/shakespeare-char-cpu --prompt "ROMEO:" --max-new-tokens 300
    quill generate runs/shakespeare-char-cpu/best --temperature 0 --prompt-file prompt.txt
    echo "To be" | quill generate runs/shakespeare-bpe-cpu --num-samples 3 --seed 1
    quill generate runs/shakespeare-bpe-cpu --quantize int8      # int8 linear layers, CPU

Text goes to stdout as it is produced; notices and the speed (tokens/s) go to stderr. With no
prompt (and nothing piped in) generation starts from the end-of-text token: a fresh document.
"""

from __future__ import annotations

import argparse
import sys
import time

from quillgpt.commands import add_runtime_arguments

HELP = "stream text from a checkpoint (sampling options, int8, any device)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``quill generate``."""
    from quillgpt.inference.loading import QUANTIZE_CHOICES

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("Examples::", 1)[1].rstrip()
    parser.add_argument(
        "run_dir", help="run or checkpoint directory (model.safetensors, tokenizer.json)"
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--prompt", default=None, help="text to continue (default: stdin or none)")
    source.add_argument("--prompt-file", default=None, help="read the prompt from this file")
    parser.add_argument("--max-new-tokens", type=int, default=200, help="default: 200")
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy (default: 0.8)")
    parser.add_argument(
        "--top-k", type=int, default=None, help="sample among the k most likely tokens"
    )
    parser.add_argument(
        "--top-p", type=float, default=None, help="sample from the smallest set of mass >= p"
    )
    parser.add_argument("--seed", type=int, default=None, help="make sampling reproducible")
    parser.add_argument("--num-samples", type=int, default=1, help="default: 1")
    add_runtime_arguments(parser)
    parser.add_argument("--quantize", default="none", choices=QUANTIZE_CHOICES)
    parser.add_argument(
        "--no-stop",
        action="store_true",
        help="keep going past the end-of-text token (default: stop there)",
    )


def _read_prompt(args: argparse.Namespace) -> str:
    from pathlib import Path

    if args.prompt is not None:
        return args.prompt
    if args.prompt_file is not None:
        from quillgpt.errors import QuillError

        try:
            return Path(args.prompt_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise QuillError(
                f"cannot read --prompt-file {args.prompt_file}: {exc.strerror or exc}"
            ) from exc
        except UnicodeDecodeError as exc:
            raise QuillError(
                f"--prompt-file {args.prompt_file} is not UTF-8 text (byte "
                f"0x{exc.object[exc.start]:02x} at offset {exc.start}); convert it, e.g. "
                "iconv -f latin1 -t utf-8"
            ) from exc
    if not sys.stdin.isatty():
        return sys.stdin.read()
    return ""


def _check(args: argparse.Namespace) -> None:
    from quillgpt.errors import QuillError

    if args.max_new_tokens < 0 or args.num_samples < 1:
        raise QuillError("--max-new-tokens must be >= 0 and --num-samples >= 1")
    if args.temperature < 0:
        raise QuillError("--temperature must be >= 0 (0 is greedy)")
    if args.top_k is not None and args.top_k < 1:
        raise QuillError("--top-k must be >= 1")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise QuillError("--top-p must be in (0, 1]")


def _notice(line: str) -> None:
    """A line on stderr, where notices go."""
    print(f"quill generate: {line}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    """Load the model, generate ``--num-samples`` continuations to stdout; return 0."""
    from quillgpt.inference.loading import encode_prompt, load_for_inference, stream_text
    from quillgpt.threads import thread_policy

    _check(args)
    prompt = _read_prompt(args)
    loaded = load_for_inference(args.run_dir, device=args.device, quantize=args.quantize)
    for note in loaded.notes:
        _notice(note)
    # --threads N fixes the count; without it a CPU decode adapts it to the load, as training does
    threads = thread_policy(args.threads, loaded.device, log=_notice)
    ids, notice = encode_prompt(loaded, prompt)
    if notice:
        _notice(notice)
    out = sys.stdout
    total_tokens, total_seconds = 0, 0.0
    for sample in range(args.num_samples):
        if sample:
            out.write("\n" + "-" * 40 + "\n")
        out.write(prompt)
        out.flush()
        start = last = time.perf_counter()
        count = 0
        for piece, generated in stream_text(
            loaded,
            ids,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            seed=None if args.seed is None else args.seed + sample,
            stop_at_eot=not args.no_stop,
        ):
            now = time.perf_counter()
            if generated > max(count, 1):  # a decode step (the first token's wait is the prefill)
                threads.step_done(now - last)
            last, count = now, generated
            if piece:
                out.write(piece)
                out.flush()
        total_seconds += time.perf_counter() - start
        total_tokens += count
    out.write("\n")
    out.flush()
    rate = total_tokens / total_seconds if total_seconds > 0 else 0.0
    dtype = str(loaded.model.tok_emb.weight.dtype).removeprefix("torch.")
    kind = "int8 linear layers" if loaded.quantized else dtype
    print(
        f"quill generate: {total_tokens} tokens in {total_seconds:.2f}s, {rate:.1f} tokens/s "
        f"({loaded.device.type}, {kind})",
        file=sys.stderr,
    )
    return 0
