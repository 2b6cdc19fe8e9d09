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

from splitinv.attacks.base import Attack, AttackContext, AttackerKnowledge, Reconstruction, Writer
from splitinv.decoders import Decoder, build_decoder
from splitinv.errors import SplitinvError
from splitinv.io import load_weights, save_atomic

if TYPE_CHECKING:  # pragma: no cover
    from splitinv.split import QueryOracle

DECODER_FORMAT = "splitinv-decoder/1"
DECODER_FILE = "decoder.pt"


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
    ) -> None:
        super().__init__()
        if loss not in ("mse", "l1"):
            raise SplitinvError(f"unknown decoder loss {loss!r}: use attack.loss=mse or attack.loss=l1.")
        self.oracle, self.decoder = oracle, decoder
        self.loss_name, self.perceptual_weight = loss, float(perceptual_weight)
        self.lr, self.amsgrad, self.weight_decay = lr, amsgrad, weight_decay
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
        pixel = F.mse_loss(x_hat, x) if self.loss_name == "mse" else F.l1_loss(x_hat, x)
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
        if not torch.isfinite(loss):
            raise SplitinvError(
                f"decoder loss became {loss.item()} at step {self.global_step}: lower attack.lr "
                f"(now {self.lr}) or check the victim's activations for inf/NaN."
            )
        self.images_seen += x.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=x.shape[0])
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(
            self.decoder.parameters(), lr=self.lr, amsgrad=self.amsgrad, weight_decay=self.weight_decay
        )


class DecoderAttack(Attack):
    """Black-box inverse network: train a decoder on the observations of auxiliary images."""

    name = "decoder"
    learns_from_observations = True  # (image, observation) pairs only: the activation cache can feed it

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
    ) -> None:
        self.name = name
        self.settings = {
            "loss": loss,
            "perceptual_weight": perceptual_weight,
            "lr": lr,
            "amsgrad": amsgrad,
            "weight_decay": weight_decay,
            "width": width,
        }
        self.knowledge = AttackerKnowledge(access="black-box", aux_data=aux_data, defense_aware=defense_aware)
        self.checkpoint = checkpoint
        self.decoder: Decoder | None = None

    def fit(self, context: AttackContext) -> dict[str, Any]:
        """Train the decoder on the context's auxiliary data (or load ``checkpoint``); returns train stats."""
        if self.checkpoint:
            self.decoder = load_decoder(self.checkpoint)
            return {}
        datamodule = context.require_data(self.name)
        datamodule.setup("fit")
        loader = datamodule.train_dataloader()
        first = next(iter(loader))
        if isinstance(first, dict):  # cached observations
            feature_shape = tuple(first["observation"].shape[1:])
        else:
            if context.oracle is None:
                raise SplitinvError(f"{self.name} queries the device: its context needs the oracle.")
            feature_shape = tuple(context.oracle(first[0][:2]).shape[1:])
        self.decoder = build_decoder(feature_shape, context.image_shape, self.settings["width"])
        module = DecoderModule(
            context.oracle, self.decoder, **{k: v for k, v in self.settings.items() if k != "width"}
        )
        trainer = context.trainer
        start = time.perf_counter()
        trainer.fit(module, train_dataloaders=loader)
        seconds = time.perf_counter() - start
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
        return {**super().describe(), **self.settings, "checkpoint": self.checkpoint}

    def artifacts(self) -> dict[str, Writer]:
        return {DECODER_FILE: self.save} if self.decoder is not None else {}

    def save(self, path: str | Path) -> None:
        """Write the decoder (``decoder.pt``: loadable by ``attack.checkpoint``), atomically."""
        if self.decoder is None:
            raise SplitinvError("the decoder attack was not fitted: nothing to save.")
        save_atomic(
            {
                "format": DECODER_FORMAT,
                "feature_shape": list(self.decoder.feature_shape),
                "image_shape": list(self.decoder.image_shape),
                "width": self.decoder.width,
                "state_dict": self.decoder.state_dict(),
            },
            path,
        )


def load_decoder(path: str | Path) -> Decoder:
    """A decoder saved by :meth:`DecoderAttack.save`, or a one-line error (loaded with weights_only=True)."""
    obj = load_weights(path, "decoder", hint="train one with attack=decoder first.")
    if obj.get("format") != DECODER_FORMAT:
        raise SplitinvError(
            f"{path} is not a splitinv decoder checkpoint (expected format {DECODER_FORMAT})."
        )
    decoder = build_decoder(tuple(obj["feature_shape"]), tuple(obj["image_shape"]), obj.get("width"))
    try:
        decoder.load_state_dict(obj["state_dict"])
    except RuntimeError as err:
        raise SplitinvError(
            f"decoder checkpoint {path} does not fit the architecture it describes (an older splitinv's?): "
            "retrain it with attack=decoder."
        ) from err
    return decoder.eval()
