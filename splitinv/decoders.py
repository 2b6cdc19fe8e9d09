"""Networks that map cut-point activations to images: He et al.'s inverse network / Dosovitskiy & Brox's
up-convolutional decoders and their building blocks. Below the attacks and the defenses, which both use them
(the inverse-decoder attack, DCI's inverters, the adversarial defense's proxy decoder).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from splitinv.errors import SplitinvError


class TokensToMap(nn.Module):
    """(B, N, C) tokens -> (B, C, g, g): drop the ``prefix`` class/register tokens, lay out the grid."""

    def __init__(self, prefix: int, grid: int) -> None:
        super().__init__()
        self.prefix, self.grid = prefix, grid

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = z[:, self.prefix :]
        return z.transpose(1, 2).reshape(z.shape[0], z.shape[2], self.grid, self.grid)


class VectorToMap(nn.Module):
    """(B, C) vectors -> (B, width, side, side) through one linear layer."""

    def __init__(self, channels: int, width: int, side: int) -> None:
        super().__init__()
        self.width, self.side = width, side
        self.linear = nn.Linear(channels, width * side * side)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.linear(z.flatten(1)).view(z.shape[0], self.width, self.side, self.side)


def to_map(feature_shape: tuple[int, ...], size: int) -> tuple[nn.Module, int, int]:
    """(module, channels, side): lays one image's features out as a (C, side, side) map for a conv decoder.

    Feature maps pass through; ViT tokens are laid out on their grid; vectors go through one linear layer.
    """
    if len(feature_shape) == 3:
        return nn.Identity(), feature_shape[0], feature_shape[1]
    if len(feature_shape) == 2:
        tokens, cin = feature_shape
        side = math.isqrt(tokens)
        return TokensToMap(tokens - side * side, side), cin, side
    if len(feature_shape) == 1:
        cin, side = min(max(feature_shape[0], 64), 512), min(4, size)
        return VectorToMap(feature_shape[0], cin, side), cin, side
    raise SplitinvError(
        f"cannot invert features of shape {tuple(feature_shape)}: expected (C, H, W) maps, (N, C) tokens "
        "or (C,) vectors."
    )


def conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2, inplace=True)
    )


def up_block(cin: int, cout: int) -> nn.Sequential:
    # A 4x4 stride-2 transposed conv (Dosovitskiy & Brox): on CPU it trains ~5x faster than upsample + conv.
    return nn.Sequential(
        nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1),
        nn.BatchNorm2d(cout),
        nn.LeakyReLU(0.2, inplace=True),
        conv_block(cout, cout),
    )


class Decoder(nn.Module):
    """Convolutional upsampling from a cut point's output to an image in [0, 1]."""

    def __init__(
        self, feature_shape: tuple[int, ...], image_shape: tuple[int, int, int], width: int | None = None
    ) -> None:
        super().__init__()
        self.feature_shape, self.image_shape = tuple(feature_shape), tuple(image_shape)
        channels, size = image_shape[0], image_shape[1]
        self.to_map, cin, side = to_map(feature_shape, size)
        ups = max(0, math.ceil(math.log2(size / side))) if side < size else 0
        w = int(width or min(512, max(64, 32 * 2**ups), 8 * size))  # more upsampling: wider; capped by size
        self.width = w  # saved with the weights, so a checkpoint rebuilds the same architecture
        layers: list[nn.Module] = [conv_block(cin, w)]
        for _ in range(ups):
            layers.append(up_block(w, max(32, w // 2)))
            w = max(32, w // 2)
        self.body = nn.Sequential(*layers)
        self.out = nn.Conv2d(w, channels, 3, padding=1)
        self.size = size

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.body(self.to_map(z.float()))
        if h.shape[-1] != self.size or h.shape[-2] != self.size:
            h = F.interpolate(h, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return torch.sigmoid(self.out(h))


def build_decoder(
    feature_shape: tuple[int, ...], image_shape: tuple[int, int, int], width: int | None = None
) -> Decoder:
    """A decoder from one image's cut-point output shape (no batch dim) to ``image_shape`` (C, H, W)."""
    return Decoder(feature_shape, image_shape, width)


class PaperDecoder(nn.Module):
    """A published inverse network (``splitinv.nets``), which outputs a normalised image, in pixel units:
    ``mean + std * net(features)`` (not clamped: the attack clips its reconstructions to [0, 1]).

    ``architecture``, ``victim`` and ``cut`` name it, so a saved checkpoint rebuilds the same network.
    """

    def __init__(
        self,
        net: nn.Module,
        feature_shape: tuple[int, ...],
        image_shape: tuple[int, int, int],
        mean: tuple[float, ...],
        std: tuple[float, ...],
        *,
        architecture: str,
        victim: str,
        cut: str,
    ) -> None:
        super().__init__()
        self.net = net
        self.feature_shape, self.image_shape = tuple(feature_shape), tuple(image_shape)
        self.architecture, self.victim, self.cut = architecture, victim, cut
        self.width = None
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def normalized(self, z: torch.Tensor) -> torch.Tensor:
        """The network's own output: the image in the victim's normalised units."""
        return self.net(z.float())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.mean + self.std * self.normalized(z)


def build_paper_decoder(
    architecture: str,
    victim: str,
    cut: str,
    feature_shape: tuple[int, ...],
    image_shape: tuple[int, int, int],
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> PaperDecoder:
    """The inverse network that ``architecture`` (``he2019``) published for ``victim`` cut at ``cut``."""
    if architecture != "he2019":
        raise SplitinvError(f"unknown decoder architecture {architecture!r}: use he2019 or null.")
    from splitinv.nets.he2019 import he2019_decoder

    net = he2019_decoder(victim, cut)
    with torch.no_grad():
        out = net(torch.zeros(1, *feature_shape))
    if tuple(out.shape[1:]) != tuple(image_shape):
        raise SplitinvError(
            f"He et al.'s inverse network for {victim} at {cut} gives {tuple(out.shape[1:])} images, not "
            f"{tuple(image_shape)}: run it on the paper's image size."
        )
    return PaperDecoder(
        net, feature_shape, image_shape, mean, std, architecture=architecture, victim=victim, cut=cut
    )
