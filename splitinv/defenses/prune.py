"""Channel pruning: the device zeroes a fixed set of channels (``conf/defense/prune.yaml``).

The pruned channels are ``round(fraction * C)`` of the ``C`` channels (at least 1), drawn at random once from
``seed`` and ``C`` alone (a CPU ``torch.Generator``; the same on every device, every call and every batch), so
the defense is deterministic. They are not chosen from the data: no statistics of any batch are used.
Channels are dim 1 of (B, C, H, W) maps and (B, C) vectors, the last dim of (B, N, C) tokens (see
:mod:`splitinv.defenses.quantize`). The gradient is zero on the pruned channels and the identity elsewhere.

The payload counts only the kept channels: the server knows which channels are pruned and the device does not
send them.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from splitinv.defenses.base import Defense
from splitinv.defenses.common import channel_dim, check_batched, check_number, check_seed
from splitinv.errors import SplitinvError


class ChannelPrune(Defense):
    """Zeroes a seeded random ``fraction`` of the channels, the same ones on every call."""

    name = "prune"
    strength_key = "fraction"

    def __init__(self, fraction: float = 0.5, seed: int = 0) -> None:
        super().__init__()
        fraction = check_number(self.name, "fraction", fraction)
        if not 0 < fraction <= 1:
            raise SplitinvError(
                f"prune defense: fraction must be in (0, 1], got {fraction}: set defense.fraction to the "
                "share of channels to zero, e.g. 0.5."
            )
        self.fraction = fraction
        self.seed = check_seed(self.name, seed)
        self._pruned: dict[int, torch.Tensor] = {}

    def pruned_channels(self, channels: int) -> torch.Tensor:
        """The sorted indices of the pruned channels out of ``channels`` (a CPU int64 tensor)."""
        if channels not in self._pruned:
            n = max(1, min(channels, round(self.fraction * channels)))
            order = torch.randperm(channels, generator=torch.Generator().manual_seed(self.seed))
            self._pruned[channels] = order[:n].sort().values
        return self._pruned[channels]

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        check_batched(self.name, h, "(B, C, ...)")
        cd = channel_dim(h.ndim)
        channels = h.shape[cd]
        keep = torch.ones(channels, dtype=h.dtype, device=h.device)
        keep[self.pruned_channels(channels).to(h.device)] = 0
        shape = [1] * h.ndim
        shape[cd] = channels
        return h * keep.reshape(shape)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "fraction": self.fraction, "seed": self.seed}

    def payload_elements(self, shape: tuple[int, ...]) -> int:
        """The kept channels' elements (``shape`` is per image: (C, H, W), (N, C) tokens or (C,))."""
        cd = channel_dim(len(shape) + 1) - 1
        channels = int(shape[cd])
        kept = channels - len(self.pruned_channels(channels))
        return kept * (math.prod(shape) // channels)
