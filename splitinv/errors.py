"""The one exception type that splitinv raises for bad user input.

Every message is a single line that says what was wrong and how to fix it; the command-line entry points
print it without a traceback.
"""

from __future__ import annotations


class SplitinvError(ValueError):
    """Bad input: an unknown name, a missing file, a wrong shape, a NaN loss."""
