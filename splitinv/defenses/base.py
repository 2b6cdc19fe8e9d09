"""The defense interface: a transformation the device applies to the head's output before sending it.

A defense sits between head and tail (:class:`splitinv.split.Split`): ``observe(x) = defense(head(x))`` is
what the server, and so every attacker, receives. The party that shares the data applies the defense, so an
attack never sees what a defense removed.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


class Defense(nn.Module):
    """Maps head activations (B, ...) to what the device sends (B, ...).

    Subclasses set ``name``, implement ``forward`` and list their parameters in ``describe`` (recorded in
    every results file, and part of every key that depends on what the server receives). ``stochastic``
    defenses draw fresh randomness on every call (an adaptive attacker averages over it).
    """

    name: str = "defense"
    stochastic: bool = False
    # the parameter a privacy-utility curve sweeps (scale, p, bits, k, ...): tables and figures order by it
    strength_key: str | None = None
    # trained with the network (splitinv-train-defense): a run needs a victim checkpoint that carries it
    trained: bool = False

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable name and parameters."""
        return {"name": self.name}

    def restore(self, observation: torch.Tensor) -> torch.Tensor:
        """What the server does with an observation before its tail (identity by default; a projection
        maps back with its transpose, a learned bottleneck expands). Utility goes through it."""
        return observation

    def payload_elements(self, shape: tuple[int, ...]) -> int:
        """Numbers sent per image for head activations of per-image ``shape`` (a projection sends fewer)."""
        return math.prod(shape)

    @property
    def is_identity(self) -> bool:
        return False

    @property
    def strength(self) -> Any:
        """The value of ``strength_key`` in :meth:`describe` (None when the defense has no such knob)."""
        return self.describe().get(self.strength_key) if self.strength_key else None


class NoDefense(Defense):
    """The undefended split: the head's output is sent as it is."""

    name = "none"

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h

    @property
    def is_identity(self) -> bool:
        return True
