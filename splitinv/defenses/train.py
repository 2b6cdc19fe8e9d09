"""``splitinv-train-defense``: fine-tune a victim with a defense at its cut, save a checkpoint that holds it.

The defenses trained with the network (NoPeek, adversarial training against a proxy decoder, a learned
bottleneck; :class:`~splitinv.defenses.checkpoint.TrainedDefense`) exist only as a fine-tuned victim::

    splitinv-train-defense victim=resnet18 victim.image_size=32 victim.weights=victim.pt cut=layer2 \\
        defense=nopeek defense.weight=0.5 data=fashion_mnist_mini

loads the victim from ``victim.weights`` (a trained checkpoint, e.g. from ``splitinv-train-victim``; random
weights are allowed, and warned about), cuts it at ``cut`` with the defense in place and fine-tunes head and
tail on the ``data`` group's training split: cross-entropy through ``tail(restore(defense(head(x))))`` plus
the defense's own loss (and, for a defense with an adversary, one adversary step before each step of the
network). Any other defense can be fine-tuned with the same way (the tail learns to live with noise,
quantisation, ...). It reports the defended split's validation accuracy (:meth:`Split.utility`) before and
after, and the distance correlation between images and what is sent, and writes a victim checkpoint
(``victim.weights=THAT`` loads it with :func:`~splitinv.victims.build_victim`) with the defense's
description, state and cut point (:func:`~splitinv.defenses.checkpoint.defense_record`), which
:func:`~splitinv.defenses.checkpoint.load_defense` checks a run against.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from splitinv.config import instantiate
from splitinv.defenses.base import Defense
from splitinv.defenses.checkpoint import defense_label, defense_record, is_trained, read_defense
from splitinv.defenses.nopeek import distance_correlation
from splitinv.errors import SplitinvError
from splitinv.io import check_output_file, save_atomic
from splitinv.split import Split, split
from splitinv.task import hydra_command
from splitinv.train_victim import ClassifierModule, at_chance
from splitinv.training import monitor
from splitinv.victims import Victim, check_image_size, is_random_weights

log = logging.getLogger(__name__)
CHECKPOINT_NAME = "victim.pt"
DCOR_ELEMENTS = 2**25  # images x activations per image for the reported distance correlation (float64)


class DefenseModule(ClassifierModule):
    """:class:`ClassifierModule` on the defended split end to end (SGD over head, defense and tail), plus the
    defense's training loss, and the defense's adversary stepped by its own optimizer before each batch.

    Manual optimisation: per batch, one adversary step (when there is one) on the detached activations, then
    one step of the network on ``CE + sum(defense.training_loss(...))``, then the learning-rate schedule.
    """

    def __init__(
        self,
        the_split: Split,
        adversary: nn.Module | None = None,
        lr: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
    ) -> None:
        super().__init__(the_split, lr=lr, momentum=momentum, weight_decay=weight_decay)  # type: ignore[arg-type]
        self.adversary = adversary
        self.automatic_optimization = False

    @property
    def split(self) -> Split:
        return self.victim  # type: ignore[return-value]

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch[0].float(), batch[1]
        n = x.shape[0]
        the_split, defense = self.split, self.split.defense
        optimizers = self.optimizers()
        opts = optimizers if isinstance(optimizers, list) else [optimizers]
        h = the_split.head(x)
        if self.adversary is not None:
            adversary_loss = defense.adversary_loss(self.adversary, x, h.detach())
            opts[1].zero_grad()
            self.manual_backward(adversary_loss)
            opts[1].step()
        logits = the_split.serve(defense(h))
        ce = F.cross_entropy(logits, y)
        terms = defense.training_loss(x, h, self.adversary) if is_trained(defense) else {}
        loss = ce + sum(terms.values())
        opts[0].zero_grad()
        self.manual_backward(loss)
        opts[0].step()
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()
        values = {"loss": loss, "ce": ce, **terms, "acc": (logits.argmax(1) == y).float().mean()}
        if self.adversary is not None:
            values["adversary"] = adversary_loss
        # checked and logged every CHECK_EVERY steps (and at each epoch's end): no host sync per step
        hint = f"lower optim.lr (now {self.lr}) or the defense's weight."
        watch = monitor(self, "defense fine-tuning loss", hint, prog_bar=("loss", "acc", "adversary"))
        watch.update(values, self, batch_idx=batch_idx, batch_size=n)
        return loss.detach()

    def configure_optimizers(self) -> Any:
        network = super().configure_optimizers()
        if self.adversary is None:
            return network
        adversary = self.split.defense.adversary_optimizer(self.adversary)
        return [network["optimizer"], adversary], [network["lr_scheduler"]]


@torch.no_grad()
def leakage(the_split: Split, batches: Any, limit: int = 256) -> float:
    """Distance correlation between images and what the device sends, over up to ``limit`` images of
    ``batches`` (fewer when the activations are large: at most DCOR_ELEMENTS numbers in all)."""
    was_training = the_split.training
    the_split.eval()
    device = next(iter(the_split.parameters())).device
    xs, vs, n = [], [], 0
    try:
        for batch in batches:
            x = batch[0].to(device).float()
            v = the_split.observe(x)
            limit = min(limit, max(2, DCOR_ELEMENTS // max(1, math.prod(v.shape[1:]))))
            xs.append(x.cpu())
            vs.append(v.float().cpu())
            n += x.shape[0]
            if n >= limit:
                break
    finally:
        the_split.train(was_training)
    if n < 2:
        return float("nan")
    return float(distance_correlation(torch.cat(xs)[:limit], torch.cat(vs)[:limit]))


def _victim(cfg: DictConfig, num_classes: int) -> Victim:
    """The victim of ``cfg.victim`` (from its weights file, or random weights sized for the data, warned)."""
    weights = cfg.victim.get("weights")
    if is_random_weights(weights):
        log.warning(
            "victim.weights is null: fine-tuning a RANDOMLY initialised %s with the defense; pass a trained "
            "checkpoint (splitinv-train-victim) as victim.weights for a meaningful defended victim.",
            cfg.victim.get("name"),
        )
        return instantiate(cfg.victim, num_classes=cfg.victim.get("num_classes") or num_classes)
    held = read_defense(weights)
    if held is not None:
        raise SplitinvError(
            f"victim.weights={weights} already carries defense {defense_label(held['defense'])} at "
            f"{held['cut']}: fine-tune from an undefended victim checkpoint (from splitinv-train-victim)."
        )
    victim: Victim = instantiate(cfg.victim)
    if victim.num_classes != num_classes:
        raise SplitinvError(
            f"victim.weights={weights} has {victim.num_classes} classes but the data has {num_classes}: "
            "fine-tune on the data the victim was trained on."
        )
    return victim


def train_defense(cfg: DictConfig) -> dict[str, Any]:
    """Fine-tune ``cfg.victim`` cut at ``cfg.cut`` with ``cfg.defense`` on ``cfg.data``; save a checkpoint."""
    check_output_file("checkpoint", cfg.get("checkpoint"))  # before any training
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    defense: Defense | None = instantiate(cfg.defense) if cfg.get("defense") else None
    if defense is None or defense.name == "none":
        raise SplitinvError(
            "defense=none: there is no defense to fine-tune with: pick one (defense=nopeek, adversarial, "
            "bottleneck, ...), or train a plain victim with splitinv-train-victim."
        )
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    if datamodule.num_classes < 2:
        raise SplitinvError(
            f"data={datamodule.name} has no class labels: fine-tune the defense on a labelled dataset."
        )
    victim = _victim(cfg, datamodule.num_classes)
    check_image_size(victim, datamodule.image_size, datamodule.channels)
    the_split = split(victim, str(cfg.cut), defense)
    point = the_split.point
    assert point is not None

    x0 = next(iter(datamodule.train_dataloader()))[0].float()
    the_split.eval()
    with torch.no_grad():
        h0 = the_split.head(x0)
    feature_shape = tuple(h0.shape[1:])
    image_shape = tuple(x0.shape[1:])
    adversary = None
    if is_trained(defense):
        defense.fit_start(x0, h0)
        adversary = defense.build_adversary(image_shape)
    before = the_split.utility(datamodule.val_dataloader())
    dcor_before = leakage(the_split, datamodule.val_dataloader())

    module = DefenseModule(the_split, adversary, **cfg.optim)
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    trainer: L.Trainer = instantiate(cfg.trainer, logger=logger)
    the_split.train()  # the victim is built in eval mode; Lightning does not switch modes for us
    trainer.fit(module, datamodule=datamodule)
    the_split.eval()
    after = the_split.utility(datamodule.val_dataloader())
    dcor_after = leakage(the_split, datamodule.val_dataloader())
    if after["accuracy"] is not None and at_chance(after["accuracy"], victim.num_classes, after["n"]):
        # kept: a defense that leaves chance accuracy is a point of a privacy-utility curve, but said so
        log.warning(
            "the defended victim classifies at chance (val_acc %.4f on %d images, chance %.4f for %d "
            "classes; %.4f before fine-tuning): it is saved, but any privacy it shows costs all its utility",
            after["accuracy"], after["n"], 1 / victim.num_classes, victim.num_classes, before["accuracy"],
        )  # fmt: skip

    weights = cfg.victim.get("weights")
    base_weights = None if is_random_weights(weights) else str(weights)
    victim.weights = "trained"
    out = Path(cfg.checkpoint or Path(cfg.paths.output_dir) / CHECKPOINT_NAME)
    if trainer.is_global_zero:
        the_split.cpu()
        checkpoint = {
            **victim.checkpoint(),
            **defense_record(defense, point, feature_shape),
            "base_weights": base_weights,
        }
        save_atomic(checkpoint, out)
    return {
        "checkpoint": str(out),
        "defense": defense.describe(),
        "cut": point,
        "val_acc": after["accuracy"],
        "val_acc_before": before["accuracy"],
        "agreement": after["agreement"],
        "dcor": dcor_after,
        "dcor_before": dcor_before,
        "payload_elements": int(defense.payload_elements(feature_shape)),
        "activation_elements": int(math.prod(feature_shape)),
    }


def _summary(result: dict[str, Any], cfg: DictConfig) -> str:
    return (
        f"defense {defense_label(result['defense'])} at {result['cut']}: val_acc {result['val_acc']:.4f} "
        f"(before fine-tuning {result['val_acc_before']:.4f}), dCor(x, sent) {result['dcor']:.3f} "
        f"(before {result['dcor_before']:.3f}), sends {result['payload_elements']} of "
        f"{result['activation_elements']} numbers -> {result['checkpoint']}"
    )


main = hydra_command("splitinv-train-defense", "train_defense", train_defense, _summary)
main.__doc__ = "Console entry point (`splitinv-train-defense`)."
