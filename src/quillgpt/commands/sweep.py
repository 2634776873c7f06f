"""``quill sweep``: train a grid of model sizes for the same time budget; table and plots.

Examples::

    quill sweep                                        # 6 sizes, 3 minutes each, docs/sweep/
    quill sweep --grid 2x64,4x256,6x384 --budget 1m --report /tmp/sweep
    quill sweep --budget 5m --train-arg compile=off --train-arg batch_size=16

Each size is a ``quill train`` run (BPE Shakespeare settings, see quillgpt.tools.sweep) into
``--out/L{layers}xC{width}``; finished sizes are reused, so an interrupted sweep picks up where it
stopped. The report folder gets sweep.md, sweep.json, sweep_bpb.png and sweep_curves.png.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

HELP = "train a grid of model sizes for a fixed time each; write a table and plots"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``quill sweep``."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("Examples::", 1)[1].rstrip()
    parser.add_argument(
        "--grid",
        default="2x64,2x128,4x192,4x256,6x384,6x512",
        help="sizes as LAYERSxWIDTH, comma-separated (default: 6 sizes, ~0.2M to ~20M)",
    )
    parser.add_argument("--budget", default="3m", help="training time per size (default: 3m)")
    parser.add_argument("--out", default="runs/sweep", help="run directories (default: runs/sweep)")
    parser.add_argument(
        "--report", default="docs/sweep", help="where the table and plots go (default: docs/sweep)"
    )
    parser.add_argument(
        "--train-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra `quill train` option for every run, e.g. compile=off (repeatable)",
    )
    parser.add_argument("--fresh", action="store_true", help="retrain sizes that already finished")


class RaisingParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` that raises :class:`~quillgpt.errors.QuillError` on a usage error.

    For checking a command line that another process will run, instead of exiting.
    """

    def error(self, message: str) -> NoReturn:
        """Raise the usage error as a one-line :class:`~quillgpt.errors.QuillError`."""
        from quillgpt.errors import QuillError

        raise QuillError(f"{self.prog}: {message}")


def check_train_options(
    grid: list[tuple[int, int]], budget: str, out: Path, extra: list[str]
) -> None:
    """Check every size's ``quill train`` options as that verb would, before any run starts.

    Each run is a ``quill train`` process; without this, a misspelt ``--train-arg`` would be
    found only when the first run fails, and reported as that run's failure.

    Raises:
        QuillError: the option or value ``quill train`` would refuse, in one line.
    """
    from quillgpt.commands import train as train_verb
    from quillgpt.errors import ConfigError, QuillError
    from quillgpt.tools.sweep import train_command
    from quillgpt.training.config import build_configs

    parser = RaisingParser(prog="quill train (--train-arg)", allow_abbrev=False)
    train_verb.add_arguments(parser)
    for layers, width in grid:
        command = train_command(layers, width, budget, out / f"L{layers}xC{width}", extra)
        args = parser.parse_args(command[command.index("train") + 1 :])
        model, train, model_text, train_text, source = train_verb.merged_sections(args)
        try:
            build_configs(model, train, source=source, model_text=model_text, train_text=train_text)
        except ConfigError as exc:
            raise QuillError(f"--train-arg: {exc}") from exc


def run(args: argparse.Namespace) -> int:
    """Run the sweep, write the report, print the table; return 0."""
    from quillgpt.errors import QuillError
    from quillgpt.tools.sweep import markdown, parse_grid, run_sweep, write_report
    from quillgpt.training.config import parse_duration

    grid = parse_grid(args.grid)
    try:
        parse_duration(args.budget)  # fail early on a bad duration
    except ValueError as exc:
        raise QuillError(
            "--budget must be a positive duration like 3m, 1h30m, 90s or a number of seconds, "
            f"got {args.budget!r}"
        ) from exc
    extra: list[str] = []
    for item in args.train_arg:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise QuillError(f"--train-arg needs KEY=VALUE, got {item!r}")
        extra.append(f"--{key.removeprefix('--')}={value}")  # one word: a value may start with -
    for flag, folder in (("--out", Path(args.out)), ("--report", Path(args.report))):
        if folder.exists() and not folder.is_dir():
            raise QuillError(f"{flag} {folder} is a file; choose a folder")
    check_train_options(grid, args.budget, Path(args.out), extra)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    reuse = not args.fresh
    rows = run_sweep(grid, budget=args.budget, out_dir=args.out, extra=extra, reuse=reuse, log=log)
    paths = write_report(rows, args.report, args.budget)
    sys.stdout.write(markdown(rows, args.budget))
    log("sweep: wrote " + ", ".join(str(p) for p in paths))
    return 0
