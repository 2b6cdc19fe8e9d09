"""What several defenses share: one-line checks of their parameters, the channel axis, the straight-through
estimator, and :class:`SeededDefense`, the base of every defense that draws randomness (each instance draws
from its own ``torch.Generator`` on the input's device, seeded with ``seed``: the same seed gives the same
sequence of draws and no defense touches, or is disturbed by, the global RNG stream)."""

from __future__ import annotations

import math
from typing import Any

import torch

from splitinv.defenses.base import Defense
from splitinv.errors import SplitinvError


def check_seed(name: str, seed: Any) -> int:
    """``seed`` as an int, or a one-line error naming the defense."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise SplitinvError(
            f"{name} defense: seed must be an integer, got {seed!r}: set defense.seed=0 (or any int)."
        )
    return int(seed)


def check_bool(name: str, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise SplitinvError(
            f"{name} defense: {key} must be true or false, got {value!r}: set defense.{key}=true or false."
        )
    return value


def check_number(name: str, key: str, value: Any) -> float:
    """``value`` as a finite float (ints accepted, bools refused), or a one-line error."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SplitinvError(
            f"{name} defense: {key} must be a finite number, got {value!r}: set defense.{key}."
        )
    return float(value)


def check_count(name: str, key: str, value: Any, what: str) -> int | float:
    """A count (int >= 1) or a fraction (float in (0, 1]) of ``what``, or a one-line error."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SplitinvError(
            f"{name} defense: {key} must be a count (an integer >= 1) or a fraction of {what} (a float in "
            f"(0, 1]), got {value!r}: set defense.{key}, e.g. 0.1."
        )
    if isinstance(value, int):
        if value < 1:
            raise SplitinvError(
                f"{name} defense: {key} must be >= 1 as a count, got {value}: set defense.{key} to a "
                f"positive integer, or to a fraction of {what} such as 0.1."
            )
        return int(value)
    if not (math.isfinite(value) and 0 < value <= 1):
        raise SplitinvError(
            f"{name} defense: {key}={value} is neither a count (an integer >= 1) nor a fraction in "
            f"(0, 1]: set defense.{key} to a fraction of {what} such as 0.1, or to an integer count."
        )
    return float(value)


def resolve_count(name: str, key: str, value: int | float, total: int, what: str, hint: str = "") -> int:
    """The count that ``value`` (a count or a fraction) means out of ``total``, or a one-line error."""
    if isinstance(value, float):
        return max(1, min(total, round(value * total)))
    if value > total:
        raise SplitinvError(
            f"{name} defense: {key}={value} is larger than the {total} {what}: set defense.{key} to at most "
            f"{total}, or to a fraction such as 0.1{hint}."
        )
    return value


def channel_dim(ndim: int) -> int:
    """The channel dim of a batched activation with ``ndim`` dims: the last for (B, N, C) tokens, else 1."""
    return 2 if ndim == 3 else 1


def straight_through(h: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``value`` forward, the identity backward (gradients reach ``h`` as they are)."""
    value = value.detach()
    if torch.is_grad_enabled() and h.requires_grad:
        return value + (h - h.detach())
    return value


def check_weight(name: str, weight: Any) -> float:
    """A finite loss weight >= 0, or a one-line error."""
    number = isinstance(weight, (int, float)) and not isinstance(weight, bool)
    if not number or not math.isfinite(weight) or weight < 0:
        raise SplitinvError(
            f"{name} defense: weight must be a finite number >= 0, got {weight!r}: set defense.weight, "
            "e.g. 0.5."
        )
    return float(weight)


def check_batched(name: str, h: torch.Tensor, layout: str = "(B, ...)") -> None:
    """A one-line error unless ``h`` has a batch dimension (at least 2 dims)."""
    if h.ndim < 2:
        raise SplitinvError(
            f"{name} defense: expected batched activations {layout}, got shape {tuple(h.shape)}: "
            "pass a batch."
        )


class SeededDefense(Defense):
    """A defense that draws randomness from its own generators, one per device, all seeded with ``seed``.

    :meth:`generator` returns the generator for a device (created and seeded on first use); :meth:`reset`
    restarts every sequence from ``seed``. The generators are not part of the ``state_dict``.
    """

    stochastic = True

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.seed = check_seed(self.name, seed)
        self._generators: dict[str, torch.Generator] = {}

    def generator(self, device: torch.device) -> torch.Generator:
        key = str(device)
        if key not in self._generators:
            self._generators[key] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[key]

    def reset(self) -> None:
        """Restart the draws: the next calls repeat the sequence of draws from ``seed``."""
        self._generators.clear()
