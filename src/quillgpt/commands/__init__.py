"""One module per ``quill`` verb.

Each module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``, and
imports heavy libraries (torch, datasets) inside ``run`` so that ``quill --help`` stays fast.
"""
