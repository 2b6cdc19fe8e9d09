"""Reconstruction sheets: every evaluation image, original above reconstruction, each one's scores under it.

``reconstructions.png`` / ``.pdf`` (``reconstructions_1`` ... when the images need several sheets): pairs
of rows, original above reconstruction, each reconstruction's own SSIM / PSNR (its samples.csv row) under
it, each image an integer nearest-neighbour upscale to at least one inch at 200 dpi, so a 28- or 32-px image
stays sharp in a paper. Laid out in whole pixels by hand rather than with matplotlib's subplots / tight
layout, which place axes at fractional pixels and so resample the images.
"""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from splitinv.errors import SplitinvError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

SHEET_STEM = "reconstructions"  # reconstructions.{png,pdf}, or reconstructions_1, _2, ... for several sheets
SHEET_COLUMNS = 8  # images per row
SHEET_PAIRS = 2  # (original, reconstruction) row pairs per sheet: 16 images
SHEET_DPI = 200
MIN_CELL_PX = 200  # each image drawn at least this many pixels (one inch at SHEET_DPI) on its shorter side
_PX = {"gap": 6, "caption": 50, "pair_gap": 36, "label_pad": 16, "margin": 12, "title_line": 52}
_FONT = {"title": 11, "label": 10, "caption": 8}


@dataclass(frozen=True)
class SheetRow:
    """One row of a sheet: a label at its left, (k, C, H, W) images in [0, 1], optional text under each image,
    and ``gap``: extra space above it (between pairs of rows)."""

    label: str
    images: torch.Tensor
    captions: Sequence[str] | None = None
    gap: bool = False


CAPTION_LEGEND = "SSIM / PSNR under each reconstruction"


def score_caption(ssim: float | None, psnr: float | None) -> str:
    """What a sheet prints under a reconstruction: ``0.731 / 21.8 dB`` (``n/a`` for a missing score)."""

    def fmt(value: float | None, spec: str) -> str:
        return "n/a" if value is None or math.isnan(value) else format(value, spec)

    return f"{fmt(ssim, '.3f')} / {fmt(psnr, '.1f')} dB"


def sheet_title(record: dict[str, Any]) -> str:
    """Victim, cut, attack and, when there is one, the defense (``gaussian@0.5``) of a results record."""
    parts = [f"victim {record.get('victim')}", f"cut {record.get('cut')}", f"attack {record.get('attack')}"]
    defense = record.get("defense") or "none"
    if defense != "none":
        strength = record.get("defense_strength")
        parts.append(f"defense {defense}" + ("" if strength is None else f"@{strength}"))
    return " | ".join(parts)


def _text_px(text: str, size: float) -> float:
    """Width in pixels at SHEET_DPI of ``text`` in matplotlib's default font at ``size`` points."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextToPath

    width, _, _ = TextToPath().get_text_width_height_descent(text, FontProperties(size=size), ismath=False)
    return width / 72 * SHEET_DPI


def _wrap(text: str, width_px: float, size: float) -> list[str]:
    """``text`` broken at spaces into lines no wider than ``width_px`` (a longer single word stays whole)."""
    lines: list[str] = []
    for word in text.split(" "):
        if lines and _text_px(f"{lines[-1]} {word}", size) <= width_px:
            lines[-1] += f" {word}"
        else:
            lines.append(word)
    return lines or [""]


def _as_image(image: torch.Tensor) -> Any:
    """(C, H, W) in [0, 1] -> an (H, W) array (one channel) or (H, W, 3) array for imshow."""
    image = image.detach().float().cpu().clamp(0, 1)
    return image[0].numpy() if image.shape[0] == 1 else image[:3].permute(1, 2, 0).numpy()


def draw_sheet(rows: Sequence[SheetRow], title: str = "", columns: int | None = None) -> Figure:
    """A figure of labelled image rows, laid out in whole pixels at SHEET_DPI: each image an integer
    nearest-neighbour upscale (at least MIN_CELL_PX on its shorter side), one-channel images in gray,
    ``captions`` centred under their images, ``title`` on top. Axes carry gid ``"<label>:<column>"``."""
    from matplotlib.figure import Figure

    if not rows or any(row.images.ndim != 4 for row in rows):
        raise SplitinvError("a reconstruction sheet needs at least one row of (N, C, H, W) images.")
    columns = columns or max(row.images.shape[0] for row in rows)
    h, w = (int(v) for v in rows[0].images.shape[-2:])
    scale = max(1, math.ceil(MIN_CELL_PX / min(h, w)))
    cell_w, cell_h = w * scale, h * scale
    left = _PX["margin"] + _PX["label_pad"] + math.ceil(max(_text_px(r.label, _FONT["label"]) for r in rows))
    width = left + columns * cell_w + (columns - 1) * _PX["gap"] + _PX["margin"]
    lines = _wrap(title, width - 2 * _PX["margin"], _FONT["title"]) if title else []
    top = _PX["margin"] + len(lines) * _PX["title_line"]
    ys = []  # each row's top edge, in pixels from the top
    y = top
    for i, row in enumerate(rows):
        y += (_PX["pair_gap"] if row.gap else _PX["gap"]) if i else 0
        ys.append(y)
        y += cell_h + (_PX["caption"] if row.captions is not None else 0)
    height = y + _PX["margin"]
    fig = Figure(figsize=(width / SHEET_DPI, height / SHEET_DPI), dpi=SHEET_DPI, facecolor="white")
    if lines:
        fig.text(0.5, 1 - (_PX["margin"] + len(lines) * _PX["title_line"] / 2) / height, "\n".join(lines),
                 ha="center", va="center", fontsize=_FONT["title"], linespacing=1.6)  # fmt: skip
    for row, y in zip(rows, ys, strict=True):
        fig.text((left - _PX["label_pad"]) / width, 1 - (y + cell_h / 2) / height, row.label,
                 ha="right", va="center", fontsize=_FONT["label"])  # fmt: skip
        for c, image in enumerate(row.images[:columns]):
            x = left + c * (cell_w + _PX["gap"])
            ax = fig.add_axes((x / width, 1 - (y + cell_h) / height, cell_w / width, cell_h / height))
            ax.set_gid(f"{row.label}:{c}")
            ax.set_axis_off()
            pixels = _as_image(image)
            ax.imshow(pixels, cmap="gray" if pixels.ndim == 2 else None, vmin=0, vmax=1,
                      interpolation="nearest", resample=False, aspect="auto")  # fmt: skip
            if row.captions is not None and c < len(row.captions):
                ax.text(0.5, -_PX["gap"] / cell_h, row.captions[c], transform=ax.transAxes,
                        ha="center", va="top", fontsize=_FONT["caption"])  # fmt: skip
    return fig


def sheet_names(n_images: int) -> list[str]:
    """The sheets' file stems for ``n_images`` images: ``reconstructions``, or ``reconstructions_1`` ...
    (numbers padded to the same width, so that they sort); none for no images."""
    n = math.ceil(n_images / (SHEET_COLUMNS * SHEET_PAIRS))
    digits = len(str(n))
    return [SHEET_STEM] if n == 1 else [f"{SHEET_STEM}_{i:0{digits}d}" for i in range(1, n + 1)]


def sheets(
    originals: torch.Tensor,
    reconstructions: torch.Tensor,
    per_image: dict[str, list[float]],
    title: str = "",
) -> Iterator[Figure]:
    """One figure per sheet (:func:`sheet_names`), built as it is asked for: every image, 8 per row, two
    pairs of rows per sheet, each reconstruction's SSIM / PSNR (``per_image``, in image order) under it."""
    n = originals.shape[0]
    if reconstructions.shape[0] != n:
        raise SplitinvError(
            f"{n} originals but {reconstructions.shape[0]} reconstructions: cannot pair them."
        )
    ssim, psnr = ([float(v) for v in per_image.get(key) or []] for key in ("ssim", "psnr"))
    captions = [score_caption(*(s[i] if i < len(s) else None for s in (ssim, psnr))) for i in range(n)]
    columns = min(SHEET_COLUMNS, n)
    per_sheet = SHEET_COLUMNS * SHEET_PAIRS
    names = sheet_names(n)
    for number, start in enumerate(range(0, n, per_sheet), 1):
        rows: list[SheetRow] = []
        for row_start in range(start, min(n, start + per_sheet), SHEET_COLUMNS):
            end = min(n, row_start + SHEET_COLUMNS)
            rows.append(SheetRow("original", originals[row_start:end], gap=bool(rows)))
            rows.append(SheetRow("reconstruction", reconstructions[row_start:end], captions[row_start:end]))
        suffix = f" (sheet {number}/{len(names)})" if len(names) > 1 else ""
        legend = f"{' | ' if title else ''}{CAPTION_LEGEND}"
        yield draw_sheet(rows, title + legend + suffix, columns=columns)


def save_figure(fig: Figure, stem: str | Path, tight: bool = False) -> list[Path]:
    """``stem``.png and .pdf at SHEET_DPI, each written to a temporary file and renamed into place;
    ``tight``: cropped to the drawn content (plots; a sheet's pixel layout is kept as it is)."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in ("png", "pdf"):
        path = stem.with_name(f"{stem.name}.{fmt}")
        tmp = path.with_name(f".{path.name}-{uuid.uuid4().hex[:8]}.tmp")  # created with the umask's mode
        try:
            fig.savefig(
                tmp, format=fmt, dpi=SHEET_DPI, facecolor="white", bbox_inches="tight" if tight else None
            )
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        paths.append(path)
    return paths


def write_sheets(
    folder: str | Path,
    originals: torch.Tensor,
    reconstructions: torch.Tensor,
    per_image: dict[str, list[float]],
    title: str = "",
) -> list[Path]:
    """Every sheet of :func:`sheets` as ``<name>.png`` and ``.pdf`` in ``folder``; the files written."""
    figures = sheets(originals, reconstructions, per_image, title)
    written: list[Path] = []
    for name, fig in zip(sheet_names(len(originals)), figures, strict=True):
        written += save_figure(fig, Path(folder) / name)
    return written


def sheet_images(setting: Any, n_eval: int) -> int:
    """How many evaluation images the ``sheets`` setting draws out of ``n_eval``: an integer >= 0 (at most
    ``n_eval``), ``all`` or ``none``; a one-line error for anything else."""
    if isinstance(setting, str) and setting.strip().lower() in ("all", "none"):
        return n_eval if setting.strip().lower() == "all" else 0
    if setting is None or setting is False:
        return 0
    if isinstance(setting, bool) or not isinstance(setting, int) or setting < 0:
        raise SplitinvError(
            f"sheets={setting!r}: give how many evaluation images to draw (an integer >= 0), all, or none."
        )
    return min(int(setting), n_eval)


def is_sheet(name: str) -> bool:
    """Whether ``name`` is a sheet file of :func:`sheet_names` (png or pdf)."""
    stem, _, ext = name.rpartition(".")
    number = stem[len(SHEET_STEM) + 1 :]
    return ext in ("png", "pdf") and (
        stem == SHEET_STEM or (stem.startswith(f"{SHEET_STEM}_") and number.isdigit())
    )


def first_sheet(out_dir: str | Path) -> Path | None:
    """The run's first reconstruction sheet (png), or None when it has none."""
    found = sorted(p for p in Path(out_dir).glob(f"{SHEET_STEM}*.png") if is_sheet(p.name))
    return found[0] if found else None
