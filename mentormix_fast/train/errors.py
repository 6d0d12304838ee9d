"""Errors in the user's data: a file, a line or a flag that the training program cannot use.

The command lines print them as one line (exit code 2) instead of a traceback. They subclass the
built-in errors a caller of the functions would expect (``ValueError``, ``FileNotFoundError``).
"""

from __future__ import annotations


class DataError(ValueError):
    """Unusable input data; the message names the file and line (``FILE:LINE: ...``) or the flag."""


class DataFileNotFoundError(DataError, FileNotFoundError):
    """A file or folder that the flags or a list file name does not exist."""
