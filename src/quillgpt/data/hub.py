"""Hugging Face hub corpora: ``datasets.load_dataset(name, config)`` with one-line errors."""

from __future__ import annotations

from typing import TYPE_CHECKING

from quillgpt.errors import DataError

if TYPE_CHECKING:
    from datasets import DatasetDict


def load_hub(source: str, config: str | None) -> DatasetDict:
    """Load a Hugging Face hub dataset, turning hub failures into one-line :class:`DataError`s."""
    from datasets import DatasetDict, load_dataset
    from datasets.exceptions import DatasetNotFoundError

    hint = "give the built-in 'shakespeare', a local file or folder, or a hub dataset name"
    try:
        loaded = load_dataset(source, config)
    except DatasetNotFoundError as exc:
        # gated, private and missing datasets all raise this; the library's words say which
        reason = " ".join(str(exc).split()) or "not found on the hub"
        raise DataError(f"unknown dataset {source!r}: {reason}; {hint}") from exc
    except ConnectionError as exc:
        raise DataError(
            f"unknown dataset {source!r}: it is not a local path and the Hugging Face hub "
            f"could not be reached to look it up; {hint}"
        ) from exc
    except (FileNotFoundError, ValueError) as exc:
        raise DataError(f"could not load dataset {source!r}: {exc}") from exc
    if not isinstance(loaded, DatasetDict):
        raise DataError(f"{source!r} is not a dataset with splits; {hint}")
    return loaded
