"""One module per ``quill`` verb.

Each module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``, and
imports heavy libraries (torch, datasets) inside ``run`` so that ``quill --help`` stays fast.
"""

from __future__ import annotations

import argparse


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--threads`` and ``--device``, shared by the verbs that run a model."""
    from quillgpt.device import DEVICE_CHOICES

    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads (default: one per core; use fewer when other jobs keep cores busy)",
    )
    parser.add_argument(
        "--device",
        default="auto",
        help=f"{'|'.join(DEVICE_CHOICES)}, or cuda:N / xpu:N (default: auto)",
    )
