"""A learned low-dimensional bottleneck at the cut (``conf/defense/bottleneck.yaml``; the learned channel
reduction of DISCO-like and BottleNet-like split computing): the device sends fewer channels, trained with the
network.

The device sends ``encoder(h)``: a 1x1 convolution from the ``C`` channels of (B, C, H, W) maps to ``k``, or
a linear map on the channel (last) dim of (B, N, C) tokens and of (B, C) vectors. The server maps it back
with ``decoder`` (a 1x1 convolution / linear map from ``k`` to ``C``) in :meth:`Bottleneck.restore` before
its tail. ``k`` (``channels``) is a count or a fraction of ``C`` (a float in (0, 1], rounded, at least 1).
The payload is ``k * H * W`` (maps), ``N * k`` (tokens) or ``k`` (vectors) numbers per image.

Both maps are trained with the network (``splitinv-train-defense defense=bottleneck``), starting from the
principal components of the channel activations on the first training batch (the best linear bottleneck for
that batch), and saved in its checkpoint (:func:`splitinv.defenses.checkpoint.load_defense` loads them). They
are created for the activation shape by :meth:`Bottleneck.build`; a bottleneck used before that builds itself
on its first input with random weights, and warns.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import nn

from splitinv.defenses.checkpoint import TrainedDefense
from splitinv.defenses.common import check_batched, check_count, resolve_count
from splitinv.errors import SplitinvError


class _Channels(nn.Module):
    """A linear map on the channels: a 1x1 conv for (B, C, H, W) maps, a Linear on the last dim otherwise."""

    def __init__(self, cin: int, cout: int, maps: bool) -> None:
        super().__init__()
        self.map = nn.Conv2d(cin, cout, 1) if maps else nn.Linear(cin, cout)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.map(z)

    def set(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Set it to ``z -> weight @ z + bias`` on the channels (``weight``: cout x cin)."""
        with torch.no_grad():
            self.map.weight.copy_(weight.reshape(self.map.weight.shape))
            self.map.bias.copy_(bias)


class Bottleneck(TrainedDefense):
    """Sends ``encoder(h)`` with ``k`` channels; restores ``decoder(v)`` with the head's ``C`` channels."""

    name = "bottleneck"
    strength_key = "channels"

    def __init__(self, channels: int | float = 0.25) -> None:
        super().__init__()
        self.channels = check_count(self.name, "channels", channels, "the channels at the cut")
        self.encoder: _Channels | None = None
        self.decoder: _Channels | None = None

    @staticmethod
    def _layout(feature_shape: tuple[int, ...]) -> tuple[int, bool]:
        """(channels, is a feature map) for one image's activation shape."""
        if len(feature_shape) == 3:
            return int(feature_shape[0]), True
        if len(feature_shape) in (1, 2):
            return int(feature_shape[-1]), False
        raise SplitinvError(
            f"bottleneck defense: expected (C, H, W) maps, (N, C) tokens or (C,) vectors at the cut, got "
            f"activations of shape {tuple(feature_shape)}: cut elsewhere."
        )

    def count(self, channels: int) -> int:
        """``k``: the channels sent out of the head's ``channels``."""
        return resolve_count(self.name, "channels", self.channels, channels, "channels at the cut")

    def _build(self, feature_shape: tuple[int, ...]) -> None:
        c, maps = self._layout(feature_shape)
        k = self.count(c)
        self.encoder, self.decoder = _Channels(c, k, maps), _Channels(k, c, maps)

    def fit_start(self, x: torch.Tensor, h: torch.Tensor) -> None:
        """Build, and start from PCA of the batch's channels (encoder: the top-k directions, decoder back)."""
        self.build(h.shape[1:])
        assert self.encoder is not None and self.decoder is not None
        c, maps = self._layout(tuple(h.shape[1:]))
        k = self.count(c)
        z = (h.movedim(1, -1) if maps else h).reshape(-1, c).detach().double()
        mean = z.mean(0)
        cov = (z - mean).T @ (z - mean) / max(1, z.shape[0] - 1)
        _, vectors = torch.linalg.eigh(cov)  # ascending eigenvalues
        top = vectors[:, -k:].flip(1).T  # (k, c): orthonormal rows, largest variance first
        top = top.to(device=self.encoder.map.weight.device, dtype=self.encoder.map.weight.dtype)
        mean = mean.to(top)
        self.encoder.set(top, -(top @ mean))  # v = P (h - mean)
        self.decoder.set(top.T, mean)  # h' = P^T v + mean

    def _built(self, h: torch.Tensor) -> tuple[_Channels, _Channels]:
        if self.encoder is None or self.decoder is None:
            warnings.warn(
                "bottleneck defense built on its first input with RANDOM weights: it is trained with the "
                "network (splitinv-train-defense defense=bottleneck); load its checkpoint with "
                "splitinv.defenses.checkpoint.load_defense.",
                stacklevel=3,
            )
            self.build(h.shape[1:])
            self.to(h.device)
        assert self.encoder is not None and self.decoder is not None
        return self.encoder, self.decoder

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        check_batched(self.name, h)
        encoder, _ = self._built(h)
        if tuple(h.shape[1:]) != self.feature_shape:
            raise SplitinvError(
                f"bottleneck defense was built for activations of shape {self.feature_shape}, got "
                f"{tuple(h.shape[1:])}: use the victim, cut and image size it was trained for."
            )
        return encoder(h)

    def restore(self, observation: torch.Tensor) -> torch.Tensor:
        """``decoder(v)``: activations with the head's channels again, for the tail."""
        if self.decoder is None or self.feature_shape is None:
            raise SplitinvError(
                "bottleneck defense: restore needs its decoder, built with the defense: call "
                "split.observe(x) (or load the trained defense with load_defense) before split.serve."
            )
        c, maps = self._layout(self.feature_shape)
        k = self.count(c)
        expected = (k, *self.feature_shape[1:]) if maps else (*self.feature_shape[:-1], k)
        if tuple(observation.shape[1:]) != expected:
            raise SplitinvError(
                f"bottleneck defense: expected observations of shape (B, {', '.join(map(str, expected))}) "
                f"for activations of shape {self.feature_shape}, got {tuple(observation.shape)}: restore "
                "observations this defense made."
            )
        return self.decoder(observation)

    def payload_elements(self, shape: tuple[int, ...]) -> int:
        """``k`` channels at the activation's resolution: ``k*H*W``, ``N*k`` or ``k``."""
        c, _ = self._layout(tuple(shape))
        return self.count(c) * (math.prod(shape) // c)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "channels": self.channels}
