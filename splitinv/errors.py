"""The one exception type that splitinv raises for bad user input, and how problems reach the console.

Every message is a single line that says what was wrong and how to fix it; the command-line entry points
print it without a traceback, and show warnings one line each (:func:`one_line_warnings`).
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from typing import Any


class SplitinvError(ValueError):
    """Bad input: an unknown name, a missing file, a wrong shape, a NaN loss."""


class ResultsExist(SplitinvError):
    """A job folder already holds finished results of a different config: refused, the folder untouched."""


def os_error_line(err: OSError) -> str:
    """One line for a failed file operation: what, where, and what to do (a read-only folder, a full disk)."""
    import errno

    where = err.filename or "a file"
    advice = {
        errno.ENOSPC: "the disk is full: free space or write elsewhere",
        errno.EDQUOT: "the disk quota is exceeded: free space or write elsewhere",
        errno.EACCES: "no permission: choose a writable folder",
        errno.EPERM: "not permitted: choose a writable folder",
        errno.EROFS: "the file system is read-only: choose a writable folder",
        errno.ENOTDIR: "a part of the path is a file, not a folder: fix the path",
        errno.EISDIR: "it is a folder, not a file: name a file",
        errno.ENOENT: "it does not exist: check the path",
    }.get(err.errno or -1, "check the path and the disk")
    return f"cannot use {where} ({err.strerror or type(err).__name__}): {advice}."


_SPLITINV_DIR = os.path.dirname(os.path.abspath(__file__))


def one_line_warnings(command: str) -> None:
    """Show every warning as one line on stderr, prefixed by the command.

    Python's default adds the warning's file, line and the source line it points at (for a warning raised
    through Hydra's instantiate, ``result = _target_(*args, **kwargs)``), which tells a user nothing. A
    warning of splitinv's own reads ``splitinv-run: warning: <message>``; another library's keeps its
    category and where it came from, still on one line."""

    def show(
        message: Any, category: type, filename: str, lineno: int, file: Any = None, line: Any = None
    ) -> None:
        text = " ".join(str(message).split())
        # splitinv's warnings about objects built from config point into Hydra's instantiate
        if not str(filename).startswith(_SPLITINV_DIR) and "hydra" not in str(filename):
            text = f"{category.__name__}: {text} ({os.path.basename(filename)}:{lineno})"
        stream = file if file is not None else sys.stderr
        with contextlib.suppress(OSError, ValueError):  # a closed stream must not turn a warning into a crash
            print(f"{command}: warning: {text}", file=stream, flush=True)

    warnings.showwarning = show
