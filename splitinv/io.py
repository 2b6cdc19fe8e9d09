"""Reading and writing torch files safely: atomic saves, and weights loads that fail in one line."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from splitinv.errors import SplitinvError


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file in the same folder, renamed into place: never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def load_weights(path: str | os.PathLike, what: str, hint: str = "") -> dict[str, Any]:
    """A dict from a local weights file, loaded with ``weights_only=True``, or a one-line SplitinvError.

    ``what`` names the file in messages ("victim", "DCGAN"); ``hint`` ends the missing-file message.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise SplitinvError(f"{what} weights file {path} does not exist{': ' + hint if hint else '.'}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise SplitinvError(
            f"cannot load {what} weights {path} safely ({type(err).__name__}): splitinv loads only plain "
            "state_dicts and its own checkpoints (torch.load weights_only=True)."
        ) from err
    if not isinstance(obj, dict):
        raise SplitinvError(f"{what} weights file {path} holds a {type(obj).__name__}, not a state_dict.")
    return obj
