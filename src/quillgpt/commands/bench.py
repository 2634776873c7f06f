"""``quill bench``: run the benchmark scripts of a source checkout (``benchmarks/run_all.py``).

Examples::

    quill bench --list
    quill bench --only decode quantize

Each script prints a Markdown table and writes ``benchmarks/results/<name>.json``. Timings are
only meaningful on an otherwise idle machine; on a shared one, hold a lock around the run.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HELP = "run the speed/memory/quality benchmarks (source checkout only)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``quill bench``."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("Examples::", 1)[1].rstrip()
    parser.add_argument("--only", nargs="+", default=None, help="names, e.g. decode quantize")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")


def benchmarks_dir() -> Path:
    """The ``benchmarks/`` folder next to ``src/`` in a source checkout."""
    from quillgpt.errors import QuillError

    folder = Path(__file__).resolve().parents[3] / "benchmarks"
    if not (folder / "run_all.py").is_file():
        raise QuillError(
            "the benchmarks are part of the source checkout, not of the installed package: "
            "clone the repository and run `make bench`"
        )
    return folder


def run(args: argparse.Namespace) -> int:
    """Run ``run_all.py`` with the same options; return its exit status."""
    command = [sys.executable, str(benchmarks_dir() / "run_all.py")]
    if args.only:
        command += ["--only", *args.only]
    if args.list:
        command.append("--list")
    return subprocess.run(command).returncode
