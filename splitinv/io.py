"""Reading and writing torch files safely: atomic saves with content checksums, and loads that verify them
and fail in one line.

Every dict splitinv writes with :func:`save_atomic` carries a sha256 of each of its tensors (dtype, shape,
bytes) under :data:`CHECKSUM_KEY`; :func:`load_file`, the one function that reads such files back,
recomputes them, so a file with a few changed bytes (which ``torch.load(weights_only=True)`` accepts: values
of 1e36 appear) is refused; a splitinv file (a ``format`` of ``splitinv-...``) without them is warned about. A
tensor removed after saving is left to the reader's own key checks. Tensors without a checksum (a user's
plain state_dict, torchvision or timm weights, a tensor added by hand) must be finite and free of magnitude
outliers (:func:`_outlier`).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import tempfile
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from splitinv.errors import SplitinvError

CHECKSUM_KEY = "splitinv_sha256"


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] as uint8 on the CPU (rounded, clamped): how splitinv stores images it keeps or writes,
    a quarter of their float32 size."""
    return (images.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)


def to_pil(image: torch.Tensor) -> Any:
    """One uint8 (C, H, W) image (:func:`to_uint8`) as a PIL image: one channel as greyscale, three as RGB."""
    from PIL import Image

    pixels = image.permute(1, 2, 0).numpy()
    return Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)


def _tensors(obj: Any, path: tuple = ()) -> Iterator[tuple[tuple, torch.Tensor]]:
    """Every tensor inside ``obj`` (nested dicts, lists, tuples) with its path of keys."""
    if isinstance(obj, torch.Tensor):
        yield path, obj
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            if path or k != CHECKSUM_KEY:
                yield from _tensors(v, (*path, k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, (*path, i))


def _key(path: tuple) -> str:
    return json.dumps(list(path), default=str)


def _digest(t: torch.Tensor) -> str:
    """sha256 of a tensor's dtype, shape and bytes."""
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    h = hashlib.sha256(f"{flat.dtype}{tuple(t.shape)}".encode())
    if flat.numel():
        h.update(flat.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def checksums(obj: Any) -> dict[str, str]:
    """One sha256 per tensor in ``obj``, keyed by its path (a JSON list of keys)."""
    return {_key(path): _digest(t) for path, t in _tensors(obj)}


def _without_checksum(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``obj`` without :data:`CHECKSUM_KEY`; a state_dict stays one (its ``_metadata`` kept)."""
    out = {k: v for k, v in obj.items() if k != CHECKSUM_KEY}
    metadata = getattr(obj, "_metadata", None)
    if metadata is None:
        return out
    out = OrderedDict(out)
    out._metadata = metadata  # type: ignore[attr-defined]
    return out


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file in the same folder, renamed into place: never half-written.

    A dict gets its tensors' checksums under :data:`CHECKSUM_KEY` (verified by :func:`load_file`).
    """
    path = Path(path)
    if path.is_dir():  # os.replace would fail naming the temporary file, not the user's path
        raise OSError(errno.EISDIR, "Is a directory", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(obj, Mapping):
        obj, digests = _without_checksum(obj), checksums(obj)
        obj[CHECKSUM_KEY] = digests
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        try:
            torch.save(obj, tmp)
        except RuntimeError as err:  # torch reports a full disk as "unexpected pos N vs M"
            if "unexpected pos" in str(err) or "file write failed" in str(err):
                raise OSError(errno.ENOSPC, "No space left on device", str(path)) from err
            raise
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def check_output_file(setting: str, value: Any) -> None:
    """Before any work: ``setting=value`` (where a command writes its checkpoint) must name a file, not a
    folder or a path under a file. None (the default place) passes."""
    if value is None or not str(value).strip():
        return
    path = Path(str(value)).expanduser()
    if path.is_dir():
        example = path / "model.pt"
        raise SplitinvError(f"{setting}={value} is a folder: name a file, e.g. {setting}={example}.")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise SplitinvError(f"{setting}={value}: {parent} is a file, not a folder: fix the path.")
            break


def _detail(err: BaseException) -> str:
    """The informative line of a torch.load error (its weights-only messages open with boilerplate)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    marker = "WeightsUnpickler error:"
    at = next((i for i, line in enumerate(lines) if marker in line), None)
    if at is not None:  # "...WeightsUnpickler error: <what>", <what> on the same line or the next
        after = lines[at].split(marker, 1)[1].strip()
        text = after or (lines[at + 1] if at + 1 < len(lines) else "")
    else:
        skip = ("Weights only load failed", "Please file an issue", "Check the documentation")
        useful = [line for line in lines if "GLOBAL" in line] or [x for x in lines if not x.startswith(skip)]
        text = (useful or lines or [""])[0]
    text = text.split(". ")[0][:160]
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _refuses_code(err: BaseException) -> bool:
    """A weights-only refusal of a pickled global (code), as opposed to bytes that are not a pickle."""
    text = str(err)
    return isinstance(err, pickle.UnpicklingError) and "Weights only load failed" in text and "GLOBAL" in text


def _check_tensors(obj: Any, recorded: Mapping[str, str]) -> str | None:
    """What is wrong with ``obj``'s tensors: one that does not match its recorded checksum, or (without a
    checksum) holds inf/NaN values; None when nothing is."""
    for path, t in _tensors(obj):
        name = ".".join(str(p) for p in path) or "tensor"
        digest = recorded.get(_key(path))
        if digest is not None:
            if digest != _digest(t):
                return (
                    f"is corrupt: tensor {name} does not match the checksum splitinv wrote with it (bytes "
                    "changed on disk or in a copy)"
                )
        elif t.is_floating_point() or t.is_complex():
            bad = int((~torch.isfinite(t)).sum())
            if bad:
                return f"is corrupt or diverged: {bad} value(s) of tensor {name} are inf/NaN"
            if problem := _outlier(t):
                return f"is corrupt or diverged: tensor {name} {problem}"
    return None


# No trained weight, BatchNorm statistic or embedding comes near this; random bytes read as float32 usually do
MAX_MAGNITUDE = 1e8
# a value this many times the tensor's typical (median non-zero) magnitude, and above OUTLIER_FLOOR
OUTLIER_RATIO, OUTLIER_FLOOR = 1e6, 1e3


def _outlier(t: torch.Tensor) -> str | None:
    """Why a finite tensor without a checksum cannot hold trained values (changed bytes read as numbers:
    a weight of 1e36), or None: a value above :data:`MAX_MAGNITUDE`, or a value over
    :data:`OUTLIER_FLOOR` that is :data:`OUTLIER_RATIO` times the tensor's median non-zero magnitude."""
    if not t.numel():
        return None
    mag = t.detach().abs().double().reshape(-1)
    top = float(mag.max())
    if top > MAX_MAGNITUDE:
        return (
            f"holds a value of magnitude {top:.3g}, far beyond any trained weight (limit {MAX_MAGNITUDE:.0e})"
        )
    nonzero = mag[mag > 0]
    if top > OUTLIER_FLOOR and nonzero.numel() >= 16:
        typical = float(nonzero.median())
        if top > OUTLIER_RATIO * typical:
            return (
                f"holds a value of magnitude {top:.3g}, {top / typical:.2g} times its typical {typical:.3g}"
            )
    return None


def load_file(path: str | os.PathLike, what: str, hint: str = "") -> Any:
    """What a local torch file holds, loaded with ``weights_only=True`` and checked, or a one-line error.

    ``what`` names the file in messages ("victim weights", "decoder checkpoint"); ``hint`` ends the
    missing-file and corrupt-file messages (how to get a good file). Tensors written by
    :func:`save_atomic` must match their checksums (removed from what is returned); any other tensor must
    be finite.
    """
    path = Path(path).expanduser()
    fix = hint or "re-create it, or pass another file."
    if path.is_dir():
        raise SplitinvError(f"{what} file {path} is a folder, not a file: pass the file inside it.")
    if not path.is_file():
        raise SplitinvError(f"{what} file {path} does not exist{': ' + hint if hint else '.'}")
    if path.stat().st_size == 0:
        raise SplitinvError(f"{what} file {path} is corrupt or not a checkpoint (empty file, 0 bytes): {fix}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        if _refuses_code(err):
            raise SplitinvError(
                f"{what} file {path} holds pickled code ({_detail(err)}) and cannot be loaded safely: "
                "splitinv loads only plain state_dicts and its own checkpoints (torch.load "
                "weights_only=True); re-save the tensors alone, e.g. torch.save(model.state_dict(), path)."
            ) from err
        raise SplitinvError(
            f"{what} file {path} is corrupt or not a checkpoint ({_detail(err)}): a truncated copy or "
            f"download, or another kind of file; {fix}"
        ) from err
    recorded: Any = {}
    if isinstance(obj, Mapping) and CHECKSUM_KEY in obj:
        recorded, obj = obj[CHECKSUM_KEY], _without_checksum(obj)
    elif isinstance(obj, Mapping) and str(obj.get("format", "")).startswith("splitinv-"):
        import warnings

        warnings.warn(
            f"{what} file {path} is a {obj['format']} file without splitinv's checksums (saved with "
            "torch.save, or they were removed): only finiteness and magnitude are checked; write it with "
            "splitinv.io.save_atomic to have every tensor verified.",
            stacklevel=2,
        )
    problem = _check_tensors(obj, recorded if isinstance(recorded, Mapping) else {})
    if problem is not None:
        raise SplitinvError(f"{what} file {path} {problem}; {fix}")
    return obj


def load_weights(path: str | os.PathLike, what: str, hint: str = "") -> dict[str, Any]:
    """A dict from a local weights file (:func:`load_file`, then checked to be a dict), or a one-line error.

    ``what`` names the file in messages ("victim", "DCGAN"); ``hint`` ends the missing-file message.
    """
    obj = load_file(path, f"{what} weights", hint)
    if not isinstance(obj, dict):
        raise SplitinvError(
            f"{what} weights file {Path(path).expanduser()} holds a {type(obj).__name__}, not a state_dict."
        )
    return obj
