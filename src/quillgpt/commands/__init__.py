"""One module per ``quill`` verb.

Each module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``, and
imports heavy libraries (torch, datasets) inside ``run`` so that ``quill --help`` stays fast.
"""

from __future__ import annotations

import argparse


def check_device_argument(name: str) -> str:
    """``type=`` of ``--device``: refuse a malformed name in one line, before torch sees it."""
    from quillgpt.training.config import check_device_name

    try:
        return check_device_name(name)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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
        type=check_device_argument,
        help=f"{'|'.join(DEVICE_CHOICES)}, or cuda:N / xpu:N (default: auto)",
    )
