"""One run's results: metrics.json, the per-sample CSV, the reconstruction sheets, the logger (W&B or CSV).

Files are written into a hidden staging folder and moved into the run folder only when all of them exist,
metrics.json last, so a failed run never leaves a results file that a table builder would read.

The reconstruction sheets (``reconstructions.png`` / ``.pdf``, drawn by :mod:`splitinv.sheets`) are staged
with the rest.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from splitinv import metrics
from splitinv.errors import ResultsExist, SplitinvError
from splitinv.io import load_file, save_atomic, to_pil, to_uint8
from splitinv.sheets import is_sheet, sheet_title, write_sheets

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
SAMPLES_FILE = "samples.csv"
FAILED_FILE = "failed.json"
SUPERSEDED_FILE = "metrics.superseded.json"
IMAGES_FILE = "images.pt"
DIGEST_SUFFIX = ".sha256"  # metrics.json.sha256 beside metrics.json: `sha256sum -c` reads it too
RESULTS_FORMAT = "splitinv-results/1"
_OLD_GRID = "grid.png"  # what earlier versions wrote instead of the sheets: removed when a job is rewritten


def save_images(path: str | Path, originals: torch.Tensor, reconstructions: torch.Tensor) -> None:
    """The sheets' images as uint8 tensors, for figures that put several runs side by side."""
    save_atomic({"originals": to_uint8(originals), "reconstructions": to_uint8(reconstructions)}, path)


def load_images(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(originals, reconstructions) in [0, 1] from :func:`save_images`, or a one-line error."""
    obj = load_file(path, "reconstruction images", hint="rerun the job that wrote it.")
    parts = [obj.get(k) if isinstance(obj, dict) else None for k in ("originals", "reconstructions")]
    if not all(isinstance(t, torch.Tensor) for t in parts):
        raise SplitinvError(f"{path} is not a splitinv {IMAGES_FILE} (no originals and reconstructions).")
    return parts[0].float() / 255, parts[1].float() / 255


SAVE_FORMATS = ("none", "uint8", "png")
RECONSTRUCTIONS_ARRAY = "reconstructions.npy"  # save_reconstructions=uint8
RECONSTRUCTIONS_PNG = "reconstructions_png"  # save_reconstructions=png: <index>.png


class ReconstructionWriter:
    """Every reconstruction written as it is scored (``save_reconstructions``), so memory stays one batch:
    ``uint8``: one (N, C, H, W) uint8 array, ``reconstructions.npy``, a memory-mapped .npy file filled batch
    by batch in samples.csv's row order; ``png``: ``reconstructions_png/<index>.png``. Written under a hidden
    temporary name in the run folder; :meth:`move_into` puts it into :func:`write_run`'s staging folder, and
    :meth:`discard` removes it (a failed run leaves nothing half-written)."""

    def __init__(self, out_dir: str | Path, fmt: str, n_images: int) -> None:
        if fmt not in SAVE_FORMATS:
            raise SplitinvError(f"save_reconstructions={fmt!r}: use one of {', '.join(SAVE_FORMATS)}.")
        self.fmt, self.n_images, self.rows = fmt, int(n_images), 0
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.name = RECONSTRUCTIONS_ARRAY if fmt == "uint8" else RECONSTRUCTIONS_PNG
        self.tmp = Path(tempfile.mkdtemp(prefix=".partial-reconstructions-", dir=out))
        self._array: Any = None

    def add(self, index: Any, x_hat: torch.Tensor) -> None:
        """One batch of reconstructions in [0, 1] (B, C, H, W) and their evaluation indices."""
        pixels = to_uint8(x_hat)
        if self.fmt == "uint8":
            if self._array is None:
                from numpy.lib.format import open_memmap

                shape = (self.n_images, *pixels.shape[1:])
                self._array = open_memmap(self.tmp / self.name, mode="w+", dtype="uint8", shape=shape)
            end = self.rows + pixels.shape[0]
            if end > self.n_images:
                raise SplitinvError(f"more than the {self.n_images} evaluation images were scored.")
            self._array[self.rows : end] = pixels.numpy()
        else:
            folder = self.tmp / self.name
            folder.mkdir(exist_ok=True)
            for i, image in zip(torch.as_tensor(index).tolist(), pixels, strict=True):
                to_pil(image).save(folder / f"{i}.png")
        self.rows += pixels.shape[0]

    def move_into(self, stage: Path) -> None:
        """Flush and move the finished file (or folder) into ``stage``."""
        if self._array is not None:
            self._array.flush()
            self._array = None
        source = self.tmp / self.name
        if not source.exists():  # no image was scored
            raise SplitinvError("save_reconstructions: no reconstruction was written.")
        os.replace(source, stage / self.name)

    def discard(self) -> None:
        self._array = None
        shutil.rmtree(self.tmp, ignore_errors=True)


def _clean(value: Any) -> Any:
    """JSON-safe: NaN and inf become null (JSON has no NaN), tensors and numpy scalars become numbers."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_run(
    out_dir: str | Path,
    record: dict[str, Any],
    per_image: dict[str, list[float]],
    images: tuple[torch.Tensor, torch.Tensor],
    config_yaml: str,
    extra_files: dict[str, Callable[[Path], None]] | None = None,
) -> Path:
    """Write config.yaml, samples.csv, the reconstruction sheets of ``images`` (originals, reconstructions,
    in samples.csv's order), extra files (name -> writer), then metrics.json. Sheets of an earlier run of
    this job that the new ones do not replace (and an old grid.png) are removed."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".partial-", dir=out))
    try:
        (stage / "config.yaml").write_text(config_yaml)
        lengths = {len(v) for v in per_image.values() if len(v)}
        frame = pd.DataFrame({k: v for k, v in per_image.items() if len(v) == max(lengths, default=0)})
        frame.to_csv(stage / SAMPLES_FILE, index=False)
        write_sheets(stage, *images, per_image, title=sheet_title(record))
        for name, writer in (extra_files or {}).items():
            writer(stage / name)
        (stage / METRICS_FILE).write_text(json.dumps(_clean(record), indent=2, sort_keys=False) + "\n")
        write_digest(stage / METRICS_FILE)
        names = [p.name for p in stage.iterdir()]
        stale = (_OLD_GRID, RECONSTRUCTIONS_ARRAY, RECONSTRUCTIONS_PNG)
        for old in out.iterdir():  # a stale sheet would show another run's reconstructions
            if (is_sheet(old.name) or old.name in stale) and old.name not in names:
                shutil.rmtree(old) if old.is_dir() else old.unlink()
        for name in sorted(names, key=lambda n: n == METRICS_FILE):  # metrics.json moves last
            if (stage / name).is_dir() and (out / name).is_dir():
                shutil.rmtree(out / name)  # a folder of files (reconstructions_png/) is replaced whole
            os.replace(stage / name, out / name)
        (out / FAILED_FILE).unlink(missing_ok=True)  # an earlier failure of this job is superseded
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return out / METRICS_FILE


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def digest_path(path: str | Path) -> Path:
    """Where the digest of results file ``path`` lives (``metrics.json`` -> ``metrics.json.sha256``)."""
    return Path(str(path) + DIGEST_SUFFIX)


def write_digest(path: str | Path) -> Path:
    """Write the sha256 of ``path``'s bytes beside it, in ``sha256sum``'s format."""
    path = Path(path)
    out = digest_path(path)
    out.write_text(f"{_sha256(path.read_bytes())}  {path.name}\n")
    return out


def edited(path: str | Path, data: bytes | None = None) -> str | None:
    """Why results file ``path`` (with content ``data``, read once by the caller) cannot be trusted as
    splitinv wrote it, in one line, or None when its digest matches. A missing digest counts: deleting it
    must not be a way around the check."""
    path = Path(path)
    data = path.read_bytes() if data is None else data
    name = digest_path(path).name
    try:
        recorded = digest_path(path).read_text().split()
    except (OSError, UnicodeDecodeError):
        return f"{path} has no readable digest ({name}): it was edited, or not written by splitinv"
    if not recorded or recorded[0] != _sha256(data):
        return f"{path} was changed after splitinv wrote it (its sha256 differs from {name})"
    return None


def finished(out_dir: str | Path) -> dict[str, Any] | None:
    """The finished record in ``out_dir`` (its metrics.json), or None (absent, unreadable, or not ok).

    A record whose digest does not match (:func:`edited`) is refused with :class:`ResultsExist` (the folder
    untouched): an edited result is never reused."""
    path = Path(out_dir) / METRICS_FILE
    if not path.is_file():
        return None
    try:
        data = path.read_bytes()
        record = json.loads(data)
    except (json.JSONDecodeError, OSError, UnicodeDecodeError):
        return None
    if not (isinstance(record, dict) and record.get("status") == "ok"):
        return None
    if why := edited(path, data):
        raise ResultsExist(f"{why}: not reused; pass overwrite=true to rerun the job and replace it.")
    return record


def reusable(
    out_dir: str | Path,
    config_hash: str,
    inputs: dict[str, str],
    *,
    skip_done: bool = True,
    overwrite: bool = False,
) -> dict[str, Any] | None:
    """What a job finds in its folder, read once: the finished record to reuse (same config and same input
    files, :func:`splitinv.config.input_files`, with ``skip_done``), or None to run.

    Finished results of a different config are refused (:class:`ResultsExist`, the folder untouched) unless
    ``overwrite``: a sweep relaunched with other values into an old sweep folder must not replace the jobs
    it finished. Same config with changed input files (a victim retrained into the same path) reruns, with
    a warning naming what changed."""
    try:
        record = finished(out_dir)
    except ResultsExist:
        if overwrite:
            return None
        raise
    if record is None:
        return None
    if record.get("config_hash") != config_hash:
        if overwrite:
            return None
        raise ResultsExist(
            f"{out_dir} holds finished results of another config (config_hash {record.get('config_hash')}, "
            f"now {config_hash}): launch into a new folder (hydra.sweep.dir=... / hydra.run.dir=...) or pass "
            "overwrite=true to replace them."
        )
    old = record.get("inputs") or {}
    if old == inputs:
        return record if skip_done else None
    changed = sorted(k for k in {*inputs, *old} if inputs.get(k) != old.get(k))
    log.warning("%s: input files changed since its results (%s): rerunning", out_dir, ", ".join(changed))
    return None


def write_failure(out_dir: str | Path, err: BaseException) -> Path:
    """Record a failed job as failed.json (error and traceback): tables show it instead of dropping it.

    A failure supersedes the results it was meant to replace: an earlier metrics.json is renamed
    ``metrics.superseded.json`` (kept, but no table reads it)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if (out / METRICS_FILE).is_file():
        os.replace(out / METRICS_FILE, out / SUPERSEDED_FILE)
        if digest_path(out / METRICS_FILE).is_file():
            os.replace(digest_path(out / METRICS_FILE), digest_path(out / SUPERSEDED_FILE))
    text = json.dumps(
        {
            "status": "failed",
            "error": f"{type(err).__name__}: {err}".splitlines()[0],
            "traceback": "".join(traceback.format_exception(err)),
        },
        indent=2,
    )
    fd, tmp = tempfile.mkstemp(prefix=".failed-", dir=out)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
    os.replace(tmp, out / FAILED_FILE)
    return out / FAILED_FILE


def build_record(
    *,
    per_image: dict[str, list[float]],
    victim: str,
    weights: Any,
    cut: str,
    cut_spec: str,
    attack: str,
    data: str,
    seed: int,
    knowledge: dict[str, Any],
    n_eval: int,
    config_hash: str,
    details: dict[str, Any],
    cost: dict[str, Any],
    warnings: list[str],
    precision: str,
    defense: str = "none",
    defense_strength: Any = None,
    utility: dict[str, Any] | None = None,
    utility_test: dict[str, Any] | None = None,
    baselines: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The flat row every command writes to ``metrics.json``: the contract's numbers and the keys that
    identify the run first (what a table builder reads), then details, cost, contract, warnings, versions.

    ``knowledge``: the attacker's (access, aux_data, defense_aware). ``defense``, ``defense_strength``: the
    defense's name and the value of its swept knob. ``utility``: what the defended split still does on the
    evaluation images (accuracy, agreement with the undefended network, n), or None; ``utility_test`` the
    same on the data's whole test split, where it has one. ``baselines``: the trivial reconstructions'
    scores on the same images ({name: {metric: summary}}, :mod:`splitinv.baselines`); ``verdict`` follows
    from the per-image ``beats_grey`` / ``beats_lowpass4`` columns (:func:`splitinv.baselines.verdict`).
    ``precision``: what the attack's training and Lightning loops ran in (``32-true``, ``bf16-mixed``: the
    trainer's, resolved).
    """
    from splitinv.baselines import verdict
    from splitinv.config import versions

    scores = summary(per_image)
    fractions = [(scores.get(k) or {}).get("mean") for k in ("beats_grey", "beats_lowpass4")]
    return {
        "format": RESULTS_FORMAT,
        "status": "ok",
        **scores,
        # leaks / no better than a low-pass image / no better than grey (unscored without baselines)
        "verdict": verdict(*fractions),
        "victim": victim,
        "weights": weights,
        "cut": cut,  # resolved for this victim; cut_spec keeps what was asked (stage:2, depth:0.5, ...)
        "cut_spec": cut_spec,
        "attack": attack,
        "data": data,
        "seed": int(seed),
        "access": knowledge.get("access"),
        "aux_data": knowledge.get("aux_data"),
        "defense": defense,
        "defense_strength": defense_strength,
        "defense_aware": knowledge.get("defense_aware"),
        "utility": utility,
        "utility_test": utility_test,
        "baselines": baselines,
        "n_eval": int(n_eval),
        "precision": str(precision),  # what training and the attack loops ran in: 32-true, bf16-mixed, ...
        "config_hash": config_hash,
        "details": details,
        "cost": cost,
        "contract": metrics.CONTRACT,
        "warnings": warnings,
        "versions": versions(),
    }


def summary(per_image: dict[str, list[float]]) -> dict[str, Any]:
    """The contract's numbers (mean, std, n) for every scored column; null for an unavailable metric."""
    scored = {k: v for k, v in per_image.items() if k not in ("index", "label", "image")}
    return metrics.summarize({k: (v if len(v) else None) for k, v in scored.items()})


def log_to_logger(
    logger: Any, record: dict[str, Any], per_image: dict[str, list[float]], sheet: str | Path | None
) -> None:
    """Scalars, the first reconstruction sheet (its png, :func:`first_sheet`) and the per-sample table to a
    Lightning logger (W&B gets images and tables)."""
    if not logger:
        return
    scalars = {
        f"eval/{name}": value["mean"]
        for name, value in record.items()
        if isinstance(value, dict) and value.get("mean") is not None
    }
    scalars.update({f"cost/{k}": v for k, v in record["cost"].items() if isinstance(v, (int, float))})
    logger.log_metrics(scalars)
    if hasattr(logger, "log_image") and sheet is not None:
        logger.log_image(
            key="reconstructions",
            images=[str(sheet)],
            caption=["original above reconstruction; SSIM / PSNR under each reconstruction"],
        )
    if hasattr(logger, "log_table"):
        frame = pd.DataFrame({k: v for k, v in per_image.items() if len(v)})
        logger.log_table(key="samples", dataframe=frame)
    if hasattr(logger, "experiment") and hasattr(logger.experiment, "summary"):
        for name, value in scalars.items():
            logger.experiment.summary[name] = value
    logger.save()


def finish_wandb() -> None:
    """End this job's W&B run, if one was started, so that each job of a multirun gets its own run
    (pitfalls: wandb.finish). A no-op otherwise; wandb is looked up, never imported, here."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


def finish_logger(logger: Any) -> None:
    """End the W&B run of ``logger`` (a WandbLogger; other loggers have nothing to end)."""
    if logger and type(logger).__name__ == "WandbLogger":
        finish_wandb()
