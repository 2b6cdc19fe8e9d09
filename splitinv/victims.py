"""Victim classifiers by name: torchvision and timm models, with their weights and their input normalisation.

A :class:`Victim` takes images in [0, 1]; the mean/std normalisation its weights expect is a module inside it,
so attacks and metrics never see normalised pixels.
"""

from __future__ import annotations

import difflib
import logging
import os
import urllib.error
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import timm
import torch
import torchvision
from torch import nn

from splitinv.errors import SplitinvError
from splitinv.io import load_weights

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CHECKPOINT_FORMAT = "splitinv-victim/1"
# timm architectures whose constructor takes img_size (patch-embedding transformers)
_TIMM_SIZED = ("vit", "deit", "beit", "eva", "cait", "xcit", "swin", "pvt", "twins")


class Normalize(nn.Module):
    """(x - mean) / std per channel, with mean and std as buffers so they follow the module's device."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Victim(nn.Module):
    """A classifier on [0, 1] images: ``model(normalize(x))``.

    Attributes describe where it came from, for results files: ``name``, ``family`` (torchvision or timm),
    ``weights`` (``imagenet``, a file path, or ``random``), ``image_size`` and ``num_classes``.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        name: str,
        family: str,
        weights: str,
        image_size: int,
        num_classes: int,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.model = model
        self.name, self.family, self.weights = name, family, weights
        self.image_size, self.num_classes = image_size, num_classes
        self.mean, self.std = tuple(mean), tuple(std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalize(x))

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable identity of the victim, for results files."""
        return {
            "name": self.name,
            "family": self.family,
            "weights": self.weights,
            "pretrained": self.weights != "random",
            "image_size": self.image_size,
            "num_classes": self.num_classes,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    def checkpoint(self) -> dict[str, Any]:
        """The dict that :func:`build_victim` accepts back as ``weights=path`` (after torch.save)."""
        meta = self.describe()
        return {"format": CHECKPOINT_FORMAT, **meta, "state_dict": self.model.state_dict()}


def is_random_weights(weights: Any) -> bool:
    """Whether a ``weights`` value asks for random initialisation (None, "", "none", "null", "random")."""
    return weights is None or str(weights).lower() in ("", "none", "null", "random")


# Victims that are neither torchvision nor timm models (GAN discriminators): name -> builder taking
# (weights, num_classes, image_size, **kwargs) and returning a Victim. Filled by register_victim.
_REGISTRY: dict[str, Callable[..., Victim]] = {}


def register_victim(name: str) -> Callable[[Callable[..., Victim]], Callable[..., Victim]]:
    """Decorator adding a victim builder under ``name`` (for networks outside torchvision and timm)."""

    def add(builder: Callable[..., Victim]) -> Callable[..., Victim]:
        _REGISTRY[name] = builder
        return builder

    return add


def torchvision_names() -> list[str]:
    """Classification models that torchvision can build by name."""
    return sorted(torchvision.models.list_models(module=torchvision.models))


def available_victims() -> list[str]:
    """Every name :func:`build_victim` accepts (torchvision's classifiers, then timm's models)."""
    return sorted(set(torchvision_names()) | set(timm.list_models()) | set(_REGISTRY))


def _resolve_family(name: str) -> tuple[str, str]:
    """``resnet18`` -> (torchvision, resnet18); ``timm/resnet18`` or a timm-only name -> (timm, name)."""
    if name.startswith(("timm/", "timm:")):
        family, name = "timm", name[5:]
    elif name.startswith(("torchvision/", "tv/")):
        family, name = "torchvision", name.split("/", 1)[1]
    elif name in torchvision_names():
        family = "torchvision"
    elif timm.is_model(name):
        family = "timm"
    else:
        close = difflib.get_close_matches(name, available_victims(), n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise SplitinvError(
            f"unknown victim {name!r}: not a torchvision classifier nor a timm model.{hint} "
            "List them with `splitinv victims`."
        )
    if family == "torchvision" and name not in torchvision_names():
        raise SplitinvError(f"unknown torchvision classifier {name!r}; list them with `splitinv victims`.")
    if family == "timm" and not timm.is_model(name):
        raise SplitinvError(f"unknown timm model {name!r}; list them with `splitinv victims --timm`.")
    return family, name


def _cache_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _torchvision_imagenet(name: str, num_classes: int | None, kwargs: dict) -> tuple[nn.Module, dict]:
    weights = torchvision.models.get_model_weights(name).DEFAULT
    if num_classes not in (None, len(weights.meta["categories"])):
        raise SplitinvError(
            f"{name} ImageNet weights have {len(weights.meta['categories'])} classes, not {num_classes}: "
            "drop num_classes, or train a victim with `splitinv-train-victim` and pass its checkpoint."
        )
    model = torchvision.models.get_model(name, weights=None, **kwargs)
    filename = os.path.basename(weights.url)
    cached = _cache_dir() / filename
    try:
        state = weights.get_state_dict(progress=True, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as err:
        if cached.is_file():  # a truncated download, or a wrong file put there by hand
            raise SplitinvError(
                f"the cached ImageNet weights {cached} do not load into {name} ({type(err).__name__}): "
                "delete or replace that file."
            ) from err
        if not isinstance(err, (urllib.error.URLError, OSError, RuntimeError)):
            raise
        raise SplitinvError(
            f"ImageNet weights for {name} are not cached and could not be downloaded ({type(err).__name__}): "
            f"put {filename} into {_cache_dir()} (or set TORCH_HOME), or run once online."
        ) from err
    transform = weights.transforms()
    meta = {
        "mean": tuple(transform.mean),
        "std": tuple(transform.std),
        "image_size": int(transform.crop_size[0]),
        "num_classes": len(weights.meta["categories"]),
        "source": f"torchvision:{weights}",
    }
    return model, meta


def _timm_imagenet(name: str, num_classes: int | None, kwargs: dict) -> tuple[nn.Module, dict]:
    if num_classes is not None:
        kwargs = {**kwargs, "num_classes": num_classes}
    try:
        model = timm.create_model(name, pretrained=True, **kwargs)
    except (urllib.error.URLError, OSError, RuntimeError) as err:
        cfg = timm.models.get_pretrained_cfg(name)
        from huggingface_hub import constants as hf_constants  # a timm dependency

        where = (  # the folder huggingface_hub looks in (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/...)
            f"the Hugging Face cache ({hf_constants.HF_HUB_CACHE}, repo {cfg.hf_hub_id})"
            if cfg is not None and cfg.hf_hub_id
            else f"{_cache_dir()}"
        )
        raise SplitinvError(
            f"ImageNet weights for timm model {name} are not cached and could not be downloaded "
            f"({type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else ''}): "
            f"put them into {where}, or run once online."
        ) from err
    cfg = model.pretrained_cfg
    meta = {
        "mean": tuple(cfg.get("mean", IMAGENET_MEAN)),
        "std": tuple(cfg.get("std", IMAGENET_STD)),
        "image_size": int(cfg.get("input_size", (3, 224, 224))[-1]),
        "num_classes": model.num_classes,
        "source": f"timm:{cfg.get('hf_hub_id') or cfg.get('url') or name}",
    }
    return model, meta


def _build_random(family: str, name: str, num_classes: int | None, kwargs: dict) -> nn.Module:
    if num_classes is not None:
        kwargs = {**kwargs, "num_classes": num_classes}
    if family == "torchvision":
        return torchvision.models.get_model(name, weights=None, **kwargs)
    return timm.create_model(name, pretrained=False, **kwargs)


def _size_kwargs(family: str, name: str, image_size: int | None, kwargs: dict) -> dict:
    """Vision transformers are built for their input size (their position embeddings depend on it)."""
    if image_size is None or "image_size" in kwargs or "img_size" in kwargs:
        return kwargs
    if family == "torchvision" and name.startswith("vit_"):
        return {**kwargs, "image_size": int(image_size)}
    if family == "timm" and timm.models.get_arch_name(name).startswith(_TIMM_SIZED):
        return {**kwargs, "img_size": int(image_size)}
    return kwargs


def _num_classes(model: nn.Module) -> int:
    if hasattr(model, "num_classes"):
        return int(model.num_classes)
    with torch.no_grad():
        last = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return int(last[-1].out_features) if last else -1


def _load_file(path: Path) -> dict[str, Any]:
    return load_weights(
        path,
        "victim",
        "pass weights=imagenet, weights=null (random), or a checkpoint written by `splitinv-train-victim`.",
    )


def build_victim(
    name: str,
    weights: str | os.PathLike | None = None,
    num_classes: int | None = None,
    image_size: int | None = None,
    **model_kwargs: Any,
) -> Victim:
    """Build a classifier on [0, 1] images by torchvision or timm name.

    Args:
        name: a torchvision classifier (``resnet18``) or a timm model (``deit_small_patch16_224``); prefix
            ``timm/`` to pick timm where both libraries know the name.
        weights: ``"imagenet"`` (the library's pretrained weights, from the torch/HF cache or downloaded),
            a path to a state_dict or a splitinv victim checkpoint (loaded with ``weights_only=True``), or
            ``None`` for random initialisation (warned about, and recorded as ``random``).
        num_classes: output classes (default: the weights' classes, or the library default of 1000).
        image_size: the side of the square input images (default: the weights' resolution, or 224).
        model_kwargs: passed to the model constructor (e.g. ``image_size`` for torchvision ViTs).
    """
    if str(name) in _REGISTRY:
        return _REGISTRY[str(name)](weights, num_classes=num_classes, image_size=image_size, **model_kwargs)
    family, name = _resolve_family(str(name))
    if str(weights).lower() != "imagenet" or family == "timm":
        model_kwargs = _size_kwargs(family, name, image_size, model_kwargs)
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    weights_desc: str
    default_size = 224
    if is_random_weights(weights):
        model = _build_random(family, name, num_classes, model_kwargs)
        weights_desc = "random"
        warnings.warn(
            f"victim {name} has RANDOM weights (weights=None): its activations are not those of a trained "
            "network; pass weights=imagenet or a checkpoint for meaningful results.",
            stacklevel=2,
        )
    elif str(weights).lower() == "imagenet":
        load = _torchvision_imagenet if family == "torchvision" else _timm_imagenet
        model, meta = load(name, num_classes, model_kwargs)
        mean, std, default_size, num_classes = (
            meta["mean"],
            meta["std"],
            meta["image_size"],
            meta["num_classes"],
        )
        weights_desc = "imagenet"
    else:
        path = Path(weights).expanduser()
        obj = _load_file(path)
        state = obj
        if obj.get("format") == CHECKPOINT_FORMAT:
            if obj["name"] != name:
                raise SplitinvError(
                    f"checkpoint {path} holds a {obj['name']} victim, not {name}: "
                    f"set victim.name={obj['name']}"
                )
            num_classes = num_classes or obj["num_classes"]
            mean, std = tuple(obj["mean"]), tuple(obj["std"])
            default_size = obj["image_size"]
            state = obj["state_dict"]
            # ViTs' position embeddings depend on the size they were built for: build for the checkpoint's
            # (a no-op when image_size was passed, or for CNNs)
            model_kwargs = _size_kwargs(family, name, default_size, model_kwargs)
        elif "state_dict" in obj and isinstance(obj["state_dict"], dict):
            state = obj["state_dict"]
        model = _build_random(family, name, num_classes, model_kwargs)
        own = model.state_dict()
        mismatched = [k for k, v in state.items() if k in own and getattr(v, "shape", None) != own[k].shape]
        # load_state_dict raises a multi-line RuntimeError on a shape mismatch even with strict=False
        missing, unexpected = ([], []) if mismatched else model.load_state_dict(state, strict=False)
        if missing or unexpected or mismatched:
            raise SplitinvError(
                f"weights {path} do not fit {name} (missing {len(missing)}, unexpected {len(unexpected)}, "
                f"wrong shape {len(mismatched)}, first: {[*mismatched, *missing, *unexpected][:2]}): is it a "
                f"{name} checkpoint, with the right num_classes?"
            )
        weights_desc = str(path)
    model.eval()
    size = int(image_size or default_size)
    victim = Victim(
        model,
        name=name,
        family=family,
        weights=weights_desc,
        image_size=size,
        num_classes=num_classes or _num_classes(model),
        mean=mean,
        std=std,
    )
    return victim.eval()


def check_image_size(victim: nn.Module, image_size: int, channels: int = 3) -> None:
    """Fail with one clear line when ``victim`` cannot take ``image_size`` x ``image_size`` images."""
    was_training = victim.training
    victim.eval()
    try:
        with torch.no_grad():
            victim(torch.zeros(1, channels, image_size, image_size))
    except Exception as err:
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        name = getattr(victim, "name", type(victim).__name__)
        native = getattr(victim, "image_size", None)
        hint = f" (it was built for {native} px; set victim.image_size)" if native else ""
        raise SplitinvError(
            f"victim {name} cannot take {image_size}x{image_size} images: {first}{hint}"
        ) from err
    finally:
        victim.train(was_training)
