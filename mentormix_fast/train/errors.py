"""Errors in the user's data: a file, a line or a flag that the training program cannot use.

The command lines print them as one line (exit code 2) instead of a traceback. They subclass the
built-in errors a caller of the functions would expect (``ValueError``, ``FileNotFoundError``).
"""

from __future__ import annotations


class DataError(ValueError):
    """Unusable input data; the message names the file and line (``FILE:LINE: ...``) or the flag."""


class DataFileNotFoundError(DataError, FileNotFoundError):
    """A file or folder that the flags or a list file name does not exist."""


def weights_only_reason(err: BaseException) -> str:
    """What ``torch.load(weights_only=True)`` refused, from its error (the offending global, or the
    first line), without torch's advice about ``weights_only=False``."""
    for line in str(err).splitlines():
        if "Unsupported global:" in line:
            return line[line.index("Unsupported global:"):].split(" was not an allowed global")[0].strip()
        if "Can only build" in line and "but got " in line:
            return f"it builds {line.split('but got ')[1].strip()}"
        if line.strip() and "Weights only load failed" not in line and "weights_only" not in line:
            return line.strip()
    return type(err).__name__
