"""Divide-and-conquer inversion (DCI; Dong, Yin, Alvarez, Kautz, Molchanov, arXiv 2107.06304 / BMVC 2022).

A data-free, white-box attack on the head of a split network:

1. **Synthesis.** Images are synthesised from the network alone, DeepInversion style (Yin et al. 2020): a
   batch of images is optimised so that the statistics at every BatchNorm layer match the running
   statistics, with TV and L2 priors, random jitter and flips, and (when the full classifier is given)
   cross-entropy to random target classes. No real image is used.
2. **Divide.** The head is split at its own valid cut points into shallow blocks (stage boundaries by
   default). One small inverter per block is trained on the synthetic images' activations to map the block's
   output back to its input, with a cycle-consistency loss: the reconstruction is passed back through the
   real block and must give the block's output again.
3. **Conquer.** The inverters are chained (deepest first) and optionally fine-tuned end to end, with
   cycle-consistency through the real head at every level. Inversion is one forward pass of the chain.

The paper gives no code; where it gives no setting (inverter architecture, loss weights, image counts) the
defaults below are this implementation's choices and are marked as such in ``conf/attack/dci.yaml``.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from splitinv.attacks.base import (
    Attack,
    AttackContext,
    AttackerKnowledge,
    Reconstruction,
    Writer,
    check_choice,
    check_number,
)
from splitinv.attacks.decoder import DECODER_FILE
from splitinv.attacks.priors import BNStatsPrior, alpha_norm, random_flip, random_jitter, total_variation
from splitinv.cut import CutPoint, cut, describe_cut_points
from splitinv.decoders import conv_block, to_map, up_block
from splitinv.errors import SplitinvError
from splitinv.io import load_file, save_atomic
from splitinv.progress import Progress
from splitinv.training import LossMonitor, monitor

log = logging.getLogger(__name__)

DCI_FORMAT = "splitinv-dci/1"
BLOCK_SPECS = ("stages", "single")
INVERTER_DATA = ("synthetic", "aux")


# ---------------------------------------------------------------------------------------------------------
# Dividing the head into blocks


def _display(name: str) -> str:
    """A head's cut point as the victim names it (a Victim's head nests the network under ``body``)."""
    return name[len("body.") :] if name.startswith("body.") else name


def _is_map(point: CutPoint) -> bool:
    return point.shape is not None and len(point.shape) == 3


def head_points(head: nn.Module, image_size: int) -> list[CutPoint]:
    """The head's cut points after its input normalisation; the last one is (at) the head's output."""
    points = [
        p for p in describe_cut_points(head, image_size=image_size) if p.name.split(".")[0] != "normalize"
    ]
    if not points:
        raise SplitinvError("DCI found no cut point inside the head: cut the victim deeper.")
    return points


def chain_points(head: nn.Module, blocks: Any, image_size: int) -> list[str]:
    """The head's cut points that separate DCI's blocks (the head's output is the implicit last boundary).

    ``blocks``: ``stages`` (the last point at each feature-map resolution), ``single`` (one block: the whole
    head), an integer k (every k-th cut point) or a list of cut point names (``relu``, ``layer1``).
    """
    points = head_points(head, image_size)
    inner = points[:-1]
    if isinstance(blocks, str) and blocks == "stages":
        chosen = [
            p
            for p, nxt in itertools.pairwise(points)
            if _is_map(p) and (not _is_map(nxt) or nxt.shape[1:] != p.shape[1:])  # type: ignore[index]
        ]
    elif isinstance(blocks, str) and blocks == "single":
        chosen = []
    elif isinstance(blocks, int) and not isinstance(blocks, bool) and blocks >= 1:
        chosen = inner[blocks - 1 :: blocks]
    elif isinstance(blocks, Sequence) and not isinstance(blocks, str):
        by_name: dict[str, CutPoint] = {}
        for p in inner:
            for n in (p.name, *p.aliases):
                by_name.setdefault(n, p)
                by_name.setdefault(_display(n), p)
        chosen = []
        for name in blocks:
            point = by_name.get(str(name))
            if point is None:
                valid = ", ".join(_display(p.name) for p in inner) or "none"
                raise SplitinvError(
                    f"attack.blocks names {name!r}, which is not a cut point inside the head; "
                    f"valid points before the cut: {valid}."
                )
            chosen.append(point)
        chosen = sorted(set(chosen), key=lambda p: p.index)
    else:
        valid = ", ".join(_display(p.name) for p in inner)
        raise SplitinvError(
            f"unknown attack.blocks {blocks!r}: use stages, single, an integer k (every k-th cut point) or "
            f"a list of cut points before the cut ({valid})."
        )
    for p in chosen:
        if not _is_map(p):
            raise SplitinvError(
                f"DCI block boundary {_display(p.name)!r} gives shape {p.shape}, not a (C, H, W) feature "
                "map: choose other attack.blocks."
            )
    return [p.name for p in chosen]


def build_blocks(head: nn.Module, points: Sequence[str]) -> list[nn.Module]:
    """The head as consecutive blocks split at ``points``: block k maps boundary k-1 to boundary k."""
    if not points:
        return [head]
    blocks: list[nn.Module] = []
    previous: str | None = None
    for point in points:
        upto = cut(head, point)[0]
        blocks.append(upto if previous is None else cut(upto, previous)[1])
        previous = point
    blocks.append(cut(head, points[-1])[1])
    for block in blocks:
        block.eval()
    return blocks


def _run_blocks(blocks: Sequence[nn.Module], x: torch.Tensor) -> list[torch.Tensor]:
    """[x, block_1(x), block_2(block_1(x)), ...]."""
    acts = [x]
    for block in blocks:
        acts.append(block(acts[-1]))
    return acts


# ---------------------------------------------------------------------------------------------------------
# Inverters


class BlockInverter(nn.Module):
    """A small convolutional inverse of one block: its output shape -> its input shape.

    Built from the decoder's blocks (conv-BN-LeakyReLU, 4x4 stride-2 transposed convolutions). The image-level
    inverter ends in a sigmoid ([0, 1] pixels); the others are linear.
    """

    def __init__(
        self, in_shape: tuple[int, ...], out_shape: tuple[int, ...], width: int | None, image: bool
    ) -> None:
        super().__init__()
        self.in_shape, self.out_shape, self.image = tuple(in_shape), tuple(out_shape), bool(image)
        if len(out_shape) != 3:
            raise SplitinvError(f"a DCI inverter must produce a (C, H, W) map, not shape {tuple(out_shape)}.")
        cout, size = out_shape[0], out_shape[1]
        self.to_map, cin, side = to_map(in_shape, size)
        w = int(width or min(256, max(64, cin)))
        ups = max(0, math.ceil(math.log2(size / side))) if side < size else 0
        layers: list[nn.Module] = [conv_block(cin, w)]
        for _ in range(ups):  # halve the width at each upsampling, as the decoder does
            layers.append(up_block(w, max(16, w // 2)))
            w = max(16, w // 2)
        if ups == 0:
            layers.append(conv_block(w, w))
        self.body = nn.Sequential(*layers)
        self.out = nn.Conv2d(w, cout, 3, padding=1)
        self.size = (out_shape[1], out_shape[2])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.body(self.to_map(z.float()))
        if tuple(h.shape[-2:]) != self.size:
            h = F.interpolate(h, size=self.size, mode="bilinear", align_corners=False)
        h = self.out(h)
        return torch.sigmoid(h) if self.image else h


class InverterChain(nn.Module):
    """One inverter per block; ``shapes[0]`` is the image shape and ``shapes[k]`` block k's output shape.

    ``forward(z)`` runs the inverters deepest first and returns images in [0, 1].
    """

    def __init__(self, shapes: Sequence[Sequence[int]], width: int | None = None) -> None:
        super().__init__()
        self.shapes = [tuple(int(d) for d in s) for s in shapes]
        if len(self.shapes) < 2:
            raise SplitinvError(
                "an inverter chain needs the image shape and at least one block output shape."
            )
        self.width = width
        self.inverters = nn.ModuleList(
            BlockInverter(self.shapes[k + 1], self.shapes[k], width, image=k == 0)
            for k in range(len(self.shapes) - 1)
        )

    @property
    def image_shape(self) -> tuple[int, ...]:
        return self.shapes[0]

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return self.shapes[-1]

    def levels(self, z: torch.Tensor) -> list[torch.Tensor]:
        """Reconstructions at every boundary, shallowest first: [image, boundary 1, ..., z]."""
        out = [z]
        for inverter in reversed(self.inverters):
            out.append(inverter(out[-1]))
        return out[::-1]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        for inverter in reversed(self.inverters):
            z = inverter(z)
        return z


def _rel_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE relative to the target's mean square: scale-free across pixels and feature maps."""
    target = target.detach().float()
    return F.mse_loss(pred.float(), target) / target.pow(2).mean().clamp_min(1e-8)


# ---------------------------------------------------------------------------------------------------------
# Synthesis (DeepInversion)


def synthesize(
    model: nn.Module,
    n: int,
    image_shape: tuple[int, int, int],
    *,
    iterations: int = 2000,
    batch_size: int = 256,
    lr: float = 0.05,
    bn_weight: float = 0.01,
    first_bn_scale: float = 10.0,
    tv_weight: float = 1e-4,
    l2_weight: float = 1e-5,
    ce_weight: float = 1.0,
    num_classes: int | None = None,
    jitter: int = 0,
    flip: bool = True,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> tuple[torch.Tensor, dict[str, float]]:
    """DeepInversion: ``n`` images in [0, 1] whose BN statistics in ``model`` match its running statistics.

    ``model`` takes [0, 1] images; with ``num_classes`` its output is treated as logits and each image gets
    a random target class (cross-entropy weight ``ce_weight``). Adam (betas 0.5, 0.9) with a cosine learning
    rate, pixels clamped to [0, 1] after each step. Returns the images (on the CPU) and the last batch's
    loss terms. ``progress``: a bar (or log lines) over all batches' iterations, with the loss at its checks.
    """
    device = torch.device(device)
    gen = torch.Generator().manual_seed(int(seed))
    prior = BNStatsPrior(model, first_layer_scale=first_bn_scale)
    if prior.n_layers == 0:
        raise SplitinvError(
            f"DCI synthesises its training images by matching BatchNorm statistics, and "
            f"{type(model).__name__} has no BatchNorm2d layer: attack a network with BatchNorm."
        )
    model.eval()
    images: list[torch.Tensor] = []
    stats: dict[str, float] = {}
    batches = math.ceil(n / batch_size)
    bar = Progress(total=batches * iterations, desc="DCI synthesis", enabled=progress)
    with torch.enable_grad(), prior, bar:
        for start in range(0, n, batch_size):
            b = min(batch_size, n - start)
            x = (0.5 + 0.2 * torch.randn(b, *image_shape, generator=gen)).clamp(0, 1).to(device)
            x.requires_grad_(True)
            targets = torch.randint(num_classes, (b,), generator=gen).to(device) if num_classes else None
            opt = torch.optim.Adam([x], lr=lr, betas=(0.5, 0.9), eps=1e-8)
            hint = f"lower attack.synth_lr (now {lr}) or check the victim's BatchNorm statistics."
            watch = LossMonitor("DCI synthesis loss", hint, unit="iteration")  # syncs every CHECK_EVERY
            for it in range(iterations):
                for group in opt.param_groups:  # cosine decay, as DeepInversion's lr_cosine_policy
                    group["lr"] = 0.5 * lr * (1 + math.cos(math.pi * it / max(1, iterations)))
                xj = random_jitter(x, jitter, gen)
                xj = random_flip(xj, 0.5, gen) if flip else xj
                out = model(xj)
                bn = prior.loss()
                tv = total_variation(x, beta=2.0).mean()
                l2 = alpha_norm(x - 0.5, alpha=2.0).mean()
                loss = bn_weight * bn + tv_weight * tv + l2_weight * l2
                ce = F.cross_entropy(out, targets) if targets is not None else torch.zeros((), device=device)
                loss = loss + ce_weight * ce
                host = watch.update({"loss": loss, "bn": bn, "tv": tv, "ce": ce}, step=it)
                if host is not None:  # a check step: the values are on the host already
                    bar.set_postfix(loss=host["loss"])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                with torch.no_grad():
                    x.clamp_(0, 1)
                bar.update()
            last = watch.check()  # the batch's last iterations are checked too (one sync per batch)
            images.append(x.detach().cpu())
            if last is not None:
                stats = {f"synth_{k}": v for k, v in last.items()}
    return torch.cat(images), stats


# ---------------------------------------------------------------------------------------------------------
# Training


class DCIModule(L.LightningModule):
    """Trains the inverter chain on synthetic images through the frozen blocks of the head.

    Epochs before ``finetune_from``: every inverter learns its own block from the true activations
    (reconstruction + ``cycle_weight`` x cycle-consistency through the real block). From ``finetune_from`` on:
    the chain end to end, with reconstruction at every level and cycle-consistency through the real blocks
    from every level up to the cut point.
    """

    def __init__(
        self,
        blocks: Sequence[nn.Module],
        chain: InverterChain,
        cycle_weight: float = 1.0,
        lr: float = 1e-3,
        finetune_from: int | None = None,
        flip: bool = True,
    ) -> None:
        super().__init__()
        if len(blocks) != len(chain.inverters):
            raise SplitinvError(f"internal: {len(blocks)} blocks but {len(chain.inverters)} inverters.")
        self.blocks = nn.ModuleList(blocks)
        for p in self.blocks.parameters():
            p.requires_grad_(False)
        self.chain = chain
        self.cycle_weight, self.lr = float(cycle_weight), lr
        self.finetune_from, self.flip = finetune_from, flip
        self.images_seen = 0

    def train(self, mode: bool = True) -> DCIModule:
        """Only the inverters train: the victim's blocks stay in eval mode (its BN statistics never move)."""
        super().train(mode)
        self.blocks.eval()
        return self

    def _cycle(
        self, x_hat: torch.Tensor, start: int, target: torch.Tensor, stop: int | None = None
    ) -> torch.Tensor:
        """Cycle-consistency: ``x_hat`` (a reconstruction of boundary ``start``) through the real blocks
        start..stop (default: up to the cut point), relative error to ``target``."""
        h = x_hat
        for block in self.blocks[start:stop]:
            h = block(h)
        return _rel_mse(h, target)

    def losses(self, x: torch.Tensor, finetune: bool) -> dict[str, torch.Tensor]:
        """The loss terms for a batch of images; ``loss`` is their weighted sum."""
        with torch.no_grad():
            acts = _run_blocks(self.blocks, x)
        terms: dict[str, torch.Tensor] = {}
        # with cycle_weight 0 the cycle terms are still measured (for the logs), outside the graph
        cycle_grad = torch.enable_grad() if self.cycle_weight > 0 else torch.no_grad()
        if not finetune:
            loss = x.new_zeros(())
            for k, inverter in enumerate(self.chain.inverters):
                pred = inverter(acts[k + 1])
                rec = _rel_mse(pred, acts[k])
                with cycle_grad:
                    cyc = self._cycle(pred, k, acts[k + 1], stop=k + 1)
                terms[f"rec/{k}"], terms[f"cycle/{k}"] = rec, cyc
                loss = loss + rec + self.cycle_weight * cyc
        else:
            levels = self.chain.levels(acts[-1])
            depth = len(self.chain.inverters)
            rec = torch.stack([_rel_mse(levels[k], acts[k]) for k in range(depth)]).sum()
            with cycle_grad:
                cyc = torch.stack([self._cycle(levels[k], k, acts[-1]) for k in range(depth)]).sum()
            terms["finetune/rec"], terms["finetune/cycle"] = rec, cyc
            loss = rec + self.cycle_weight * cyc
        terms["loss"] = loss
        return terms

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        if self.flip:  # the synthetic set is small: random left-right flips, one draw per image
            mask = torch.rand(x.shape[0], device=x.device) < 0.5
            x = torch.where(mask.view(-1, 1, 1, 1), x.flip(3), x)
        finetune = self.finetune_from is not None and self.current_epoch >= self.finetune_from
        terms = self.losses(x, finetune)
        loss = terms["loss"]
        hint = f"lower attack.lr (now {self.lr}) or check the victim's activations for inf/NaN."
        # checked and logged every CHECK_EVERY steps, epoch means accumulated on the device: no sync per step
        monitor(self, "DCI inverter loss", hint).update(
            terms, self, batch_idx=batch_idx, batch_size=x.shape[0], epoch_means=True
        )
        self.images_seen += x.shape[0]
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.chain.parameters(), lr=self.lr)


# ---------------------------------------------------------------------------------------------------------
# The attack


class DCIAttack(Attack):
    """Data-free divide-and-conquer inversion: synthetic images, per-block inverters, cycle-consistency."""

    name = "dci"
    budget = ("trainer.max_epochs", "attack.synth_images", "attack.synth_iterations")

    def __init__(
        self,
        blocks: Any = "stages",
        width: int | None = None,
        cycle_weight: float = 1.0,
        lr: float = 1e-3,
        batch_size: int = 64,
        finetune_epochs: int = 2,
        synth_images: int = 1024,
        synth_batch: int = 256,
        synth_iterations: int = 2000,
        synth_lr: float = 0.05,
        bn_weight: float = 0.01,
        first_bn_scale: float = 10.0,
        tv_weight: float = 1e-4,
        l2_weight: float = 1e-5,
        ce_weight: float = 1.0,
        jitter: int | None = None,
        flip: bool = True,
        seed: int = 0,
        checkpoint: str | None = None,
        inverter_data: str = "synthetic",
        name: str = "dci",
        defense_aware: bool = True,
        progress: bool = True,
    ) -> None:
        self.name = name
        self.progress = bool(progress)  # synthesis progress (the inverters' training: the trainer's bar)
        for key, value, minimum in (
            ("batch_size", batch_size, 1),
            ("synth_images", synth_images, 1),
            ("synth_batch", synth_batch, 1),
            ("synth_iterations", synth_iterations, 0),
            ("finetune_epochs", finetune_epochs, 0),
            ("jitter", 0 if jitter is None else jitter, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise SplitinvError(f"attack.{key} must be an integer >= {minimum}, got {value!r}.")
        self.settings: dict[str, Any] = {
            "blocks": _check_blocks(blocks),
            "width": width,
            "cycle_weight": check_number("cycle_weight", cycle_weight),
            "lr": check_number("lr", lr, 0.0, strict=True),
            "batch_size": batch_size,
            "finetune_epochs": finetune_epochs,
            "synth_images": synth_images,
            "synth_batch": synth_batch,
            "synth_iterations": synth_iterations,
            "synth_lr": check_number("synth_lr", synth_lr, 0.0, strict=True),
            "bn_weight": check_number("bn_weight", bn_weight),
            "first_bn_scale": check_number("first_bn_scale", first_bn_scale),
            "tv_weight": check_number("tv_weight", tv_weight),
            "l2_weight": check_number("l2_weight", l2_weight),
            "ce_weight": check_number("ce_weight", ce_weight),
            "jitter": jitter,
            "flip": bool(flip),
            "seed": int(seed),
            "inverter_data": check_choice("inverter_data", inverter_data, INVERTER_DATA),
        }
        # synthetic: data-free; aux: the inverters learn from real auxiliary images (the run records which)
        aux = "none" if inverter_data == "synthetic" else "same"
        self.knowledge = AttackerKnowledge(access="white-box", aux_data=aux, defense_aware=defense_aware)
        self.checkpoint = checkpoint
        self.chain: InverterChain | None = None
        self.points: list[str] = []
        self.synthesis_model: str | None = None
        self.jitter_px: int | None = None
        self.synthetic: torch.Tensor | None = None

    @property
    def uses_aux_data(self) -> bool:
        return self.settings["inverter_data"] == "aux" and not self.checkpoint

    def fit(self, context: AttackContext) -> dict[str, Any]:
        """Synthesise images from the network, train the inverter chain on them; returns train stats.

        ``inverter_data: synthetic`` is data-free (``aux_data: none``): the context carries no auxiliary
        data. ``aux`` (an ablation) trains on ``synth_images`` real images drawn from ``context.data``.
        ``context.victim``, the full classifier (white-box), lets synthesis match all of its BatchNorm layers
        and add cross-entropy to random classes; without it, the head's BN layers only.
        """
        the_split = context.require_split(self.name)
        head, defense = the_split.head, the_split.defense
        victim, trainer = context.victim, context.trainer
        head.eval()
        image_shape = tuple(int(d) for d in context.image_shape)
        if self.checkpoint:
            self.chain, meta = load_chain(self.checkpoint)
            self.points = list(meta.get("points", []))
            self._check_shapes(the_split.client, image_shape)
            return {}
        epochs = trainer.max_epochs
        finetune = self.settings["finetune_epochs"]
        if not isinstance(epochs, int) or epochs < 1:
            raise SplitinvError(f"DCI trains for trainer.max_epochs epochs: set it to >= 1 (now {epochs}).")
        if finetune and finetune >= epochs:
            raise SplitinvError(
                f"attack.finetune_epochs={finetune} leaves no block-wise epochs with "
                f"trainer.max_epochs={epochs}: raise trainer.max_epochs or lower attack.finetune_epochs."
            )
        with torch.random.fork_rng(devices=[]):  # the attack's own seed, not the global stream's state
            torch.manual_seed(self.settings["seed"])
            self.points = chain_points(head, self.settings["blocks"], image_shape[1])
            blocks = build_blocks(head, self.points)
            if not defense.is_identity:  # adaptive: the last inverter learns to invert what is sent
                blocks[-1] = nn.Sequential(blocks[-1], defense)
            shapes = _block_shapes(the_split.client, blocks, image_shape, check=not defense.stochastic)
            start = time.perf_counter()
            if self.settings["inverter_data"] == "aux":
                images, synth_stats = self._aux_images(context), {}
            else:
                images, synth_stats = self._synthesize(head, victim, image_shape, trainer)
            synth_seconds = time.perf_counter() - start
            if trainer.logger is not None and synth_stats:
                trainer.logger.log_metrics({f"synth/{k[6:]}": v for k, v in synth_stats.items()}, step=0)
            self.chain = InverterChain(shapes, self.settings["width"])
            module = DCIModule(
                blocks,
                self.chain,
                self.settings["cycle_weight"],
                self.settings["lr"],
                epochs - finetune if finetune else None,
                self.settings["flip"],
            )
            loader = DataLoader(
                TensorDataset(images),
                batch_size=self.settings["batch_size"],
                shuffle=True,
                generator=torch.Generator().manual_seed(self.settings["seed"]),
            )
            start = time.perf_counter()
            trainer.fit(module, train_dataloaders=loader)
            seconds = time.perf_counter() - start
        self.chain.eval()
        losses = {
            k[len("train/") : -len("_epoch")]: float(v)
            for k, v in trainer.callback_metrics.items()
            if k.startswith("train/") and k.endswith("_epoch")
        }
        stats = {
            "train_seconds": seconds,
            "train_images": module.images_seen,
            "train_images_per_s": module.images_seen / seconds if seconds > 0 else float("nan"),
            "train_steps": trainer.global_step,
            "synth_seconds": synth_seconds,
            "synth_images": int(images.shape[0]),
            **synth_stats,
            "losses": losses,
        }
        log.info(
            "DCI: %d synthetic images in %.1f s, %d inverters over %s, trained in %.1f s",
            images.shape[0],
            synth_seconds,
            len(self.chain.inverters),
            [_display(p) for p in self.points] or "the whole head",
            seconds,
        )
        return stats

    def _synthesize(
        self, head: nn.Module, victim: nn.Module | None, image_shape: tuple[int, ...], trainer: L.Trainer
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """DeepInversion images from the victim (all BN layers + cross-entropy) or, without it, the head."""
        s = self.settings
        model = victim if victim is not None else head
        self.synthesis_model = "victim" if victim is not None else "head"
        num_classes = _num_classes(victim) if victim is not None and s["ce_weight"] > 0 else None
        device = trainer.strategy.root_device
        model.to(device)
        # DeepInversion rolls by up to 30 px at 224 px: the same fraction of the image unless set
        self.jitter_px = s["jitter"] if s["jitter"] is not None else round(30 * image_shape[1] / 224)
        images, stats = synthesize(
            model,
            s["synth_images"],
            image_shape,  # type: ignore[arg-type]
            iterations=s["synth_iterations"],
            batch_size=s["synth_batch"],
            lr=s["synth_lr"],
            bn_weight=s["bn_weight"],
            first_bn_scale=s["first_bn_scale"],
            tv_weight=s["tv_weight"],
            l2_weight=s["l2_weight"],
            ce_weight=s["ce_weight"],
            num_classes=num_classes,
            jitter=self.jitter_px,
            flip=s["flip"],
            seed=s["seed"],
            device=device,
            progress=self.progress and trainer.is_global_zero,
        )
        self.synthetic = images
        return images, stats

    def _aux_images(self, context: AttackContext) -> torch.Tensor:
        """``synth_images`` real images (a seeded draw) from the auxiliary data, instead of synthesis."""
        dataset = context.require_data(f"{self.name} with attack.inverter_data=aux").aux_dataset()
        n = min(self.settings["synth_images"], len(dataset))
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(self.settings["seed"]))
        items = [dataset[int(i)] for i in order[:n]]
        images = torch.stack([item[0] if isinstance(item, (tuple, list)) else item for item in items])
        self.synthesis_model = None
        self.synthetic = images
        return images.float()

    def _check_shapes(self, head: nn.Module, image_shape: tuple[int, ...]) -> None:
        assert self.chain is not None
        dev = next(iter(head.parameters()), torch.empty(0)).device
        with torch.no_grad():
            shape = tuple(head(torch.rand(1, *image_shape, device=dev)).shape[1:])
        if shape != self.chain.feature_shape or tuple(image_shape) != self.chain.image_shape:
            raise SplitinvError(
                f"DCI checkpoint {self.checkpoint} inverts {self.chain.feature_shape} features to "
                f"{self.chain.image_shape} images, but this head gives {shape} from {tuple(image_shape)} "
                "images: use a checkpoint trained at the same cut point and image size."
            )

    def invert(self, observations: torch.Tensor, index: torch.Tensor | None = None) -> Reconstruction:
        if self.chain is None:
            raise SplitinvError("the dci attack was not fitted: call fit() or pass attack.checkpoint=PATH.")
        self.chain.eval()
        dev = next(self.chain.parameters()).device
        with torch.no_grad():
            return Reconstruction(self.chain(observations.to(dev)).clamp(0, 1))

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            **self.settings,
            "checkpoint": self.checkpoint,
            "synthesis_model": self.synthesis_model,
            "jitter_px": self.jitter_px,
            "chain": [_display(p) for p in self.points],
            "n_inverters": len(self.chain.inverters) if self.chain is not None else None,
        }

    def artifacts(self) -> dict[str, Writer]:
        """The inverter chain as ``decoder.pt`` (loadable by ``attack.checkpoint``)."""
        return {DECODER_FILE: self.save} if self.chain is not None else {}

    def save(self, path: str | Path) -> None:
        """Write the inverter chain: state dicts, shapes, block points (loadable with weights_only=True)."""
        if self.chain is None:
            raise SplitinvError("the dci attack was not fitted: nothing to save.")
        save_atomic(
            {
                "format": DCI_FORMAT,
                "shapes": [list(s) for s in self.chain.shapes],
                "points": list(self.points),
                "width": self.chain.width,
                "state_dict": self.chain.state_dict(),
            },
            path,
        )


def _check_blocks(blocks: Any) -> str | int | list[str]:
    """``attack.blocks`` as given: a spec name, a positive integer or a list of cut point names."""
    if isinstance(blocks, str) and blocks in BLOCK_SPECS:
        return blocks
    if isinstance(blocks, int) and not isinstance(blocks, bool) and blocks >= 1:
        return blocks
    if isinstance(blocks, Sequence) and not isinstance(blocks, str):
        return [str(b) for b in blocks]
    raise SplitinvError(
        f"unknown attack.blocks {blocks!r}: use stages, single, an integer k >= 1 (every k-th cut point) or "
        "a list of cut points before the cut."
    )


def _block_shapes(
    head: nn.Module, blocks: Sequence[nn.Module], image_shape: tuple[int, ...], check: bool = True
) -> list[tuple[int, ...]]:
    """Per-image shapes at every boundary (the image first), checking that the blocks compose to ``head``
    (the device side; not checkable through a stochastic defense)."""
    probe = torch.rand(2, *image_shape, generator=torch.Generator().manual_seed(0))
    probe = probe.to(next(iter(head.parameters()), torch.empty(0)).device)
    with torch.no_grad():
        acts = _run_blocks(blocks, probe)
        if check and not torch.allclose(acts[-1], head(probe), rtol=1e-4, atol=1e-5):  # pragma: no cover
            raise SplitinvError("internal: DCI's blocks do not compose to the head; report this cut point.")
    return [tuple(a.shape[1:]) for a in acts]


def _num_classes(victim: nn.Module) -> int:
    n = getattr(victim, "num_classes", None)
    if isinstance(n, int) and n > 0:
        return n
    raise SplitinvError(
        "DCI needs the victim's num_classes for its cross-entropy term: set attack.ce_weight=0."
    )


def load_chain(path: str | Path) -> tuple[InverterChain, dict[str, Any]]:
    """An inverter chain saved by :meth:`DCIAttack.save` (loaded with weights_only=True), and its metadata."""
    obj = load_file(path, "DCI checkpoint", hint="train one with attack=dci first.")
    if not isinstance(obj, dict) or obj.get("format") != DCI_FORMAT:
        raise SplitinvError(f"{path} is not a splitinv DCI checkpoint (expected format {DCI_FORMAT}).")
    try:
        chain = InverterChain(obj["shapes"], obj.get("width"))
        chain.load_state_dict(obj["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise SplitinvError(
            f"DCI checkpoint {path} does not fit the inverter chain it describes ({type(err).__name__}; an "
            "older or edited file?): retrain it with attack=dci."
        ) from err
    return chain.eval(), {k: v for k, v in obj.items() if k != "state_dict"}
