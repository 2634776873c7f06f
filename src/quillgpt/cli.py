"""The ``quill`` command line: ``quill <verb> [options]``.

The CLI is thin: it parses arguments and calls the library. Every verb lives in its own module
under :mod:`quillgpt.commands`. A user error (:class:`~quillgpt.errors.QuillError`, ``ValueError``
from config validation, an ``OSError`` of the file system, a usage error) prints one line and
exits with status 2, no traceback (docs/errors.md lists them); ``quill --debug <verb>`` (or
``QUILLGPT_DEBUG=1``) shows the whole traceback instead. Options are never abbreviated
(``allow_abbrev=False``): a misspelt option is an error, not another option.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from quillgpt import __version__
from quillgpt.errors import QuillError

DEBUG_ENV = "QUILLGPT_DEBUG"

# verb -> module under quillgpt.commands
VERBS: dict[str, str] = {
    "prepare": "prepare",
    "train": "train",
    "generate": "generate",
    "eval": "eval",
    "profile": "profile",
    "quantize": "quantize",
    "sweep": "sweep",
    "bench": "bench",
    "export-gguf": "export_gguf",
    "export-hf": "export_hf",
    "import-hf": "import_hf",
}


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line, not the usage block and a line.

    A user who misspells a value needs the error and where to look, not thirty lines of usage
    to scroll past; ``--help`` still shows the usage. The exit status stays argparse's 2. The
    verbs' parsers are of this class too (``add_subparsers`` makes them of the parent's).
    """

    def error(self, message: str) -> NoReturn:
        """Print ``<prog>: error: <message>`` (with a hint for a value that starts with '-')."""
        if message.endswith("expected one argument"):  # often a value such as -5m
            message += " (write a value that starts with '-' as --option=-value)"
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """Return the top-level parser with one sub-parser per verb."""
    parser = OneLineParser(
        prog="quill",
        description="quillgpt: train, run and measure small decoder-only language models.",
        allow_abbrev=False,  # `--data X` must not silently mean `--data-dir X`
    )
    parser.add_argument("--version", action="version", version=f"quillgpt {__version__}")
    parser.add_argument(
        "--debug",
        action="store_true",
        help=f"show the full traceback of an error (or set {DEBUG_ENV}=1)",
    )
    sub = parser.add_subparsers(dest="verb", metavar="<verb>")
    for verb, module_name in VERBS.items():
        module = importlib.import_module(f"quillgpt.commands.{module_name}")
        p = sub.add_parser(verb, help=module.HELP, description=module.HELP, allow_abbrev=False)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``quill`` console script; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verb is None:
        parser.print_help()
        return 0
    try:
        return int(args._run(args) or 0)
    except (QuillError, ValueError, OSError) as exc:
        if args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            raise  # the whole traceback: an internal bug can look like a user error
        print(f"quill {args.verb}: error: {_describe(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"quill {args.verb}: interrupted", file=sys.stderr)
        return 130


def _describe(exc: BaseException) -> str:
    """The error's message; an ``OSError`` of the system as "what: which file".

    The file system's own errors (a folder that is a file, a full disk) reach here from
    anywhere; they are the user's to fix, so they get one line too, not a traceback.
    """
    if isinstance(exc, OSError) and exc.strerror and exc.filename:
        return f"{exc.strerror}: {exc.filename}"
    return str(exc)


if __name__ == "__main__":
    sys.exit(main())
