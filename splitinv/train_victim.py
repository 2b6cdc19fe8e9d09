"""``splitinv-train-victim``: train a classifier on a dataset and save a checkpoint that ``weights=`` accepts.

Offline users cannot download ImageNet weights; this gives them a trained network to attack (the quickstart
trains a ResNet-18 on the Fashion-MNIST subset that ships with splitinv).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from splitinv.config import instantiate
from splitinv.errors import SplitinvError
from splitinv.io import save_atomic
from splitinv.task import hydra_command
from splitinv.victims import Victim

log = logging.getLogger(__name__)
CHECKPOINT_NAME = "victim.pt"


class ClassifierModule(L.LightningModule):
    """Cross-entropy training of a Victim on [0, 1] images (SGD with momentum, cosine schedule)."""

    def __init__(
        self, victim: Victim, lr: float = 0.05, momentum: float = 0.9, weight_decay: float = 5e-4
    ) -> None:
        super().__init__()
        self.victim = victim
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch[0], batch[1]
        logits = self.victim(x)
        loss = F.cross_entropy(logits, y)
        if not torch.isfinite(loss):
            raise SplitinvError(f"victim training loss became {loss.item()}: lower lr (now {self.lr}).")
        self.log("train/loss", loss, prog_bar=True, batch_size=x.shape[0])
        self.log("train/acc", (logits.argmax(1) == y).float().mean(), prog_bar=True, batch_size=x.shape[0])
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch[0], batch[1]
        logits = self.victim(x)
        self.log("val/loss", F.cross_entropy(logits, y), batch_size=x.shape[0])
        self.log("val/acc", (logits.argmax(1) == y).float().mean(), prog_bar=True, batch_size=x.shape[0])

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(
            self.victim.parameters(), lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay
        )
        steps = self.trainer.estimated_stepping_batches
        return {
            "optimizer": opt,
            "lr_scheduler": {
                "scheduler": torch.optim.lr_scheduler.OneCycleLR(opt, self.lr, steps),
                "interval": "step",
            },
        }


def save_victim(victim: Victim, path: str | Path) -> Path:
    """Write ``victim.checkpoint()`` atomically (a temporary file renamed into place)."""
    return save_atomic(victim.checkpoint(), path)


def train_victim(cfg: DictConfig) -> dict[str, Any]:
    """Train ``cfg.victim`` on ``cfg.data`` (aux split = training set, eval split = validation), save it."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    if datamodule.num_classes < 2:
        raise SplitinvError(
            f"data={datamodule.name} has no class labels: train the victim on a labelled dataset."
        )
    victim: Victim = instantiate(cfg.victim, num_classes=datamodule.num_classes, weights=None)
    victim.weights = "trained"
    victim.train()  # built in eval mode; Lightning does not switch modes for us
    module = ClassifierModule(victim, **cfg.optim)
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    trainer: L.Trainer = instantiate(cfg.trainer, logger=logger)
    trainer.fit(module, datamodule=datamodule)
    val = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
    victim.eval()
    out = Path(cfg.checkpoint or Path(cfg.paths.output_dir) / CHECKPOINT_NAME)
    if trainer.is_global_zero:
        save_victim(victim.cpu(), out)
    result = {"checkpoint": str(out), "val_acc": float(val["val/acc"]), "val_loss": float(val["val/loss"])}
    return result


def _summary(result: dict[str, Any], cfg: DictConfig) -> str:
    return f"val_acc {result['val_acc']:.4f}, val_loss {result['val_loss']:.4f} -> {result['checkpoint']}"


main = hydra_command("splitinv-train-victim", "train_victim", train_victim, _summary)
main.__doc__ = "Console entry point (`splitinv-train-victim`)."
