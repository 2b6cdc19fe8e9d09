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

:class:`GaussianNoise` also takes ``target_dfil`` instead of ``scale``: the run then sets ``sigma`` so that
the mean dFIL (:mod:`splitinv.leakage`) over the auxiliary images is that target
(:meth:`GaussianNoise.calibrate`).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from splitinv.defenses.common import SeededDefense, check_bool, check_number
from splitinv.errors import SplitinvError

DEFAULT_SCALE = 0.1  # the noise scale when neither scale nor (gaussian) target_dfil is given


class _AdditiveNoise(SeededDefense):
    def __init__(self, scale: float = DEFAULT_SCALE, relative: bool = False, seed: int = 0) -> None:
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
    """Adds ``N(0, sigma^2)`` noise per element; ``sigma = scale`` (or ``scale * std(h_i)`` when relative).

    ``scale=None`` takes ``DEFAULT_SCALE``, unless ``target_dfil`` is set: sigma is then calibrated on the
    auxiliary images by the run (:meth:`calibrate`) so that their mean dFIL meets the target (absolute noise
    only: relative noise leaks the activations' spread whatever its scale).
    """

    name = "gaussian"
    strength_key = "scale"

    def __init__(
        self,
        scale: float | None = None,
        relative: bool = False,
        seed: int = 0,
        target_dfil: float | None = None,
        calibration_images: int = 256,
    ) -> None:
        if target_dfil is not None and scale is not None:
            raise SplitinvError(
                f"gaussian defense: defense.scale={scale} and defense.target_dfil={target_dfil} both set: "
                "give one (target_dfil chooses sigma itself)."
            )
        super().__init__(DEFAULT_SCALE if scale is None else scale, relative, seed)
        self.target_dfil = None
        if target_dfil is not None:
            target = check_number(self.name, "target_dfil", target_dfil)
            if target <= 0:
                raise SplitinvError(f"gaussian defense: target_dfil must be > 0, got {target}.")
            if self.relative:
                raise SplitinvError(
                    "gaussian defense: target_dfil needs absolute noise (relative=false): relative noise "
                    "leaks the activations' spread at every scale."
                )
            self.target_dfil = target
            self.scale = math.nan  # set by calibrate()
            self.strength_key = "target_dfil"  # what a sweep over targets varies (tables, curves)
        self.calibration_images = int(check_number(self.name, "calibration_images", calibration_images))
        if self.calibration_images < 1:
            raise SplitinvError("gaussian defense: calibration_images must be >= 1.")

    def calibrate(self, head: torch.nn.Module, images: Any, device: Any = "cpu", probes: int = 32) -> float:
        """Set sigma so that the mean dFIL of ``head`` over ``images`` (batches) is ``target_dfil``."""
        from splitinv.leakage import calibrate_sigma

        if self.target_dfil is None:
            raise SplitinvError("gaussian defense: calibrate() needs defense.target_dfil.")
        self.scale = calibrate_sigma(head, images, self.target_dfil, device=device, probes=probes)
        return self.scale

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if math.isnan(self.scale):
            raise SplitinvError(
                "gaussian defense with target_dfil is not calibrated: call defense.calibrate(head, images) "
                "(splitinv-run does it on the auxiliary images)."
            )
        return super().forward(h)

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        if self.target_dfil is not None:
            out.update(target_dfil=self.target_dfil, calibration_images=self.calibration_images)
        return out

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
