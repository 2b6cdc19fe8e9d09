"""Karras et al.'s Progressive GAN generator (ICLR 2018), in the layout of GAN Dissection's LSUN models.

The network is a plain chain ``layer1 .. layerN, output_RxR`` (``N = 2 log2(R / 4) + 2``) on a 512-d latent
seen as a 1x1 feature map:

- ``layer1``: PixelNorm, 4x4 convolution with padding 3 (the paper's dense layer: 1x1 -> 4x4);
- ``layer2``: PixelNorm, 3x3 convolution;
- then a pair per resolution doubling: (PixelNorm, nearest 2x upsample, 3x3 conv), (PixelNorm, 3x3 conv);
- ``output_RxR``: PixelNorm, 1x1 convolution to RGB, hardtanh to [-1, 1].

Every convolution has no bias of its own; it is followed by an equalised-learning-rate layer ``wscale`` that
multiplies by the He constant ``gain / sqrt(fan_in)`` (``fan_in = in_channels * k^2``, gain sqrt(2); gain 1
for the RGB output) and adds the bias ``wscale.b``, then LeakyReLU(0.2). Pixel normalisation before each
convolution is the paper's normalisation after each one (and of the latent). The parameter names
(``layerK.conv.weight``, ``layerK.wscale.b``, ``output_RxR.conv.weight``, ...) are those of the published
state_dicts, which load with strict key matching.
"""

from __future__ import annotations

import itertools
import math
import re
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from splitinv.errors import SplitinvError
from splitinv.gans.base import Generator, State, sequential_stages
from splitinv.gans.registry import load_strict, warn_random
from splitinv.io import load_weights

LATENT_DIM = 512
DEFAULT_RESOLUTION = 256


def n_layers(resolution: int) -> int:
    """Convolution layers (``layer1 .. layerN``) of a generator with ``resolution`` px output."""
    return 2 * int(math.log2(resolution // 4)) + 2


def _check_resolution(resolution: Any) -> int:
    if not isinstance(resolution, int) or resolution < 4 or resolution & (resolution - 1):
        raise SplitinvError(f"ProGAN resolution must be a power of two >= 4 (e.g. 256), not {resolution!r}.")
    return resolution


def default_widths(resolution: int) -> list[int]:
    """``[latent dims, 4x4 depth, 8x8 depth, ..., RxR depth]``: 512 at low resolutions, halving above.

    ``min(fmap_base / 2^stage, 512)`` with ``fmap_base`` 4096 up to 256 px (GAN Dissection's LSUN models:
    512, 512, 512, 256, 128, 64, 32 at 4 .. 256 px) and 8192 above (the 1024 px CelebA-HQ model).
    """
    _check_resolution(resolution)
    base = 4096 if resolution <= 256 else 8192
    stages = int(math.log2(resolution // 4)) + 1
    return [LATENT_DIM, *(min(base // 2**stage, 512) for stage in range(1, stages + 1))]


class PixelNorm(nn.Module):
    """Each pixel's feature vector scaled to unit root-mean-square (eps 1e-8)."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + 1e-8)


class Upsample2x(nn.Module):
    """Nearest-neighbour 2x upsampling."""

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=2, mode="nearest")


class WScale(nn.Module):
    """Equalised learning rate: ``x * gain / sqrt(fan_in) + b`` (the convolution before it has no bias)."""

    def __init__(self, channels: int, fan_in: int, gain: float = math.sqrt(2)) -> None:
        super().__init__()
        self.scale = gain / math.sqrt(fan_in)
        self.b = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale + self.b.view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"channels={self.b.numel()}, scale={self.scale:.4g}"


class ConvBlock(nn.Module):
    """PixelNorm, [2x upsample], Conv2d(bias=False) ``conv``, WScale ``wscale``, LeakyReLU(0.2)."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, padding: int, upsample: bool = False) -> None:
        super().__init__()
        self.norm = PixelNorm()
        self.up = Upsample2x() if upsample else nn.Identity()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size, 1, padding, bias=False)
        self.wscale = WScale(c_out, c_in * kernel_size**2)
        self.relu = nn.LeakyReLU(0.2)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.wscale(self.conv(self.up(self.norm(x)))))


class OutputBlock(nn.Module):
    """PixelNorm, 1x1 Conv2d(bias=False) to RGB, WScale with gain 1, hardtanh to [-1, 1]."""

    def __init__(self, c_in: int, channels: int = 3) -> None:
        super().__init__()
        self.norm = PixelNorm()
        self.conv = nn.Conv2d(c_in, channels, 1, bias=False)
        self.wscale = WScale(channels, c_in, gain=1.0)
        self.clamp = nn.Hardtanh()

    def forward(self, x: Tensor) -> Tensor:
        return self.clamp(self.wscale(self.conv(self.norm(x))))


class ProgressiveGenerator(nn.Sequential):
    """The ProGAN network ``layer1 .. layerN, output_RxR`` on a (B, latent) or (B, latent, 1, 1) input.

    ``widths`` is ``[latent dims, 4x4 depth, 8x8 depth, ..., RxR depth]`` (default :func:`default_widths`);
    the output is ``4 * 2^(len(widths) - 2)`` px, in [-1, 1].
    """

    def __init__(self, resolution: int | None = None, widths: Sequence[int] | None = None) -> None:
        widths = _widths(resolution, widths)
        resolution = 4 * 2 ** (len(widths) - 2)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        layers["layer1"] = ConvBlock(widths[0], widths[1], 4, padding=3)
        layers["layer2"] = ConvBlock(widths[1], widths[1], 3, padding=1)
        for c_in, c_out in itertools.pairwise(widths[1:]):
            layers[f"layer{len(layers) + 1}"] = ConvBlock(c_in, c_out, 3, padding=1, upsample=True)
            layers[f"layer{len(layers) + 1}"] = ConvBlock(c_out, c_out, 3, padding=1)
        layers[f"output_{resolution}x{resolution}"] = OutputBlock(widths[-1])
        super().__init__(layers)
        self.resolution, self.widths = resolution, list(widths)
        # the paper's initialisation: N(0, 1) weights (scaled at run time by wscale), zero biases
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.reshape(x.shape[0], x.shape[1], 1, 1))


def _widths(resolution: int | None, widths: Sequence[int] | None) -> list[int]:
    """The feature depths for a ``resolution`` and/or explicit ``widths``, checked to agree."""
    if widths is None:
        return default_widths(_check_resolution(DEFAULT_RESOLUTION if resolution is None else resolution))
    widths = list(widths)
    if len(widths) < 2 or not all(isinstance(w, int) and w > 0 for w in widths):
        raise SplitinvError(
            f"ProGAN widths must be [latent dims, 4x4 depth, 8x8 depth, ...] (positive ints), not {widths}."
        )
    implied = 4 * 2 ** (len(widths) - 2)
    if resolution is not None and resolution != implied:
        raise SplitinvError(
            f"ProGAN widths {widths} make {implied} px images, not resolution={resolution}: "
            "give one depth per resolution from 4x4 up, after the latent dims."
        )
    return widths


class ProGANGenerator(Generator):
    """Adapter: a :class:`ProgressiveGenerator` on ``z`` ~ N(0, I), cut between its layers."""

    name = "progan"
    channels = 3
    latent_spaces = ("z",)

    def __init__(self, resolution: int | None = None, widths: Sequence[int] | None = None) -> None:
        super().__init__()
        self.net = ProgressiveGenerator(resolution, widths)
        self.image_size = self.net.resolution
        self.latent_dim = self.net.widths[0]

    def latent_shape(self, space: str = "z") -> tuple[int, ...]:
        self.check_space(space)
        return (self.latent_dim,)

    def enter(self, latent: Tensor, space: str = "z") -> dict[str, Tensor]:
        self.check_space(space)
        if latent.ndim != 2 or latent.shape[1] != self.latent_dim:
            raise SplitinvError(f"ProGAN latents are (batch, {self.latent_dim}), got {tuple(latent.shape)}.")
        return {"h": latent[:, :, None, None]}

    def stages(self) -> list[tuple[str, Callable[[State], State]]]:
        return sequential_stages(list(self.net.named_children()))

    def config(self) -> dict[str, Any]:
        return {"resolution": self.image_size, "widths": list(self.net.widths)}


_OUTPUT_KEY = re.compile(r"output_(\d+)x\1\.conv\.weight")


def _from_old_layout(state: dict[str, Any]) -> dict[str, Any]:
    """Rename the older ``features.K`` / ``output`` parameter names to ``layer{K+1}`` / ``output_RxR``."""
    n = 1 + max(int(k.split(".")[1]) for k in state if re.match(r"features\.\d+\.", k))
    res = 4 * 2 ** ((n - 2) // 2)
    renamed = {}
    for key, value in state.items():
        if re.match(r"features\.\d+\.", key):
            _, index, rest = key.split(".", 2)
            key = f"layer{int(index) + 1}.{rest}"
        elif key.startswith("output."):
            key = f"output_{res}x{res}." + key.split(".", 1)[1]
        renamed[key] = value
    return renamed


def progan_state_dict(path: Path) -> dict[str, Tensor]:
    """The ProGAN state_dict in a weights file (a plain state_dict, or a dict with a ``state_dict`` key)."""
    state = load_weights(path, "ProGAN")
    if isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if "features.0.conv.weight" in state:
        state = _from_old_layout(state)
    return state


def widths_from_state_dict(state: dict[str, Any], path: Any) -> list[int]:
    """Resolution (from the ``output_RxR`` key) and feature depths (from the conv weights) of a state_dict."""
    found = [int(m.group(1)) for k in state if (m := _OUTPUT_KEY.fullmatch(k))]
    if len(found) != 1:
        raise SplitinvError(
            f"{path} is not a ProGAN generator state_dict: expected one output_RxR.conv.weight key "
            f"(as in layer1..layerN, output_256x256), found {len(found)}."
        )
    widths = default_widths(_check_resolution(found[0]))
    for stage in range(1, len(widths)):  # layer1 makes 4x4; layer 2*stage-1 makes the stage's resolution
        weight = state.get(f"layer{2 * stage - 1}.conv.weight")
        if isinstance(weight, Tensor) and weight.ndim == 4:
            widths[stage] = int(weight.shape[0])
            if stage == 1:
                widths[0] = int(weight.shape[1])
    return widths


# registered lazily as "progan" in splitinv/gans/registry.py (building by name imports this module)
def build_progan(
    weights: Path | None, resolution: int | None = None, widths: Sequence[int] | None = None
) -> ProGANGenerator:
    """A ProGAN generator: from a plain state_dict (resolution and widths read from it), or random.

    ``resolution``: output size, default 256 (with weights, it is read from the ``output_RxR`` key and an
    explicit different value is an error). ``widths``: ``[latent dims, 4x4 depth, ..., RxR depth]`` for a
    random generator (default :func:`default_widths`).
    """
    if weights is None:
        generator = ProGANGenerator(resolution, widths)  # bad settings fail before the warning
        warn_random("progan")
        return generator
    state = progan_state_dict(weights)
    found = widths_from_state_dict(state, weights)
    res = 4 * 2 ** (len(found) - 2)
    if resolution is not None and resolution != res:
        raise SplitinvError(
            f"ProGAN weights {weights} are for {res} px images, not resolution={resolution}: "
            "leave resolution unset (null) to read it from the file."
        )
    if widths is not None and list(widths) != found:
        raise SplitinvError(
            f"ProGAN weights {weights} have widths {found}, not {list(widths)}: leave widths unset (null)."
        )
    generator = ProGANGenerator(widths=found)
    load_strict(generator.net, state, weights, f"ProGAN {res}x{res} generator")
    generator.weights = str(weights)
    return generator
