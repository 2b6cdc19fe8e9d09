"""BigGAN-deep (Brock et al. 2019) through the ``pytorch-pretrained-biggan`` package, cut between its layers.

The package's ``BigGAN.forward(z, one_hot, truncation)`` makes ``cond = [z, embeddings(one_hot)]`` and runs
``generator``: ``gen_z`` (linear, then a 4x4 map), ``layers`` (GenBlocks conditioned on ``cond`` and one
SelfAttn), ``bn``, ReLU, ``conv_to_rgb``, the first 3 channels, tanh. The adapter calls those same modules
stage by stage, so its images equal the package's (mapped to [0, 1]).

Cut points: ``latent``, ``gen_z``, ``layers.0`` .. ``layers.K``, ``bn``, ``output``. The state at ``latent``
is ``{"h": cond}``; after it, ``{"h": activation, "cond": cond}``. Latent spaces: ``z`` (``z_dim``, 128 for
the released models; class ``class_index`` fixed by the adapter) and ``cond`` (``[z, class embedding]``,
``2 * z_dim``), which a GAN-prior attack can search freely. The package is an optional dependency
(``pip install "splitinv[biggan]"``), imported only when a BigGAN is built.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from splitinv.errors import SplitinvError
from splitinv.gans.base import Generator, State
from splitinv.gans.registry import load_strict, warn_random
from splitinv.io import load_weights

WEIGHTS_NAME = "pytorch_model.bin"
CONFIG_NAME = "config.json"


def _package() -> Any:
    """The ``pytorch_pretrained_biggan`` module, or a one-line error saying how to install it."""
    try:
        import pytorch_pretrained_biggan
    except ImportError as err:  # the package also imports boto3 at import time
        raise SplitinvError(
            f"generator biggan needs pytorch-pretrained-biggan and boto3 ({err}): "
            'pip install "splitinv[biggan]"'
        ) from err
    return pytorch_pretrained_biggan


class BigGANGenerator(Generator):
    """Adapter around a ``pytorch_pretrained_biggan.BigGAN`` (``model``), at one class and truncation."""

    name = "biggan"
    channels = 3
    latent_spaces = ("z", "cond")

    def __init__(self, model: nn.Module, truncation: float = 0.4, class_index: int = 207) -> None:
        super().__init__()
        self.model = model
        config = model.config
        self.image_size = int(config.output_dim)
        self.z_dim = int(config.z_dim)
        self.num_classes = int(config.num_classes)
        self.truncation = _check_truncation(truncation)
        if not isinstance(class_index, int) or not 0 <= class_index < self.num_classes:
            raise SplitinvError(
                f"BigGAN class_index must be an int in [0, {self.num_classes}), not {class_index!r}."
            )
        self.class_index = class_index
        self.model.eval()

    def train(self, mode: bool = True) -> BigGANGenerator:
        """The wrapped model stays in eval mode: in training mode its spectral norms would run a power
        iteration, changing the weights, on every call."""
        super().train(mode)
        self.model.eval()
        return self

    def latent_shape(self, space: str = "z") -> tuple[int, ...]:
        self.check_space(space)
        return (self.z_dim,) if space == "z" else (2 * self.z_dim,)

    def class_embedding(self, n: int, like: Tensor) -> Tensor:
        """The embedding of ``class_index``, ``n`` times, on ``like``'s device and dtype."""
        one_hot = torch.zeros(n, self.num_classes, device=like.device, dtype=like.dtype)
        one_hot[:, self.class_index] = 1
        return self.model.embeddings(one_hot)

    def enter(self, latent: Tensor, space: str = "z") -> State:
        shape = self.latent_shape(space)
        if latent.ndim != 2 or tuple(latent.shape[1:]) != shape:
            raise SplitinvError(
                f"BigGAN {space} latents are (batch, {shape[0]}), got {tuple(latent.shape)}"
                + (" (cond is [z, class embedding])." if space == "cond" else ".")
            )
        if space == "z":
            latent = torch.cat((latent, self.class_embedding(latent.shape[0], latent)), dim=1)
        return {"h": latent}

    def sample_latent(
        self, n: int, space: str = "z", generator: torch.Generator | None = None, device: Any = None
    ) -> Tensor:
        """``z = truncation * TruncNormal(-2, 2)`` (the package's ``truncated_noise_sample``, drawn with torch
        from ``generator``); for ``cond``, that ``z`` followed by the class embedding."""
        self.check_space(space)
        device = device or next(self.parameters()).device
        z = torch.nn.init.trunc_normal_(torch.empty(n, self.z_dim), a=-2.0, b=2.0, generator=generator)
        z = (self.truncation * z).to(device)
        if space == "cond":
            with torch.no_grad():
                z = torch.cat((z, self.class_embedding(n, z)), dim=1)
        return z

    def stages(self) -> list[tuple[str, Callable[[State], State]]]:
        gen = self.model.generator
        width = 16 * int(self.model.config.channel_width)

        def gen_z(state: State) -> State:
            cond = state["h"]
            h = gen.gen_z(cond).view(-1, 4, 4, width).permute(0, 3, 1, 2).contiguous()  # TF's NHWC order
            return {"h": h, "cond": cond}

        def layer(module: nn.Module) -> Callable[[State], State]:
            if hasattr(module, "bn_0"):  # GenBlock: conditioned on cond and the truncation
                return lambda s: {**s, "h": module(s["h"], s["cond"], self.truncation)}
            return lambda s: {**s, "h": module(s["h"])}  # SelfAttn

        def bn(state: State) -> State:
            return {**state, "h": gen.bn(state["h"], self.truncation)}

        def output(state: State) -> State:
            h = gen.conv_to_rgb(F.relu(state["h"]))
            return {**state, "h": torch.tanh(h[:, :3])}

        return [
            ("gen_z", gen_z),
            *((f"layers.{i}", layer(m)) for i, m in enumerate(gen.layers)),
            ("bn", bn),
            ("output", output),
        ]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "truncation": self.truncation, "class_index": self.class_index}


def _check_truncation(truncation: Any) -> float:
    if isinstance(truncation, bool) or not isinstance(truncation, (int, float)) or not 0 < truncation <= 1:
        raise SplitinvError(f"BigGAN truncation must be a number in (0, 1], not {truncation!r}.")
    return float(truncation)


def _folder(weights: Path) -> Path:
    """The weights folder (``pytorch_model.bin`` + ``config.json``); a path to the .bin names its folder."""
    folder = weights.parent if weights.is_file() and weights.name == WEIGHTS_NAME else weights
    missing = [name for name in (WEIGHTS_NAME, CONFIG_NAME) if not (folder / name).is_file()]
    if not folder.is_dir() or missing:
        raise SplitinvError(
            f"BigGAN weights must be a folder holding {WEIGHTS_NAME} and {CONFIG_NAME} (as released with "
            f"pytorch-pretrained-biggan); {folder} lacks {', '.join(missing) or 'them'}."
        )
    return folder


def _init_random(model: nn.Module, iterations: int = 5) -> None:
    """Initialise what the package leaves unset (the last BatchNorm's scale and shift) and settle the spectral
    norms' singular vectors, which start random (as in the package's TF conversion: power iterations)."""
    with torch.no_grad():
        model.generator.bn.weight.fill_(1.0)
        model.generator.bn.bias.zero_()
        for module in model.modules():
            if hasattr(module, "weight_orig") and hasattr(module, "weight_v"):
                w = module.weight_orig.reshape(module.weight_orig.shape[0], -1)
                u = module.weight_u
                for _ in range(iterations):
                    v = F.normalize(w.t() @ u, dim=0, eps=1e-12)
                    u = F.normalize(w @ v, dim=0, eps=1e-12)
                module.weight_u.copy_(u)
                module.weight_v.copy_(v)


# registered lazily as "biggan" in splitinv/gans/registry.py (building by name imports this module)
def build_biggan(
    weights: Path | None,
    truncation: float = 0.4,
    class_index: int = 207,
    config: dict[str, Any] | None = None,
) -> BigGANGenerator:
    """A BigGAN-deep generator from a local folder (``pytorch_model.bin`` + ``config.json``), or random.

    ``truncation``: in (0, 1], selects the batch-norm statistics and scales sampled ``z``. ``class_index``:
    the ImageNet class (207: golden retriever). ``config``: ``BigGANConfig`` fields for a random generator
    (default: the package's 128 px BigGAN-deep); with weights, the folder's config.json is used.
    """
    package = _package()
    if weights is None:
        try:
            cfg = package.BigGANConfig.from_dict(dict(config or {}))
            model = package.BigGAN(cfg)
        except (TypeError, ValueError, IndexError, AssertionError) as err:
            raise SplitinvError(f"invalid BigGAN config {config} ({type(err).__name__}: {err}).") from err
        _init_random(model)
        generator = BigGANGenerator(model, truncation, class_index)
        warn_random("biggan")
        return generator
    if config is not None:
        raise SplitinvError("BigGAN config is for random generators: with weights, config.json is used.")
    folder = _folder(weights)
    try:
        cfg = package.BigGANConfig.from_json_file(str(folder / CONFIG_NAME))
        model = package.BigGAN(cfg)
    except (OSError, json.JSONDecodeError, TypeError, ValueError, IndexError, AssertionError) as err:
        raise SplitinvError(
            f"cannot build a BigGAN from {folder / CONFIG_NAME} ({type(err).__name__}: {err}): "
            "is it a pytorch-pretrained-biggan config.json?"
        ) from err
    # BigGAN.from_pretrained loads with strict=False, silently skipping missing keys: load strictly instead.
    state = load_weights(folder / WEIGHTS_NAME, "BigGAN")
    load_strict(model, state, folder / WEIGHTS_NAME, "BigGAN-deep generator (as config.json describes)")
    generator = BigGANGenerator(model, truncation, class_index)
    generator.weights = str(folder)
    return generator
