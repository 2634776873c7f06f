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


def check_names(folder: Path, names: list[str]) -> None:
    """Refuse ``--only`` names that match no benchmark, before any benchmark starts.

    ``run_all.py`` would run the names that match and skip the others without a word.

    Raises:
        QuillError: naming the unknown ones and the choices.
    """
    from quillgpt.errors import QuillError

    known = sorted(p.stem.removeprefix("bench_") for p in folder.glob("bench_*.py"))
    known += ["gpu_check"] if (folder / "gpu_check.py").is_file() else []
    unknown = [n for n in names if n.removeprefix("bench_").removesuffix(".py") not in known]
    if unknown:
        raise QuillError(f"no benchmark named {', '.join(unknown)}; choose from {', '.join(known)}")


def run(args: argparse.Namespace) -> int:
    """Run ``run_all.py`` with the same options; return its exit status."""
    folder = benchmarks_dir()
    if args.only:
        check_names(folder, args.only)
    command = [sys.executable, str(folder / "run_all.py")]
    if args.only:
        command += ["--only", *args.only]
    if args.list:
        command.append("--list")
    return subprocess.run(command).returncode
