"""Trivial reconstructions scored beside every attack: what a number means depends on what no attack at all
scores on the same images under the same contract.

- ``grey``: a constant 0.5 image (rMLE's start). On natural photos it already passes He et al.'s SSIM >= 0.3
  "recognisable" line for about half the images.
- ``mean``: the mean auxiliary image (what an attacker with the data but no access to the split would send);
  only for attackers with auxiliary data (a data-free run reads no auxiliary image).
- ``lowpass4``, ``lowpass8``: the original itself, average-pooled to 4x4 / 8x8 and upsampled bilinearly: the
  coarse layout and colours, no detail. A reconstruction that does not beat ``lowpass4`` recovered little more
  than the colours of a 4x4 grid; every run records the fraction that does (``beats_lowpass4``), and the
  fraction that beats grey (``beats_grey``): by more than ``MARGIN`` SSIM on the same image.

:func:`verdict` turns the two fractions into the one word every console line, table and advisor row shows.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from splitinv import metrics

NAMES = ("grey", "mean", "lowpass4", "lowpass8")
SCORED = ("ssim", "psnr", "lpips")
MEAN_IMAGES = 512  # auxiliary images averaged for the mean image (a fixed prefix: deterministic, cheap)
# A result "leaks" when most of its images beat their own trivial reconstruction (a paired, per-image test).
MAJORITY = 0.5
# SSIM a reconstruction must gain over its image's trivial reconstruction to beat it: a flat output a hair off
# 0.5 (an untrained decoder) scores about 1e-4 above grey on every image, which beats nothing
MARGIN = 0.01
LEAKS = "leaks"
NO_BETTER_THAN_LOWPASS = "no better than a low-pass image"
NO_BETTER_THAN_GREY = "no better than grey"
UNSCORED = "unscored"
VERDICTS = (LEAKS, NO_BETTER_THAN_LOWPASS, NO_BETTER_THAN_GREY, UNSCORED)


def lowpass(x: Tensor, side: int) -> Tensor:
    """``x`` average-pooled to ``side`` x ``side`` and upsampled back bilinearly (align_corners=False)."""
    small = F.adaptive_avg_pool2d(x, side)
    return F.interpolate(small, size=x.shape[-2:], mode="bilinear", align_corners=False).clamp(0, 1)


def reconstructions(x: Tensor, mean_image: Tensor | None = None) -> dict[str, Tensor]:
    """The trivial reconstructions of a batch ``x`` (B, C, H, W) in [0, 1] (``mean`` given a mean image)."""
    out = {"grey": torch.full_like(x, 0.5)}
    if mean_image is not None:
        out["mean"] = mean_image.to(x.device, x.dtype).expand_as(x).clone()
    out["lowpass4"] = lowpass(x, 4)
    out["lowpass8"] = lowpass(x, 8)
    return out


@torch.no_grad()
def mean_image(dataset: Any, limit: int = MEAN_IMAGES) -> Tensor | None:
    """The mean of the first ``limit`` images of ``dataset`` ((image, ...) items), or None when it is empty.

    Datasets may draw random flips: they are drawn from a fixed seed inside a forked RNG, so the mean image is
    the same in every run on the same data, and the global stream is left as it was (it changes no number).
    """
    n = min(len(dataset), limit)
    if n == 0:
        return None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        total = sum(dataset[i][0].float() for i in range(n))
    return total / n


def score(
    batches: Iterable[Any], mean: Tensor | None, lpips: str = "auto", device: torch.device | str = "cpu"
) -> tuple[dict[str, dict[str, list[float]]], dict[str, dict[int, float]]]:
    """Per-image SSIM, PSNR and LPIPS of every trivial reconstruction over ``batches`` of (image, label,
    index): ({name: {metric: values}}, {name: {evaluation index: SSIM}})."""
    columns: dict[str, dict[str, list[float]]] = {}
    ssim_by_index: dict[str, dict[int, float]] = {}
    n = 0
    for batch in batches:
        x = batch[0].to(device).float()
        index = batch[2] if len(batch) >= 3 else torch.arange(n, n + x.shape[0])
        n += x.shape[0]
        for name, x_hat in reconstructions(x, mean).items():
            scores = metrics.score(x, x_hat, lpips=lpips)
            for key in SCORED:
                if scores.get(key) is not None:
                    columns.setdefault(name, {}).setdefault(key, []).extend(scores[key].tolist())
            ssim = zip((int(i) for i in index), scores["ssim"].tolist(), strict=True)
            ssim_by_index.setdefault(name, {}).update(ssim)
    return columns, ssim_by_index


def beats(
    ssim: Iterable[float], index: Iterable[int], reference: dict[int, float], margin: float = MARGIN
) -> list[float]:
    """1.0 per image whose reconstruction SSIM is more than ``margin`` above its ``reference`` (grey,
    lowpass4) SSIM, else 0.0."""
    return [float(s > reference[int(i)] + margin) for s, i in zip(ssim, index, strict=True)]


def verdict(beats_grey: float | None, beats_lowpass4: float | None) -> str:
    """One word for a result from the fractions of images whose SSIM beats their grey / 4x4 low-pass
    reconstruction (means over images, or over images and seeds): ``leaks`` when more than half beat the
    low-pass, ``no better than a low-pass image`` when more than half beat only grey, ``no better than grey``
    otherwise; ``unscored`` when the baselines were not scored (``baselines: false``) or a fraction is NaN."""
    if (
        beats_grey is None
        or beats_lowpass4 is None
        or beats_grey != beats_grey
        or beats_lowpass4 != beats_lowpass4
    ):
        return UNSCORED
    if beats_lowpass4 > MAJORITY:
        return LEAKS
    if beats_grey > MAJORITY:
        return NO_BETTER_THAN_LOWPASS
    return NO_BETTER_THAN_GREY
