"""Embedding networks for the membership audit: images in [0, 1] -> L2-normalised vectors.

Three kinds, compared by cosine similarity (the dot product of the normalised vectors):

- ``facenet``: FaceNet's Inception-ResNet-v1 (facenet-pytorch's weights, a local file): identity embeddings of
  160x160 face crops, what Webster et al. use.
- ``victim``: the penultimate layer (the input of the last linear layer) of any classifier that
  :func:`splitinv.build_victim` builds, e.g. ``resnet18`` with ImageNet weights: generic image similarity.
- ``pixels``: the flattened pixels minus each image's mean; their cosine is the pixels' Pearson correlation.
  A trivial baseline that finds only near-copies.

Every embedder resizes images to its input size (bilinear, antialiased) and repeats grayscale to RGB.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from splitinv.audit.facenet import INPUT_SIZE, InceptionResnetV1, fixed_image_standardization, load_facenet
from splitinv.errors import SplitinvError

EMBEDDERS = ("auto", "facenet", "victim", "pixels")
DEFAULT_VICTIM = "resnet18"


def _fit(images: Tensor, channels: int, size: int | None) -> Tensor:
    """(B, C, H, W) in [0, 1] with C in {1, 3, 4} -> ``channels`` channels at ``size`` x ``size``."""
    if images.ndim != 4 or images.shape[1] not in (1, 3, 4):
        raise SplitinvError(
            f"images must be (batch, 1 or 3 channels, height, width), got shape {tuple(images.shape)}."
        )
    images = images[:, :3].float()
    if images.shape[1] != channels:
        images = images.expand(-1, 3, -1, -1) if channels == 3 else images.mean(1, keepdim=True)
    if size is not None and tuple(images.shape[-2:]) != (size, size):
        images = F.interpolate(
            images, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
    return images


class Embedder(nn.Module):
    """Base class: ``forward`` maps images in [0, 1] (B, C, H, W) to L2-normalised (B, D) embeddings.

    Subclasses set ``kind``, ``input_size`` (None: images are used at their own size), ``channels`` and
    implement :meth:`features` on fitted images.
    """

    kind: str = "embedder"
    input_size: int | None = None
    channels: int = 3

    def features(self, images: Tensor) -> Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        return F.normalize(self.features(_fit(images, self.channels, self.input_size)).flatten(1), dim=1)

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable identity, for the audit report."""
        return {"kind": self.kind, "input_size": self.input_size, "pretrained": False}


class PixelEmbedder(Embedder):
    """Flattened RGB pixels minus each image's mean: cosine similarity = Pearson correlation of the pixels."""

    kind = "pixels"

    def __init__(self, image_size: int | None = None) -> None:
        super().__init__()
        self.input_size = image_size

    def features(self, images: Tensor) -> Tensor:
        flat = images.flatten(1)
        return flat - flat.mean(1, keepdim=True)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "name": "pixels", "weights": None}


class FaceNetEmbedder(Embedder):
    """FaceNet identity embeddings (512-d) of 160x160 RGB face crops (facenet-pytorch's standardisation)."""

    kind = "facenet"
    input_size = INPUT_SIZE

    def __init__(self, model: InceptionResnetV1, weights: str = "random") -> None:
        super().__init__()
        self.model, self.weights = model.eval(), weights

    def features(self, images: Tensor) -> Tensor:
        return self.model(fixed_image_standardization(images))

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "name": "InceptionResnetV1",
            "weights": self.weights,
            "pretrained": self.weights != "random",
        }


def _last_called(model: nn.Module, kind: type[nn.Module] | None, size: int, channels: int) -> str | None:
    """Name of the last submodule of type ``kind`` (any leaf with parameters when None) that one forward
    pass calls, found with hooks (call order, not definition order)."""
    order: list[str] = []
    hooks = []
    for name, module in model.named_modules():
        leaf_with_params = not list(module.children()) and any(True for _ in module.parameters(recurse=False))
        if (kind is not None and isinstance(module, kind)) or (kind is None and leaf_with_params and name):
            hooks.append(module.register_forward_pre_hook(lambda _m, _i, name=name: order.append(name)))
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            model(torch.zeros(1, channels, size, size, device=device))
    finally:
        for hook in hooks:
            hook.remove()
    return order[-1] if order else None


class VictimEmbedder(Embedder):
    """The penultimate layer of a classifier on [0, 1] images (a :class:`splitinv.Victim`).

    timm models: ``forward_head(forward_features(x), pre_logits=True)``. Others: the input of the last
    ``nn.Linear`` that the forward pass calls (the pooled features for ResNets, fc7 for VGG), captured with a
    forward pre-hook; networks without a linear layer (all-convolutional, e.g. a DCGAN discriminator) give the
    flattened input of their last layer with parameters.
    """

    kind = "victim"

    def __init__(self, victim: nn.Module) -> None:
        super().__init__()
        self.victim = victim.eval()
        self.input_size = int(getattr(victim, "image_size", 224))
        mean = getattr(getattr(victim, "normalize", None), "mean", None)
        self.channels = int(mean.shape[1]) if isinstance(mean, Tensor) else 3
        inner = getattr(victim, "model", victim)
        self._timm = hasattr(inner, "forward_head") and hasattr(inner, "forward_features")
        self.layer: str | None = "forward_head(pre_logits=True)" if self._timm else None
        if not self._timm:
            self.layer = _last_called(inner, nn.Linear, self.input_size, self.channels)
            self.layer = self.layer or _last_called(inner, None, self.input_size, self.channels)
            if self.layer is None:
                raise SplitinvError(f"victim {getattr(victim, 'name', '?')} has no layer with parameters.")
            self._module = inner.get_submodule(self.layer)

    def features(self, images: Tensor) -> Tensor:
        inner = getattr(self.victim, "model", self.victim)
        normalize: Callable[[Tensor], Tensor] = getattr(self.victim, "normalize", nn.Identity())
        x = normalize(images)
        if self._timm:
            return inner.forward_head(inner.forward_features(x), pre_logits=True)
        captured: list[Tensor] = []
        hook = self._module.register_forward_pre_hook(lambda _m, inputs: captured.append(inputs[0]))
        try:
            inner(x)
        finally:
            hook.remove()
        return captured[-1]

    def describe(self) -> dict[str, Any]:
        info = self.victim.describe() if hasattr(self.victim, "describe") else {}
        return {
            **super().describe(),
            "name": info.get("name", type(self.victim).__name__),
            "weights": info.get("weights"),
            "pretrained": bool(info.get("pretrained", False)),
            "layer": self.layer,
        }


def build_embedder(
    kind: str = "auto",
    weights: str | os.PathLike | None = None,
    victim: str | None = None,
    image_size: int | None = None,
) -> Embedder:
    """An embedder by kind.

    Args:
        kind: ``facenet``, ``victim``, ``pixels``, or ``auto``: ``facenet`` when ``weights`` is given and
            ``victim`` is not, else ``victim``.
        weights: facenet: a local facenet-pytorch state_dict (``"random"``: random weights, warned about);
            victim: as :func:`splitinv.build_victim` takes it (default ``imagenet``; ``random`` is warned
            about).
        victim: the classifier for ``victim`` (default ``resnet18``).
        image_size: the side images are resized to (victim: default its native size; pixels: default none,
            images are compared at their own size; facenet: always 160).
    """
    if kind not in EMBEDDERS:
        raise SplitinvError(f"unknown embedder {kind!r}: use one of {', '.join(EMBEDDERS)}.")
    if kind == "auto":
        kind = "facenet" if weights is not None and victim is None else "victim"
    if kind == "pixels":
        return PixelEmbedder(image_size)
    if kind == "facenet":
        if weights is None:
            raise SplitinvError(
                "the facenet embedder needs a weights file (--embedder-weights): facenet-pytorch's "
                "InceptionResnetV1 state_dict (vggface2 or casia-webface), or use --embedder victim/pixels."
            )
        if str(weights).lower() == "random":
            warnings.warn(
                "embedder facenet has RANDOM weights: its similarities identify nobody.", stacklevel=2
            )
            return FaceNetEmbedder(load_facenet(None), "random")
        return FaceNetEmbedder(load_facenet(weights), str(weights))
    from splitinv.victims import build_victim

    model = build_victim(
        victim or DEFAULT_VICTIM, weights="imagenet" if weights is None else weights, image_size=image_size
    )
    return VictimEmbedder(model)
