"""NoPeek (Vepakomma et al. 2020, ``conf/defense/nopeek.yaml``): fine-tune the network so that what crosses
the cut depends little on the input, measured by distance correlation.

Training adds ``weight * dCor(x, h)`` to the cross-entropy, where ``x`` is the batch of input images and ``h``
the head's activations at the cut, each flattened per image. At inference the defense is the identity: the
protection is in the fine-tuned head (train it with ``splitinv-train-defense defense=nopeek``).

:func:`distance_correlation` is the sample distance correlation of Székely, Rizzo & Bakirov (2007), the
square root of the V-statistic ``dCov^2_n(X, Y) / sqrt(dVar^2_n(X) dVar^2_n(Y))`` over the batch (0 when
either variance is 0): pairwise Euclidean distances ``a_jk = |x_j - x_k|``, double centred
``A_jk = a_jk - mean_j a_jk - mean_k a_jk + mean a``, and ``dCov^2_n = mean_jk A_jk B_jk``. It is in [0, 1],
1 for ``Y = c X`` (any c > 0, and under any orthogonal map or shift of either), near 0 for independent
samples, and differentiable (computed in float64 for accuracy, outside autocast).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from splitinv.defenses.checkpoint import TrainedDefense
from splitinv.defenses.common import check_weight
from splitinv.errors import SplitinvError


def _centred_distances(z: torch.Tensor) -> torch.Tensor:
    """The double-centred Euclidean distance matrix (n, n) of the rows of ``z`` (n, d), in float64."""
    z = z.double()
    z = z - z.mean(0, keepdim=True)  # distances do not change; the Gram form below loses less to rounding
    sq = (z * z).sum(1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (z @ z.T)
    # rounding leaves |d2| ~ eps * (|z_j|^2 + |z_k|^2) where the distance is 0 (the diagonal, repeated rows):
    # those are 0, without gradient (sqrt's derivative at 0 is infinite)
    positive = d2 > 64 * torch.finfo(torch.float64).eps * (sq[:, None] + sq[None, :])
    d = torch.where(positive, torch.where(positive, d2, 1.0).sqrt(), 0.0)
    return d - d.mean(0, keepdim=True) - d.mean(1, keepdim=True) + d.mean()


def distance_correlation(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Sample distance correlation of the rows of ``x`` (n, ...) and ``y`` (n, ...), each sample flattened.

    A 0-dim tensor in ``x``'s floating dtype (float32 for integer inputs), differentiable in both.
    """
    if x.ndim < 1 or y.ndim < 1 or x.shape[0] != y.shape[0]:
        raise SplitinvError(
            f"distance correlation needs two batches of the same size, got shapes {tuple(x.shape)} and "
            f"{tuple(y.shape)}: pass (n, ...) samples of x and of y, row j of each from the same image."
        )
    if x.shape[0] < 2:
        raise SplitinvError(
            f"distance correlation needs at least 2 samples, got {x.shape[0]}: use a batch size of 2 or more."
        )
    out_dtype = x.dtype if x.is_floating_point() else torch.float32
    with torch.autocast(device_type=x.device.type, enabled=False):
        a = _centred_distances(x.reshape(x.shape[0], -1))
        b = _centred_distances(y.reshape(y.shape[0], -1).to(x.device))
        dcov2 = (a * b).mean()
        dvar2 = (a * a).mean() * (b * b).mean()
        defined = dvar2 > 0
        dcor2 = torch.where(defined, dcov2 / torch.where(defined, dvar2, 1.0).sqrt(), 0.0)
        # the V-statistic is >= 0 (rounding aside); sqrt's derivative at 0 is infinite: floor it
        dcor = dcor2.clamp_min(1e-12).sqrt()
    return torch.where(dcor2 > 1e-12, dcor, 0.0).to(out_dtype)


class NoPeek(TrainedDefense):
    """Trains with ``weight * dCor(x, h)`` added to the cross-entropy; sends ``h`` as it is."""

    name = "nopeek"
    strength_key = "weight"

    def __init__(self, weight: float = 0.5) -> None:
        super().__init__()
        self.weight = check_weight(self.name, weight)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h

    @property
    def is_identity(self) -> bool:
        return True

    def training_loss(
        self, x: torch.Tensor, h: torch.Tensor, adversary: nn.Module | None = None
    ) -> dict[str, torch.Tensor]:
        return {"nopeek": self.weight * distance_correlation(x, h)}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "weight": self.weight}
