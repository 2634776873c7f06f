"""Exceptions that mean "the user asked for something impossible", as opposed to a bug.

The CLI prints these as one line (no traceback) and exits with status 2; library users can catch
them. Each message says what is wrong and what to do about it.
"""


class QuillError(Exception):
    """Base class of user-facing errors: bad input, missing files, impossible requests."""


class CheckpointError(QuillError):
    """A checkpoint is missing, truncated, corrupt, or does not match what it is loaded into."""


class DataError(QuillError):
    """A corpus, tokenizer or token file cannot be used as asked."""


class ConfigError(QuillError, ValueError):
    """A configuration value has the wrong type or an impossible value, or a key is unknown.

    Also a ``ValueError``, as a bad argument to a constructor is in Python.
    """
