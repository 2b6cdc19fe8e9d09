"""Dropout on the activations, kept at inference (``conf/defense/dropout.yaml``).

Every element of the head's output is zeroed independently with probability ``p`` (element-wise, like
``torch.nn.functional.dropout``, not whole channels), drawn afresh on every call and in eval mode too; the
kept elements are scaled by ``1 / (1 - p)`` when ``rescale`` is true (torch's convention, so the expected
activation is unchanged), and sent as they are otherwise. The gradient flows through the kept elements.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from splitinv.defenses.common import SeededDefense, check_bool, check_number
from splitinv.errors import SplitinvError


class ActivationDropout(SeededDefense):
    """Zeroes each activation with probability ``p`` on every call (train and eval alike)."""

    name = "dropout"
    strength_key = "p"

    def __init__(self, p: float = 0.5, rescale: bool = True, seed: int = 0) -> None:
        super().__init__(seed)
        p = check_number(self.name, "p", p)
        if not 0 <= p < 1:
            raise SplitinvError(
                f"dropout defense: p must be in [0, 1), got {p}: set defense.p to the probability of "
                "dropping an activation, e.g. 0.5 (1 would send nothing)."
            )
        self.p = p
        self.rescale = check_bool(self.name, "rescale", rescale)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.p == 0 or h.numel() == 0:
            return h
        draws = torch.rand(h.shape, generator=self.generator(h.device), device=h.device)
        keep = (draws >= self.p).to(h.dtype)  # P(keep) = 1 - p
        if self.rescale:
            keep = keep / (1 - self.p)
        return h * keep

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "p": self.p, "rescale": self.rescale, "seed": self.seed}

    def payload_elements(self, shape: tuple[int, ...]) -> int:
        """Every element is counted: the dropped ones are sent as zeros (a sparse encoding is not assumed)."""
        return math.prod(shape)
