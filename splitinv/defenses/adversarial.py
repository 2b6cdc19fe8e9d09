"""Adversarial training against a proxy decoder (``conf/defense/adversarial.yaml``; as in DeepObfuscator,
Li et al. 2019, and ResSFL, Li et al. 2022): a min-max game between the network and a model-inversion
attacker.

A proxy decoder ``D`` (the inverse-decoder attack's network, :func:`splitinv.decoders.build_decoder`) learns
to reconstruct the images from the head's activations, ``min_D MSE(D(h), x)`` with ``h`` detached, with its
own Adam optimizer; head and tail then minimise ``CE - weight * MSE(D(h), x)``, pushing the activations away
from what the decoder can invert while keeping the task. The steps alternate, one of each per batch (the
decoder first). The decoder is not part of the defense: it is thrown away after training, and at inference
the defense is the identity (the protection is in the fine-tuned head).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from splitinv.decoders import build_decoder
from splitinv.defenses.checkpoint import TrainedDefense
from splitinv.defenses.common import check_weight
from splitinv.errors import SplitinvError


class AdversarialDecoder(TrainedDefense):
    """Trains head and tail against a proxy decoder (``CE - weight * MSE``); sends ``h`` as it is."""

    name = "adversarial"
    strength_key = "weight"

    def __init__(self, weight: float = 1.0, lr: float = 1e-3, width: int | None = None) -> None:
        super().__init__()
        self.weight = check_weight(self.name, weight)
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
            raise SplitinvError(
                f"adversarial defense: lr must be a positive number, got {lr!r}: set defense.lr (the proxy "
                "decoder's Adam learning rate), e.g. 0.001."
            )
        self.lr = float(lr)
        if width is not None and (isinstance(width, bool) or not isinstance(width, int) or width < 1):
            raise SplitinvError(
                f"adversarial defense: width must be a positive integer or null, got {width!r}: set "
                "defense.width (the proxy decoder's channels), or null to size it from the cut."
            )
        self.width = width

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h

    @property
    def is_identity(self) -> bool:
        return True

    def build_adversary(self, image_shape: tuple[int, int, int]) -> nn.Module:

        if self.feature_shape is None:
            raise SplitinvError(
                "adversarial defense: build the defense (fit_start or build) before its proxy decoder."
            )
        return build_decoder(self.feature_shape, tuple(image_shape), self.width)

    def adversary_loss(self, adversary: nn.Module, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(adversary(h.detach()), x)

    def adversary_optimizer(self, adversary: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam(adversary.parameters(), lr=self.lr, amsgrad=True)  # He et al.'s decoder

    def training_loss(
        self, x: torch.Tensor, h: torch.Tensor, adversary: nn.Module | None = None
    ) -> dict[str, torch.Tensor]:
        if adversary is None:
            raise SplitinvError(
                "adversarial defense: training needs its proxy decoder: pass build_adversary's module."
            )
        return {"adversarial": -self.weight * F.mse_loss(adversary(h), x)}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "weight": self.weight, "lr": self.lr, "width": self.width}
