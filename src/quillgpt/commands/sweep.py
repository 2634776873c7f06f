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


def run(args: argparse.Namespace) -> int:
    """Run the sweep, write the report, print the table; return 0."""
    from quillgpt.errors import QuillError
    from quillgpt.tools.sweep import markdown, parse_grid, run_sweep, write_report
    from quillgpt.training.config import parse_duration

    grid = parse_grid(args.grid)
    parse_duration(args.budget)  # fail early on a bad duration
    extra: list[str] = []
    for item in args.train_arg:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise QuillError(f"--train-arg needs KEY=VALUE, got {item!r}")
        extra += [f"--{key.removeprefix('--')}", value]

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    reuse = not args.fresh
    rows = run_sweep(grid, budget=args.budget, out_dir=args.out, extra=extra, reuse=reuse, log=log)
    paths = write_report(rows, args.report, args.budget)
    sys.stdout.write(markdown(rows, args.budget))
    log("sweep: wrote " + ", ".join(str(p) for p in paths))
    return 0
