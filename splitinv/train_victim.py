"""``splitinv-train-victim``: train a classifier on a dataset and save a checkpoint that ``weights=`` accepts.

Offline users cannot download ImageNet weights; this gives them a trained network to attack (the quickstart
trains a ResNet-18 on the Fashion-MNIST subset that ships with splitinv).
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from splitinv.config import instantiate
from splitinv.errors import SplitinvError
from splitinv.io import check_output_file, save_atomic
from splitinv.task import hydra_command
from splitinv.training import monitor
from splitinv.victims import Victim

log = logging.getLogger(__name__)
CHECKPOINT_NAME = "victim.pt"


OPTIMIZERS = ("sgd", "adam")
LR_SCHEDULES = ("onecycle", "step", "constant")


class ClassifierModule(L.LightningModule):
    """Cross-entropy training of a Victim on [0, 1] images.

    Default: SGD with momentum and a one-cycle schedule (per step). ``optimizer=adam`` with ``eps``,
    ``amsgrad`` and ``schedule=step`` (times ``gamma`` every ``step_every`` epochs) gives He et al.'s recipe
    (Adam lr 1e-3 eps 1e-3 AMSGrad, lr halved every 20 epochs: ``recipe=he2019_mnist``).
    """

    def __init__(
        self,
        victim: Victim,
        lr: float = 0.05,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        optimizer: str = "sgd",
        eps: float = 1e-8,
        amsgrad: bool = False,
        schedule: str = "onecycle",
        step_every: int = 20,
        gamma: float = 0.5,
    ) -> None:
        super().__init__()
        if optimizer not in OPTIMIZERS:
            raise SplitinvError(f"optim.optimizer={optimizer!r}: use one of {', '.join(OPTIMIZERS)}.")
        if schedule not in LR_SCHEDULES:
            raise SplitinvError(f"optim.schedule={schedule!r}: use one of {', '.join(LR_SCHEDULES)}.")
        for name, value in (("lr", lr), ("eps", eps), ("gamma", gamma)):
            if not isinstance(value, (int, float)) or not value > 0 or value != value:
                raise SplitinvError(f"optim.{name} must be a positive number, got {value!r}.")
        if schedule == "step" and (not isinstance(step_every, int) or step_every < 1):
            raise SplitinvError(f"optim.step_every must be an integer >= 1 epochs, got {step_every!r}.")
        self.victim = victim
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.optimizer_name, self.eps, self.amsgrad = optimizer, float(eps), bool(amsgrad)
        self.schedule, self.step_every, self.gamma = schedule, step_every, float(gamma)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch[0], batch[1]
        logits = self.victim(x)
        loss = F.cross_entropy(logits, y)
        acc = (logits.argmax(1) == y).float().mean()
        # checked and logged every CHECK_EVERY steps (and at each epoch's end): no host sync per step
        watch = monitor(
            self, "victim training loss", f"lower optim.lr (now {self.lr}).", prog_bar=("loss", "acc")
        )
        watch.update({"loss": loss, "acc": acc}, self, batch_idx=batch_idx, batch_size=x.shape[0])
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch[0], batch[1]
        logits = self.victim(x)
        self.log("val/loss", F.cross_entropy(logits, y), batch_size=x.shape[0])
        self.log("val/acc", (logits.argmax(1) == y).float().mean(), prog_bar=True, batch_size=x.shape[0])

    def configure_optimizers(self) -> Any:
        params = self.victim.parameters()
        if self.optimizer_name == "adam":
            opt: torch.optim.Optimizer = torch.optim.Adam(
                params, lr=self.lr, eps=self.eps, amsgrad=self.amsgrad, weight_decay=self.weight_decay
            )
        else:
            opt = torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        if self.schedule == "constant":
            return opt
        if self.schedule == "step":
            step = torch.optim.lr_scheduler.StepLR(opt, step_size=self.step_every, gamma=self.gamma)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": step, "interval": "epoch"}}
        steps = self.trainer.estimated_stepping_batches
        return {
            "optimizer": opt,
            "lr_scheduler": {
                "scheduler": torch.optim.lr_scheduler.OneCycleLR(opt, self.lr, steps),
                "interval": "step",
            },
        }


def at_chance(accuracy: float, num_classes: int, n: int) -> bool:
    """Whether ``accuracy`` on ``n`` images is within one standard error of guessing among
    ``num_classes`` classes (at or below ``1 / num_classes`` plus that error)."""
    chance = 1.0 / max(1, int(num_classes))
    return accuracy <= chance + math.sqrt(chance * (1.0 - chance) / max(1, int(n)))


def check_trained(val_acc: float, val_loss: float, num_classes: int, n: int, lr: float) -> None:
    """Refuse a trained victim not worth saving, in one line: a NaN/inf validation loss (it diverged), or an
    accuracy at chance (``1 / num_classes``, within one standard error of random guessing on ``n``
    validation images). ``allow_chance=true`` keeps a deliberate chance-level network."""
    if not math.isfinite(val_loss):
        raise SplitinvError(
            f"victim training diverged: validation loss {val_loss} (val_acc {val_acc:.4f}): lower optim.lr "
            f"(now {lr}); nothing was saved."
        )
    chance = 1.0 / max(1, int(num_classes))
    if at_chance(val_acc, num_classes, n):
        raise SplitinvError(
            f"victim training ended at chance accuracy (val_acc {val_acc:.4f} on {n} images, chance "
            f"{chance:.4f} for {num_classes} classes): train longer (trainer.max_epochs), on more data "
            f"(data.n_aux) or with another optim.lr (now {lr}), or pass allow_chance=true to keep it; "
            "nothing was saved."
        )


def save_victim(victim: Victim, path: str | Path) -> Path:
    """Write ``victim.checkpoint()`` atomically (a temporary file renamed into place)."""
    return save_atomic(victim.checkpoint(), path)


def train_victim(cfg: DictConfig) -> dict[str, Any]:
    """Train ``cfg.victim`` on ``cfg.data`` (aux split = training set, eval split = validation), save it."""
    check_output_file("checkpoint", cfg.get("checkpoint"))  # before any training
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    if datamodule.num_classes < 2:
        raise SplitinvError(
            f"data={datamodule.name} has no class labels: train the victim on a labelled dataset."
        )
    start_from = cfg.victim.get("weights")
    with warnings.catch_warnings():  # random initial weights are what training starts from: no warning
        warnings.filterwarnings("ignore", message=".*RANDOM weights")
        # victim.weights set: fine-tune that checkpoint; else train from a random initialisation
        victim: Victim = instantiate(cfg.victim, num_classes=datamodule.num_classes, weights=start_from)
    if start_from and int(victim.num_classes) != int(datamodule.num_classes):
        raise SplitinvError(
            f"victim.weights={start_from} has {victim.num_classes} classes, data={datamodule.name} "
            f"{datamodule.num_classes}: fine-tune a checkpoint of the same classes, or drop victim.weights."
        )
    victim.weights = "trained"
    victim.train()  # built in eval mode; Lightning does not switch modes for us
    module = ClassifierModule(victim, **cfg.optim)
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    trainer: L.Trainer = instantiate(cfg.trainer, logger=logger)
    trainer.fit(module, datamodule=datamodule)
    if trainer.global_step == 0:
        raise SplitinvError("victim training ran no step (trainer.max_epochs=0?): nothing was saved.")
    bad = [n for n, p in victim.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        raise SplitinvError(
            f"victim training diverged: {len(bad)} weight tensors hold NaN/inf (first {bad[0]}): lower "
            f"optim.lr (now {cfg.optim.lr}); nothing was saved."
        )
    val = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
    if not cfg.get("allow_chance", False):
        n_val = int(getattr(datamodule, "n_eval", 0) or 0)
        check_trained(float(val["val/acc"]), float(val["val/loss"]), victim.num_classes, n_val, cfg.optim.lr)
    victim.eval()
    out = Path(cfg.checkpoint or Path(cfg.paths.output_dir) / CHECKPOINT_NAME)
    if trainer.is_global_zero:
        save_victim(victim.cpu(), out)
    result = {"checkpoint": str(out), "val_acc": float(val["val/acc"]), "val_loss": float(val["val/loss"])}
    if start_from:
        result["fine_tuned_from"] = str(start_from)
    return result


def _summary(result: dict[str, Any], cfg: DictConfig) -> str:
    return f"val_acc {result['val_acc']:.4f}, val_loss {result['val_loss']:.4f} -> {result['checkpoint']}"


main = hydra_command("splitinv-train-victim", "train_victim", train_victim, _summary)
main.__doc__ = "Console entry point (`splitinv-train-victim`)."
