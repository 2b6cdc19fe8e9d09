"""Additive noise on the activations (``conf/defense/gaussian.yaml``, ``conf/defense/laplace.yaml``).

The device sends ``h + n``, with ``n`` drawn afresh on every call, i.i.d. per element, zero mean:

- :class:`GaussianNoise`: ``n ~ N(0, sigma^2)``, so the noise std is ``sigma``.
- :class:`LaplaceNoise`: ``n ~ Laplace(0, b)`` with density ``exp(-|n|/b) / (2b)`` (torch.distributions'
  ``scale``), so the noise std is ``b * sqrt(2)``: ``scale`` is ``b``, not the std.

``scale`` is absolute (``sigma`` or ``b`` itself), or with ``relative: true`` a multiple of the std of the
image's own activations: ``sigma = scale * std(h_i)`` for image ``i``, the population std over all of that
image's elements (per image, so an image's observation does not depend on the rest of its batch). The std is
treated as a constant in the backward pass: the gradient through the defense is the identity, which is the
expected gradient of ``h + sigma(h) * eps`` over the noise ``eps`` (what an adaptive attacker differentiates).
Both draw from their own seeded generator (:class:`splitinv.defenses.common.SeededDefense`).
"""

from __future__ import annotations

from typing import Any

import torch

from splitinv.defenses.common import SeededDefense, check_bool, check_number
from splitinv.errors import SplitinvError


class _AdditiveNoise(SeededDefense):
    def __init__(self, scale: float = 0.1, relative: bool = False, seed: int = 0) -> None:
        super().__init__(seed)
        scale = check_number(self.name, "scale", scale)
        if scale < 0:
            raise SplitinvError(
                f"{self.name} defense: scale must be >= 0, got {scale}: set defense.scale to 0 or more "
                "(with defense.relative=true it is a multiple of the activations' std)."
            )
        self.scale = scale
        self.relative = check_bool(self.name, "relative", relative)

    def _unit_noise(self, h: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def sigma(self, h: torch.Tensor) -> torch.Tensor | float:
        """The noise's scale parameter for activations ``h``: a (B, 1, ...) tensor when relative."""
        if not self.relative:
            return self.scale
        flat = h.detach().reshape(h.shape[0], -1).float()
        std = flat.std(dim=1, correction=0) if flat.shape[1] > 1 else torch.zeros_like(flat[:, 0])
        return (self.scale * std).to(h.dtype).reshape(h.shape[0], *([1] * (h.ndim - 1)))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if h.ndim < 1 or h.shape[0] == 0:
            return h
        return h + self.sigma(h) * self._unit_noise(h)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "scale": self.scale, "relative": self.relative, "seed": self.seed}


class GaussianNoise(_AdditiveNoise):
    """Adds ``N(0, sigma^2)`` noise per element; ``sigma = scale`` (or ``scale * std(h_i)`` when relative)."""

    name = "gaussian"
    strength_key = "scale"

    def _unit_noise(self, h: torch.Tensor) -> torch.Tensor:
        return torch.randn(h.shape, generator=self.generator(h.device), device=h.device, dtype=h.dtype)


class LaplaceNoise(_AdditiveNoise):
    """Adds ``Laplace(0, b)`` noise per element, ``b = scale`` (or ``scale * std(h_i)`` when relative);
    its std is ``b * sqrt(2)``."""

    name = "laplace"
    strength_key = "scale"

    def _unit_noise(self, h: torch.Tensor) -> torch.Tensor:
        # the difference of two independent Exp(1) draws is Laplace(0, 1)
        g = self.generator(h.device)
        e = torch.empty((2, *h.shape), device=h.device, dtype=h.dtype).exponential_(generator=g)
        return e[0] - e[1]
