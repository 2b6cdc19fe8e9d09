"""The one exception type that splitinv raises for bad user input.

Every message is a single line that says what was wrong and how to fix it; the command-line entry points
print it without a traceback.
"""

from __future__ import annotations


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
