"""A DCGAN-style generator/discriminator pair (Radford et al. 2016) that splitinv trains itself.

Generator: a transposed convolution from the latent to 4x4, then stride-2 blocks (ConvTranspose, BatchNorm,
ReLU) to half the image size, and a last transposed convolution with tanh. Discriminator: the mirror image,
stride-2 convolutions with LeakyReLU(0.2) (BatchNorm from the second block on) down to 4x4, then one 4x4
convolution to a logit. Both are plain ``nn.Sequential`` chains of named blocks, so the generator's cut points
are ``block1..blockN, output`` and the discriminator cuts like any classifier.
"""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from splitinv.errors import SplitinvError
from splitinv.gans.base import Generator, sequential_stages
from splitinv.gans.registry import load_strict, warn_random
from splitinv.io import load_weights
from splitinv.victims import Victim, is_random_weights

GAN_FORMAT = "splitinv-gan/1"


def _n_blocks(image_size: int) -> int:
    """Blocks at 4x4 ... image_size/2 (the generator's output layer doubles once more; the
    discriminator's blocks halve image_size down to 4x4)."""
    steps = math.log2(image_size / 4)
    if image_size < 8 or steps != int(steps):
        raise SplitinvError(f"DCGAN image_size must be a power of two >= 8, not {image_size}.")
    return int(steps)


def _init(module: nn.Module) -> None:
    """The DCGAN paper's initialisation: N(0, 0.02) convolutions, N(1, 0.02) BatchNorm scales."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class DCGANGenerator(Generator):
    """DCGAN generator on ``z`` ~ N(0, I) of ``nz`` dimensions, images ``channels`` x ``image_size``^2."""

    name = "dcgan"

    def __init__(self, nz: int = 64, ngf: int = 32, channels: int = 3, image_size: int = 32) -> None:
        super().__init__()
        self.nz, self.ngf, self.channels, self.image_size = nz, ngf, channels, image_size
        n = _n_blocks(image_size)
        width = [ngf * 2 ** (n - 1 - i) for i in range(n)]  # e.g. 32 px: 4ngf (4x4), 2ngf (8x8), ngf (16x16)
        blocks: OrderedDict[str, nn.Module] = OrderedDict()
        blocks["block1"] = nn.Sequential(
            nn.ConvTranspose2d(nz, width[0], 4, 1, 0, bias=False), nn.BatchNorm2d(width[0]), nn.ReLU(True)
        )
        for i in range(1, n):
            blocks[f"block{i + 1}"] = nn.Sequential(
                nn.ConvTranspose2d(width[i - 1], width[i], 4, 2, 1, bias=False),
                nn.BatchNorm2d(width[i]),
                nn.ReLU(True),
            )
        blocks["output"] = nn.Sequential(nn.ConvTranspose2d(width[-1], channels, 4, 2, 1), nn.Tanh())
        self.net = nn.Sequential(blocks)
        _init(self)

    def latent_shape(self, space: str = "z") -> tuple[int, ...]:
        self.check_space(space)
        return (self.nz,)

    def enter(self, latent: Tensor, space: str = "z") -> dict[str, Tensor]:
        self.check_space(space)
        if latent.ndim != 2 or latent.shape[1] != self.nz:
            raise SplitinvError(f"DCGAN latents are (batch, {self.nz}), got {tuple(latent.shape)}.")
        return {"h": latent[:, :, None, None]}

    def stages(self):
        return sequential_stages(list(self.net.named_children()))

    def config(self) -> dict[str, Any]:
        return {"nz": self.nz, "ngf": self.ngf, "channels": self.channels, "image_size": self.image_size}


class DCGANDiscriminator(nn.Module):
    """DCGAN discriminator on images in [-1, 1]; returns one logit per image, shape (B, 1)."""

    def __init__(self, ndf: int = 32, channels: int = 3, image_size: int = 32) -> None:
        super().__init__()
        self.ndf, self.channels, self.image_size = ndf, channels, image_size
        n = _n_blocks(image_size)
        blocks: OrderedDict[str, nn.Module] = OrderedDict()
        blocks["block1"] = nn.Sequential(nn.Conv2d(channels, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True))
        for i in range(1, n):
            c_in, c_out = ndf * 2 ** (i - 1), ndf * 2**i
            blocks[f"block{i + 1}"] = nn.Sequential(
                nn.Conv2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2, True)
            )
        blocks["logit"] = nn.Sequential(nn.Conv2d(ndf * 2 ** (n - 1), 1, 4, 1, 0), nn.Flatten())
        self.net = nn.Sequential(blocks)
        self.num_classes = 1
        _init(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def config(self) -> dict[str, Any]:
        return {"ndf": self.ndf, "channels": self.channels, "image_size": self.image_size}


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A ``splitinv-gan/1`` checkpoint written by ``splitinv-train-gan``, or a one-line error."""
    obj = load_weights(path, "DCGAN")
    if obj.get("format") != GAN_FORMAT:
        raise SplitinvError(
            f"{path} is not a DCGAN checkpoint written by splitinv-train-gan (format {obj.get('format')!r})."
        )
    return obj


# registered lazily as "dcgan" in splitinv/gans/registry.py (building by name imports this module)
def build_dcgan(weights: Path | None, **kwargs: Any) -> DCGANGenerator:
    """A DCGAN generator: from a ``splitinv-train-gan`` checkpoint (its settings win), or random."""
    if weights is None:
        warn_random("dcgan")
        return DCGANGenerator(**kwargs)
    ckpt = load_checkpoint(weights)
    generator = DCGANGenerator(**ckpt["generator_config"])
    load_strict(generator, ckpt["generator"], weights, "DCGAN generator")
    generator.weights = str(weights)
    return generator


# registered lazily as the victim "dcgan_discriminator" in splitinv/victims.py
def build_dcgan_discriminator(
    weights: str | Path | None, num_classes: int | None = None, image_size: int | None = None, **kwargs: Any
) -> Victim:
    """The discriminator of a ``splitinv-train-gan`` checkpoint as a victim on [0, 1] images (one logit)."""
    if is_random_weights(weights):
        warnings.warn("victim dcgan_discriminator has RANDOM weights (weights=None).", stacklevel=3)
        model, desc = DCGANDiscriminator(image_size=image_size or 32, **kwargs), "random"
    else:
        path = Path(weights).expanduser()
        ckpt = load_checkpoint(path)
        model, desc = DCGANDiscriminator(**ckpt["discriminator_config"]), str(path)
        load_strict(model, ckpt["discriminator"], path, "DCGAN discriminator")
    if image_size not in (None, model.image_size):
        raise SplitinvError(f"this discriminator takes {model.image_size} px images, not {image_size}.")
    victim = Victim(
        model,
        name="dcgan_discriminator",
        family="splitinv",
        weights=desc,
        image_size=model.image_size,
        num_classes=1,
        mean=(0.5,) * model.channels,  # [0, 1] -> [-1, 1], the range the GAN was trained on
        std=(0.5,) * model.channels,
    )
    return victim.eval()
