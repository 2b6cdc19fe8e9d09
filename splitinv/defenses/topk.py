"""Top-k sparsification of the activations (``conf/defense/topk.yaml``).

Per image, the device keeps the ``k`` activations of largest magnitude (over all of the image's elements, any
shape) and zeroes the rest. ``k`` is a count (an integer, ``k: 100``) or a fraction of the image's elements (a
float in (0, 1], ``k: 0.1`` keeps 10 %, rounded to the nearest count and at least 1). A count larger than the
activation is refused at the first call, when its size is known. Exactly ``k`` positions are kept (ties are
broken by ``torch.topk``); a kept activation that is itself 0 stays 0.

The payload is ``2k`` numbers per image: the ``k`` values and their ``k`` indices.

**Gradient**: a straight-through estimator, as in :mod:`splitinv.defenses.quantize`: the forward value is the
sparsified tensor, the backward pass the identity.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from splitinv.defenses.base import Defense
from splitinv.defenses.common import check_batched, check_count, resolve_count, straight_through


class TopK(Defense):
    """Keeps each image's ``k`` largest-magnitude activations and zeroes the rest."""

    name = "topk"
    strength_key = "k"

    def __init__(self, k: int | float = 0.1) -> None:
        super().__init__()
        self.k = check_count(self.name, "k", k, "the activations")

    def count(self, elements: int) -> int:
        """The number of activations kept out of an image's ``elements``."""
        return resolve_count(self.name, "k", self.k, elements, "activations per image")

    def sparsify(self, h: torch.Tensor) -> torch.Tensor:
        """The sparsified activations, without the straight-through gradient."""
        check_batched(self.name, h)
        flat = h.detach().reshape(h.shape[0], -1)
        k = self.count(flat.shape[1])
        index = flat.abs().topk(k, dim=1, sorted=False).indices
        keep = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, index, True)
        return torch.where(keep, flat, torch.zeros_like(flat)).reshape(h.shape)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return straight_through(h, self.sparsify(h))

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "k": self.k}

    def payload_elements(self, shape: tuple[int, ...]) -> int:
        """``2k``: the kept values and their indices."""
        return 2 * self.count(math.prod(shape))
