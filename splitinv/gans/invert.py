"""GAN inversion at a chosen layer (Bau et al., "Seeing What a GAN Cannot Generate", ICCV 2019).

Given images, recover the generator's state at cut point ``point`` (its latent, or its layer-k
representation) so that the tail reproduces each image:

- ``encoder``: a per-layer encoder trained on generated images (x = G(z) -> head(z, point)), as Bau et al.
  train theirs; inversion is one forward pass.
- ``optimize``: Adam on the state, minimising pixel L1 + ``perceptual_weight`` * LPIPS(vgg) between the
  tail's image and the target (Bau et al.: L1 on pixels and on VGG features, Adam, lr 0.01), from the
  state of a seeded prior draw.
- ``hybrid``: the encoder's state, then the optimisation.

Deeper cut points give the optimisation more freedom (higher fidelity) and the generator's prior less say;
a sweep over ``point`` shows that trade-off. For images the generator made itself, the error of the
recovered state against the true one is reported too (:func:`state_error`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from splitinv.errors import SplitinvError
from splitinv.gans.base import Generator, State
from splitinv.optim import fit_image, image_generator, optimize_state
from splitinv.progress import track
from splitinv.training import monitor

METHODS = ("encoder", "optimize", "hybrid")


class LayerEncoder(nn.Module):
    """Image -> the generator's state at one cut point: a strided conv trunk, then one head per tensor.

    Map-shaped targets (C, h, w) come from the trunk at resolution h (a 3x3 conv to C channels); vectors and
    1x1 maps from the trunk's 4x4 output through a linear layer.
    """

    def __init__(self, image_shape: Sequence[int], state_shapes: dict[str, tuple[int, ...]], width: int = 32):
        super().__init__()
        c, size = int(image_shape[0]), int(image_shape[-1])
        self.state_shapes = {k: tuple(v) for k, v in state_shapes.items()}
        self.sizes: list[int] = []  # the trunk's resolution after each block
        blocks, cin, s, w = [], c, size, width
        while s > 4:
            blocks.append(
                nn.Sequential(nn.Conv2d(cin, w, 4, 2, 1), nn.BatchNorm2d(w), nn.LeakyReLU(0.2, inplace=True))
            )
            cin, s = w, s // 2
            self.sizes.append(s)
            w = min(w * 2, 512)
        self.stem = nn.Sequential(nn.Conv2d(c, width, 3, 1, 1), nn.LeakyReLU(0.2, inplace=True))
        self.blocks = nn.ModuleList(blocks)
        self.first = width
        self.heads = nn.ModuleDict()
        self.taps: dict[str, int] = {}  # key -> trunk block whose output feeds the head (-1: the stem)
        for key, shape in self.state_shapes.items():
            if len(shape) == 3 and shape[1] > 1 and shape[1] in [size, *self.sizes]:
                tap = -1 if shape[1] == size else self.sizes.index(shape[1])
                channels = width if tap == -1 else blocks[tap][0].out_channels
                self.heads[key] = nn.Conv2d(channels, shape[0], 3, 1, 1)
            else:
                tap = len(blocks) - 1
                channels = blocks[tap][0].out_channels if blocks else width
                self.heads[key] = nn.Sequential(nn.Flatten(), nn.Linear(channels * 16, math.prod(shape)))
            self.taps[key] = tap

    def forward(self, x: Tensor) -> State:
        outs, h = [self.stem(x)], x  # outs[tap + 1] feeds a head; tap -1 is the full-resolution stem
        for block in self.blocks:
            h = block(h)
            outs.append(h)
        return {
            key: self.heads[key](outs[tap + 1]).view(x.shape[0], *self.state_shapes[key])
            for key, tap in self.taps.items()
        }


class EncoderModule(L.LightningModule):
    """Trains a :class:`LayerEncoder` on generated images: state MSE (per tensor, over its variance) + L1 on
    the image the tail makes from the predicted state."""

    def __init__(
        self, generator: Generator, point: str, encoder: LayerEncoder, lr: float = 1e-3, batch_size: int = 64
    ) -> None:
        super().__init__()
        self.generator, self.point, self.encoder = generator.eval(), point, encoder
        self.lr, self.batch_size = lr, batch_size
        for p in self.generator.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> EncoderModule:
        super().train(mode)
        self.generator.eval()  # the generator is frozen, BatchNorm statistics included
        return self

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        with torch.no_grad():
            z = self.generator.sample_latent(self.batch_size, device=self.device)
            state = self.generator.head(z, self.point)
            x = self.generator.tail(state, self.point)
        pred = self.encoder(x)
        loss = sum(F.mse_loss(pred[k], v) / v.var().clamp_min(1e-8) for k, v in state.items())
        loss = loss + F.l1_loss(self.generator.tail(pred, self.point), x)
        # checked and logged every CHECK_EVERY steps (and at the end): no host sync per step
        monitor(self, "encoder loss", f"lower the encoder's lr (now {self.lr}).").update(
            {"loss": loss}, self, batch_idx=batch_idx, batch_size=self.batch_size
        )
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.encoder.parameters(), lr=self.lr)


def train_encoder(
    generator: Generator,
    point: str,
    trainer: L.Trainer,
    steps: int = 1000,
    batch_size: int = 64,
    lr: float = 1e-3,
    width: int = 32,
) -> LayerEncoder:
    """A :class:`LayerEncoder` for ``point``, trained for ``steps`` batches of freshly generated images."""
    generator.check_point(point)
    shapes = {p.name: p.state for p in generator.describe_cut_points()}[point]
    encoder = LayerEncoder((generator.channels, generator.image_size, generator.image_size), shapes, width)
    module = EncoderModule(generator, point, encoder, lr=lr, batch_size=batch_size)
    # each "batch" is generated inside training_step; the loader only counts the steps
    loader = torch.utils.data.DataLoader(torch.zeros(int(steps)), batch_size=1)
    trainer.fit(module, train_dataloaders=loader)
    return encoder.eval()


def state_error(recovered: State, true: State) -> dict[str, Tensor]:
    """Per image: ``||r_hat - r||^2 / ||r||^2`` for each tensor crossing the cut (``latent_error`` keys)."""
    out = {}
    for key, value in true.items():
        a, b = recovered[key].float().flatten(1), value.float().flatten(1)
        out[f"state_error_{key}"] = ((a - b).pow(2).sum(1) / b.pow(2).sum(1).clamp_min(1e-12)).cpu()
    return out


_WARNED: set[str] = set()  # the perceptual term's absence is said once per process, not once per batch


def perceptual_loss(weight: float, device: torch.device) -> Any:
    """LPIPS(vgg) as Bau et al.'s VGG-feature term, or None (weight 0, or backbone unavailable: warned once;
    each results file records it)."""
    if weight <= 0:
        return None
    from splitinv.metrics import LPIPSUnavailable, lpips_model

    try:
        return lpips_model("vgg", device)
    except LPIPSUnavailable as err:
        message = f"GAN inversion runs without its perceptual term ({err}); pixel L1 only."
        if message not in _WARNED:
            _WARNED.add(message)
            warnings.warn(message, stacklevel=3)
        return None


def optimize_inversion(
    generator: Generator,
    images: Tensor,
    point: str,
    start: State,
    steps: int = 500,
    lr: float = 0.01,
    perceptual_weight: float = 1.0,
    progress: bool = False,
) -> tuple[State, Tensor]:
    """Optimise the state at ``point`` from ``start`` so the tail reproduces ``images`` (L1 + perceptual)."""
    target = images.float()
    shape = (generator.channels, generator.image_size, generator.image_size)
    if tuple(target.shape[1:]) != shape:
        target = fit_image(target, shape)
    lp = perceptual_loss(perceptual_weight, target.device)

    def objective(state: State) -> Tensor:
        x = generator.tail(state, point)
        loss = (x - target).abs().flatten(1).mean(1)
        if lp is not None:
            x3, t3 = (
                (x.expand(-1, 3, -1, -1), target.expand(-1, 3, -1, -1)) if x.shape[1] == 1 else (x, target)
            )
            loss = loss + perceptual_weight * lp(x3, t3).flatten()
        return loss

    flags = [p.requires_grad for p in generator.parameters()]
    generator.requires_grad_(False)  # gradients flow to the state only
    try:
        return optimize_state(start, objective, steps, lr, progress=progress, name=f"invert@{point}")
    finally:
        for p, flag in zip(generator.parameters(), flags, strict=True):
            p.requires_grad_(flag)


def invert(
    generator: Generator,
    images: Tensor,
    point: str,
    method: str = "hybrid",
    encoder: LayerEncoder | None = None,
    steps: int = 500,
    lr: float = 0.01,
    perceptual_weight: float = 1.0,
    seed: int = 0,
    index: Sequence[int] | None = None,
    progress: bool = False,
) -> tuple[State, Tensor]:
    """(recovered states at ``point``, the tail's images in [0, 1]) for ``images`` (B, C, H, W) in [0, 1].

    ``encoder`` is needed by ``encoder`` and ``hybrid``; ``optimize`` starts each image from the state of
    a prior draw seeded by (seed, index).
    """
    if method not in METHODS:
        raise SplitinvError(f"unknown GAN inversion method {method!r}: choose one of {', '.join(METHODS)}.")
    generator.check_point(point)
    if not torch.isfinite(images).all():
        raise SplitinvError("the images to invert contain NaN or inf.")
    if method in ("encoder", "hybrid") and encoder is None:
        raise SplitinvError(f"GAN inversion method {method!r} needs a trained encoder (train_encoder).")
    device = next(generator.parameters()).device
    images = images.to(device)
    shape = (generator.channels, generator.image_size, generator.image_size)
    fitted = fit_image(images.float(), shape) if tuple(images.shape[1:]) != shape else images.float()
    idx = list(range(len(images))) if index is None else [int(i) for i in index]
    with torch.no_grad():
        if method == "optimize":
            z = torch.cat([generator.sample_latent(1, generator=image_generator(seed, i)) for i in idx])
            start = generator.head(z.to(device), point)
        else:
            assert encoder is not None
            start = encoder.to(device).eval()(fitted)
    if method == "encoder":
        state = start
    else:
        state, _ = optimize_inversion(generator, fitted, point, start, steps, lr, perceptual_weight, progress)
    with torch.no_grad():
        return {k: v.detach() for k, v in state.items()}, generator.tail(state, point).clamp(0, 1)


def invert_batches(
    generator: Generator,
    images: Tensor,
    point: str,
    batch_size: int = 16,
    progress: bool = True,
    **kwargs: Any,
) -> tuple[State, Tensor]:
    """:func:`invert` over batches; ``index`` defaults to the images' positions. ``progress``: over the
    batches and each batch's optimisation steps (a bar on a terminal, log lines elsewhere)."""
    states: list[State] = []
    outs: list[Tensor] = []
    starts = range(0, len(images), batch_size)
    for start in track(starts, desc=f"GAN inversion at {point}", unit="batch", enabled=progress):
        idx = list(range(start, min(start + batch_size, len(images))))
        s, x = invert(generator, images[idx], point, index=idx, progress=progress, **kwargs)
        states.append({k: v.cpu() for k, v in s.items()})
        outs.append(x.cpu())
    return {k: torch.cat([s[k] for s in states]) for k in states[0]}, torch.cat(outs)
