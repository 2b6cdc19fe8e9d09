"""splitinv: model inversion attacks on split computing.

Cut a classifier at a named layer, reconstruct its input from the activations, and score the reconstructions
under one metric contract (LPIPS, SSIM, PSNR, feature and label leakage).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("splitinv")
except PackageNotFoundError:  # pragma: no cover - running from a source tree that was never installed
    __version__ = "0.0.0"

from splitinv import gans, metrics  # gans registers the GAN discriminators as victims
from splitinv.cut import cut, cut_points, describe_cut_points, stage_points
from splitinv.errors import SplitinvError
from splitinv.victims import Victim, build_victim

__all__ = [
    "SplitinvError",
    "Victim",
    "__version__",
    "build_victim",
    "cut",
    "cut_points",
    "describe_cut_points",
    "gans",
    "metrics",
    "stage_points",
]
