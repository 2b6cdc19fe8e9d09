"""Uniform quantisation of the activations to ``bits`` bits (``conf/defense/quantize.yaml``).

For each group of activations, per image, the device maps every value to the nearest of ``2**bits`` evenly
spaced levels from the group's minimum to its maximum (both included)::

    step = (max - min) / (2**bits - 1);   q(h) = min + round((h - min) / step) * step

so a group takes at most ``2**bits`` distinct values and no value moves by more than ``step / 2``. A group
whose values are all equal is sent exactly. The group is

- ``granularity: tensor``: all of one image's activations (one min and max per image);
- ``granularity: channel``: one channel of one image (one min and max per image and channel).

The sent value is the dequantised float ``q(h)``: what a server decoding ``bits``-bit codes plus each group's
min and max would reconstruct. Statistics are per image, so an observation never depends on its batch.

**Channels** (here and in :mod:`splitinv.defenses.prune`): dim 1 of (B, C, H, W) maps, (B, C) vectors and any
other (B, C, ...) tensor; the last dim of (B, N, C) ViT tokens (every 3-d activation is read as tokens).

**Gradient**: a straight-through estimator. The forward value is ``q(h)``, the backward pass is the identity,
so an adaptive optimisation attacker can differentiate through the defense. (It is computed as
``q(h).detach() + (h - h.detach())``, the same as ``h + (q(h) - h).detach()`` but exactly ``q(h)`` in value,
without a rounding error of ``h + (q - h)`` adding distinct values.)
"""

from __future__ import annotations

from typing import Any

import torch

from splitinv.defenses.base import Defense
from splitinv.defenses.common import channel_dim, check_batched, straight_through
from splitinv.errors import SplitinvError

GRANULARITIES = ("tensor", "channel")
MAX_BITS = 32


class Quantize(Defense):
    """Rounds each image's (or image channel's) activations to ``2**bits`` levels from its min to its max."""

    name = "quantize"
    strength_key = "bits"

    def __init__(self, bits: int = 8, granularity: str = "tensor") -> None:
        super().__init__()
        if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= MAX_BITS:
            raise SplitinvError(
                f"quantize defense: bits must be an integer from 1 to {MAX_BITS}, got {bits!r}: set "
                "defense.bits, e.g. 8 (2**bits levels)."
            )
        if granularity not in GRANULARITIES:
            raise SplitinvError(
                f"quantize defense: unknown granularity {granularity!r}: set defense.granularity to tensor "
                "(one range per image) or channel (one range per image and channel)."
            )
        self.bits, self.granularity = int(bits), str(granularity)

    def quantize(self, h: torch.Tensor) -> torch.Tensor:
        """``q(h)``, without the straight-through gradient."""
        check_batched(self.name, h)
        x = h.detach()
        x = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        if self.granularity == "tensor":
            dims = tuple(range(1, x.ndim))
        else:
            cd = channel_dim(x.ndim)
            if x.ndim == 2:
                raise SplitinvError(
                    f"quantize defense: granularity=channel on (B, C) vectors of shape {tuple(h.shape)} has "
                    "one value per channel and image, so nothing would be quantised: use "
                    "defense.granularity=tensor."
                )
            dims = tuple(d for d in range(1, x.ndim) if d != cd)
        lo = x.amin(dim=dims, keepdim=True)
        hi = x.amax(dim=dims, keepdim=True)
        levels = 2**self.bits - 1
        step = (hi - lo) / levels
        step = torch.where(step > 0, step, torch.ones_like(step))  # constant groups: sent exactly
        index = torch.round((x - lo) / step).clamp_(0, levels)
        return (lo + index * step).to(h.dtype)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return straight_through(h, self.quantize(h))

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "bits": self.bits, "granularity": self.granularity}
