"""The inverse-decoder attack (He et al. 2019's inverse network; Dosovitskiy & Brox 2016's up-convolutional
decoders): query the head with auxiliary images and train a decoder g(head(x)) -> x.

Defaults follow He et al.: pixel MSE, Adam with AMSGrad, lr 1e-3, batch 32 (the batch size is the data's).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from splitinv.attacks.base import (
    Attack,
    AttackContext,
    AttackerKnowledge,
    Reconstruction,
    Writer,
    check_choice,
    check_int,
    check_number,
)
from splitinv.decoders import Decoder, PaperDecoder, build_decoder, build_paper_decoder
from splitinv.errors import SplitinvError
from splitinv.io import load_file, save_atomic
from splitinv.training import monitor

if TYPE_CHECKING:  # pragma: no cover
    from splitinv.split import QueryOracle

DECODER_FORMAT = "splitinv-decoder/1"
DECODER_FILE = "decoder.pt"
# ``attack.preset=he2019``: He et al.'s public code (inverse_blackbox_decoder_CIFAR.py): the paper's per-layer
# inverse network (splitinv.nets.he2019), MSE in normalised units, Adam lr 1e-3 eps 1e-3 AMSGrad, lr halved
# every 10 epochs, the training set in a fixed order (batch 32 and 50 epochs: the experiment's data/trainer)
DECODER_PRESETS: dict[str, dict[str, Any]] = {
    "he2019": {
        "loss": "mse", "perceptual_weight": 0.0, "lr": 1e-3, "eps": 1e-3, "amsgrad": True,
        "weight_decay": 0.0, "lr_step_every": 10, "lr_gamma": 0.5,
    },
}  # fmt: skip


class DecoderModule(L.LightningModule):
    """Trains a decoder on (auxiliary image, observation) pairs: observations come from the query oracle, or
    precomputed (cached observations: batches of {"image", "observation"})."""

    def __init__(
        self,
        oracle: QueryOracle | None,
        decoder: Decoder,
        loss: str = "mse",
        perceptual_weight: float = 0.0,
        lr: float = 1e-3,
        amsgrad: bool = True,
        weight_decay: float = 0.0,
        eps: float = 1e-8,
        lr_step_every: int = 0,
        lr_gamma: float = 0.5,
    ) -> None:
        super().__init__()
        if loss not in ("mse", "l1"):
            raise SplitinvError(f"unknown decoder loss {loss!r}: use attack.loss=mse or attack.loss=l1.")
        self.oracle, self.decoder = oracle, decoder
        self.loss_name, self.perceptual_weight = loss, float(perceptual_weight)
        self.lr, self.amsgrad, self.weight_decay = lr, amsgrad, weight_decay
        self.eps, self.lr_step_every, self.lr_gamma = eps, int(lr_step_every), float(lr_gamma)
        self.images_seen = 0
        self._perceptual: list[nn.Module] = []

    def on_fit_start(self) -> None:
        if self.oracle is not None:  # the device side answers queries where the decoder trains
            self.oracle.to(self.device)

    def observations(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, observations) of a batch: queried from the oracle, or precomputed (the cache)."""
        if isinstance(batch, dict):
            return batch["image"].float(), batch["observation"].float()
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        if self.oracle is None:
            raise SplitinvError("image batches need a query oracle to observe them: pass context.oracle.")
        return x, self.oracle(x)

    def _loss(self, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.decoder, PaperDecoder):  # published decoders learn in normalised units
            mean, std = self.decoder.mean, self.decoder.std
            a, b = (x_hat - mean) / std, (x - mean) / std
        else:
            a, b = x_hat, x
        pixel = F.mse_loss(a, b) if self.loss_name == "mse" else F.l1_loss(a, b)
        if self.perceptual_weight <= 0:
            return pixel
        if not self._perceptual:  # a plain list: the shared LPIPS net must not become a submodule
            from splitinv.metrics import lpips_model

            self._perceptual.append(lpips_model("vgg", x.device))
        lp = self._perceptual[0](x_hat, x).mean()  # LPIPSLoss takes [0, 1] images
        return pixel + self.perceptual_weight * lp

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, f = self.observations(batch)
        loss = self._loss(self.decoder(f), x)
        hint = f"lower attack.lr (now {self.lr}) or check the victim's activations for inf/NaN."
        # checked and logged every CHECK_EVERY steps (and at each epoch's end): no host sync per step
        monitor(self, "decoder loss", hint).update(
            {"loss": loss}, self, batch_idx=batch_idx, batch_size=x.shape[0]
        )
        self.images_seen += x.shape[0]
        return loss

    def configure_optimizers(self) -> Any:
        opt = torch.optim.Adam(
            self.decoder.parameters(),
            lr=self.lr,
            eps=self.eps,
            amsgrad=self.amsgrad,
            weight_decay=self.weight_decay,
        )
        if self.lr_step_every <= 0:
            return opt
        step = torch.optim.lr_scheduler.StepLR(opt, step_size=self.lr_step_every, gamma=self.lr_gamma)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": step, "interval": "epoch"}}


class DecoderAttack(Attack):
    """Black-box inverse network: train a decoder on the observations of auxiliary images."""

    name = "decoder"
    learns_from_observations = True  # (image, observation) pairs only: the activation cache can feed it
    budget = ("trainer.max_epochs", "data.n_aux")  # aux.n_aux for another auxiliary set

    def __init__(
        self,
        loss: str = "mse",
        perceptual_weight: float = 0.0,
        lr: float = 1e-3,
        amsgrad: bool = True,
        weight_decay: float = 0.0,
        width: int | None = None,
        aux_data: str = "same",
        checkpoint: str | None = None,
        name: str = "decoder",
        defense_aware: bool = True,
        eps: float = 1e-8,
        lr_step_every: int = 0,
        lr_gamma: float = 0.5,
        shuffle: bool = True,
        preset: str | None = None,
    ) -> None:
        self.name = name
        self.preset = None if preset in (None, "none", "null") else str(preset)
        if self.preset not in (None, *DECODER_PRESETS):
            raise SplitinvError(f"unknown attack.preset={preset!r} for the decoder: use null or he2019.")
        self.settings = {
            "loss": check_choice("loss", loss, ("mse", "l1")),
            "perceptual_weight": check_number("perceptual_weight", perceptual_weight),
            "lr": check_number("lr", lr, 0.0, strict=True),
            "amsgrad": bool(amsgrad),
            "weight_decay": check_number("weight_decay", weight_decay),
            "width": None if width is None else check_int("width", width, 1),
            "eps": check_number("eps", eps, 0.0, strict=True),
            "lr_step_every": check_int("lr_step_every", lr_step_every, 0),
            "lr_gamma": check_number("lr_gamma", lr_gamma, 0.0, strict=True),
        }
        if self.preset is not None:
            self.settings.update(DECODER_PRESETS[self.preset])
        self.shuffle = bool(shuffle) if self.preset is None else False
        self.knowledge = AttackerKnowledge(access="black-box", aux_data=aux_data, defense_aware=defense_aware)
        self.checkpoint = checkpoint
        self.decoder: Decoder | None = None

    def fit(self, context: AttackContext) -> dict[str, Any]:
        """Train the decoder on the context's auxiliary data (or load ``checkpoint``); returns train stats."""
        if self.checkpoint:
            self.decoder = load_decoder(self.checkpoint, context)
            return {}
        datamodule = context.require_data(self.name)
        datamodule.setup("fit")
        loader = datamodule.train_dataloader()
        if not self.shuffle:  # the same order every epoch (He et al.'s code: shuffle=False)
            loader = DataLoader(
                loader.dataset,
                batch_size=loader.batch_size,
                shuffle=False,
                collate_fn=loader.collate_fn,
                num_workers=loader.num_workers,
            )
        first = next(iter(loader))
        if isinstance(first, dict):  # cached observations
            feature_shape = tuple(first["observation"].shape[1:])
        else:
            if context.oracle is None:
                raise SplitinvError(f"{self.name} queries the device: its context needs the oracle.")
            feature_shape = tuple(context.oracle(first[0][:2]).shape[1:])
        if self.preset is not None:
            cut = context.cut or {}
            self.decoder = build_paper_decoder(
                self.preset,
                str(cut.get("victim")),
                str(cut.get("canonical") or cut.get("name")),
                feature_shape,
                tuple(context.image_shape),
                tuple(cut.get("input_mean") or (0.0,)),
                tuple(cut.get("input_std") or (1.0,)),
            )
        else:
            self.decoder = build_decoder(feature_shape, context.image_shape, self.settings["width"])
        module = DecoderModule(
            context.oracle, self.decoder, **{k: v for k, v in self.settings.items() if k != "width"}
        )
        trainer = context.trainer
        start = time.perf_counter()
        trainer.fit(module, train_dataloaders=loader)
        seconds = time.perf_counter() - start
        if trainer.global_step == 0:
            raise SplitinvError(
                f"the {self.name} attack trained 0 steps (trainer.max_epochs=0 or max_steps=0?): an "
                "untrained decoder scores nothing; give it at least one epoch."
            )
        self.decoder.eval()
        return {
            "train_seconds": seconds,
            "train_images": module.images_seen,
            "train_images_per_s": module.images_seen / seconds if seconds > 0 else float("nan"),
            "train_steps": trainer.global_step,
        }

    def invert(self, observations: torch.Tensor, index: torch.Tensor | None = None) -> Reconstruction:
        if self.decoder is None:
            raise SplitinvError(
                "the decoder attack was not fitted: call fit() or pass attack.checkpoint=PATH."
            )
        self.decoder.eval()
        dev = next(self.decoder.parameters()).device
        with torch.no_grad():
            return Reconstruction(self.decoder(observations.to(dev)).clamp(0, 1))

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            **self.settings,
            "preset": self.preset,
            "shuffle": self.shuffle,
            "checkpoint": self.checkpoint,
        }

    def artifacts(self) -> dict[str, Writer]:
        return {DECODER_FILE: self.save} if self.decoder is not None else {}

    def save(self, path: str | Path) -> None:
        """Write the decoder (``decoder.pt``: loadable by ``attack.checkpoint``), atomically."""
        if self.decoder is None:
            raise SplitinvError("the decoder attack was not fitted: nothing to save.")
        obj = {
            "format": DECODER_FORMAT,
            "feature_shape": list(self.decoder.feature_shape),
            "image_shape": list(self.decoder.image_shape),
            "width": self.decoder.width,
            "state_dict": self.decoder.state_dict(),
        }
        if isinstance(self.decoder, PaperDecoder):
            obj["paper"] = {
                "architecture": self.decoder.architecture,
                "victim": self.decoder.victim,
                "cut": self.decoder.cut,
                "mean": self.decoder.mean.flatten().tolist(),
                "std": self.decoder.std.flatten().tolist(),
            }
        save_atomic(obj, path)


def load_decoder(path: str | Path, context: AttackContext | None = None) -> Decoder:
    """A decoder saved by :meth:`DecoderAttack.save`, or a one-line error (loaded with weights_only=True).

    With ``context``, the decoder must also fit the run, before any work: the run's image shape, and the
    feature shape the device sends at this cut (one query of a blank image).
    """
    obj = load_file(path, "decoder checkpoint", hint="train one with attack=decoder first.")
    if not isinstance(obj, dict) or obj.get("format") != DECODER_FORMAT:
        raise SplitinvError(
            f"{path} is not a splitinv decoder checkpoint (expected format {DECODER_FORMAT})."
        )
    missing = [k for k in ("feature_shape", "image_shape", "state_dict") if k not in obj]
    if missing:
        raise SplitinvError(
            f"decoder checkpoint {path} lacks {', '.join(missing)} (an older or edited file): retrain it "
            "with attack=decoder."
        )
    paper = obj.get("paper")
    decoder: Decoder | PaperDecoder
    if paper:
        decoder = build_paper_decoder(
            paper["architecture"], paper["victim"], paper["cut"], tuple(obj["feature_shape"]),
            tuple(obj["image_shape"]), tuple(paper["mean"]), tuple(paper["std"]),
        )  # fmt: skip
    else:
        decoder = build_decoder(tuple(obj["feature_shape"]), tuple(obj["image_shape"]), obj.get("width"))
    try:
        decoder.load_state_dict(obj["state_dict"])
    except (KeyError, RuntimeError) as err:
        raise SplitinvError(
            f"decoder checkpoint {path} does not fit the architecture it describes (an older splitinv's?): "
            "retrain it with attack=decoder."
        ) from err
    if context is not None:
        _check_fits(decoder, path, context)
    return decoder.eval()


def _check_fits(decoder: nn.Module, path: str | Path, context: AttackContext) -> None:
    """A one-line error unless ``decoder`` makes this run's images from what the device sends at its cut."""
    image_shape = tuple(int(d) for d in context.image_shape)
    if tuple(decoder.image_shape) != image_shape:
        raise SplitinvError(
            f"decoder checkpoint {path} makes images of shape {tuple(decoder.image_shape)} but this run's "
            f"images are {image_shape}: use a decoder trained at this image size and channel count."
        )
    if context.oracle is None:
        return
    shape = tuple(context.oracle(torch.zeros(1, *image_shape)).shape[1:])
    if shape != tuple(decoder.feature_shape):
        at = f" at cut {context.cut['name']}" if context.cut.get("name") else ""
        raise SplitinvError(
            f"decoder checkpoint {path} was trained on features of shape {tuple(decoder.feature_shape)} but "
            f"the device sends {shape}{at}: use a decoder from a run at the same cut point (and defense)."
        )
