"""Command-line options made from config dataclasses: one ``--name`` per field, help from its doc.

``quill train`` makes its options from ``ModelConfig`` and ``TrainConfig``, ``quill prepare``
from :class:`~quillgpt.data.DataOptions` (the first fields of ``TrainConfig``), so the two verbs
share the data options' names, defaults, help and checks.
"""

from __future__ import annotations

import argparse
import typing
from collections.abc import Collection, Mapping
from typing import Any, Literal


def add_config_options(
    group: argparse._ArgumentGroup,
    cls: type,
    skip: tuple[str, ...] = (),
    aliases: Mapping[str, tuple[str, ...]] | None = None,
) -> None:
    """One ``--name`` (and ``--dashed-name``) option per field of config dataclass ``cls``.

    The help is the field's docstring; ``aliases`` adds other spellings of a field's option.
    Values stay text here: :func:`~quillgpt.config.load_dataclass` converts and checks them with
    the same rules as a config file's.
    """
    from quillgpt.config import field_doc

    for name, info in cls.__pydantic_fields__.items():  # type: ignore[attr-defined]
        if name in skip:
            continue
        flags = [f"--{name}", f"--{name.replace('_', '-')}"] if "_" in name else [f"--{name}"]
        flags += (aliases or {}).get(name, ())
        text = " ".join(field_doc(cls, name).replace("``", "").split())
        default = "none" if info.default is None else info.default
        kwargs: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS}
        kwargs["help"] = f"{text} (default: {default})".replace("%", "%%")
        if typing.get_origin(info.annotation) is Literal:
            kwargs["choices"] = typing.get_args(info.annotation)
        elif info.annotation is bool:  # --flag alone means true
            kwargs.update(nargs="?", const=True, metavar="BOOL")
        group.add_argument(*flags, **kwargs)


def refuse_unused_vocab(tokenizer: str, given: Collection[str]) -> None:
    """Refuse a vocabulary size typed on the command line for a tokenizer that has its own.

    Only a typed value is refused: a config file's is ignored instead, so that ``--tokenizer
    char`` can override a BPE preset without also unsetting its size.

    Raises:
        QuillError: naming the option and the tokenizer.
    """
    from quillgpt.errors import QuillError

    if "tokenizer_vocab" in given and tokenizer != "bpe":
        raise QuillError(
            f"--tokenizer_vocab applies to --tokenizer bpe only, not to {tokenizer} (it brings "
            "its own vocabulary); drop it"
        )
