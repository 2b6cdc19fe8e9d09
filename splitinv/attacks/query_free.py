"""He et al.'s query-free attack (ACSAC 2019, their third setting): the attacker holds the server's half (the
tail) and auxiliary labelled data, but can neither query the device nor read its head. It trains a shadow head
with the head's architecture and fresh weights so that ``tail(shadow(x))`` classifies its data (the tail
frozen), then runs rMLE (:class:`splitinv.attacks.optimize.OptimizationAttack`, every setting of
``conf/attack/_optimize.yaml``) on the shadow instead of the head.
"""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from torch import nn

from splitinv.attacks.base import AUX_DATA, AttackContext, AttackerKnowledge, check_choice, check_number
from splitinv.attacks.optimize import OptimizationAttack
from splitinv.errors import SplitinvError
from splitinv.split import Client
from splitinv.training import monitor


class ShadowModule(L.LightningModule):
    """Trains ``shadow`` so that ``tail(defense(shadow(x)))`` predicts the labels; the tail stays frozen and
    in eval mode (held outside the module's children, so Lightning never puts it in training mode)."""

    def __init__(self, shadow: nn.Module, tail: nn.Module, defense: nn.Module | None, lr: float, eps: float):
        super().__init__()
        self.shadow = shadow
        self._server = [tail, defense]  # not submodules: their parameters and BatchNorm statistics stay
        self.lr, self.eps = lr, eps
        self.images_seen = 0

    def on_fit_start(self) -> None:
        for module in self._server:
            if module is not None:
                module.to(self.device).eval()
                for p in module.parameters():
                    p.requires_grad_(False)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, labels = batch[0].float(), batch[1].long()
        if bool((labels < 0).any()):
            raise SplitinvError(
                "the query-free attack trains its shadow head on labelled auxiliary data, but these images "
                "have no labels (aux=noise?): use aux=same or a labelled dataset."
            )
        tail, defense = self._server
        h = self.shadow(x)
        logits = tail(defense.restore(defense(h)) if defense is not None else h)
        loss = F.cross_entropy(logits, labels)
        monitor(self, "shadow head loss", f"lower attack.shadow_lr (now {self.lr}).").update(
            {"loss": loss}, self, batch_idx=batch_idx, batch_size=x.shape[0]
        )
        self.images_seen += x.shape[0]
        return loss

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.shadow.parameters(), lr=self.lr, eps=self.eps, amsgrad=True)


class QueryFreeAttack(OptimizationAttack):
    """Shadow head trained through the frozen tail on auxiliary data, then rMLE on the shadow."""

    name = "query_free"
    per_image = True
    budget = ("attack.steps", "trainer.max_epochs", "data.n_aux")  # the shadow head's training, then rMLE

    def __init__(
        self,
        name: str = "query_free",
        access: str = "query-free",
        aux_data: str = "same",
        shadow_lr: float = 1e-3,
        shadow_eps: float = 1e-8,
        **settings: Any,
    ) -> None:
        if access != "query-free":
            raise SplitinvError(f"attack.access={access!r}: the query-free attack's access is query-free.")
        super().__init__(name=name, access="white-box", aux_data="none", **settings)
        self.knowledge = AttackerKnowledge(
            access="query-free",
            aux_data=check_choice("aux_data", aux_data, AUX_DATA),
            defense_aware=self.knowledge.defense_aware,
        )
        self.shadow_lr = check_number("shadow_lr", shadow_lr, 0.0, strict=True)
        self.shadow_eps = check_number("shadow_eps", shadow_eps, 0.0, strict=True)
        if self.preset == "he2019":  # their victim-training recipe (the paper gives no shadow settings)
            self.shadow_lr, self.shadow_eps = 1e-3, 1e-3
        self.shadow_stats: dict[str, Any] = {}

    @property
    def uses_aux_data(self) -> bool:
        """The shadow head trains on the auxiliary data: the run records which (same or other)."""
        return True

    def fit(self, context: AttackContext) -> dict[str, Any]:
        """Train the shadow head on the auxiliary data through the tail, then keep it as rMLE's head."""
        tail = context.require_tail(self.name)
        shadow = context.require_architecture(self.name)()
        datamodule = context.require_data(self.name)
        datamodule.setup("fit")
        defense = context.defense
        module = ShadowModule(shadow, tail, defense, self.shadow_lr, self.shadow_eps)
        trainer = context.trainer
        server = [p for m in (tail, defense) if m is not None for p in m.parameters()]
        flags = [p.requires_grad for p in server]
        start = time.perf_counter()
        try:
            trainer.fit(module, train_dataloaders=datamodule.train_dataloader())
        finally:  # the server's modules are the victim's: leave them as they were
            for p, flag in zip(server, flags, strict=True):
                p.requires_grad_(flag)
        seconds = time.perf_counter() - start
        if trainer.global_step == 0:
            raise SplitinvError(
                f"the {self.name} attack trained its shadow head 0 steps: give it at least one epoch "
                "(trainer.max_epochs)."
            )
        shadow.eval()
        for p in shadow.parameters():
            p.requires_grad_(False)
        self.client = Client(shadow, defense if defense is not None else nn.Identity())
        self.settings.eot_samples = self.eot_samples if getattr(defense, "stochastic", False) else 1
        self.image_shape = tuple(context.image_shape)
        self.cut_info = dict(context.cut)
        mean, std = self.cut_info.get("input_mean"), self.cut_info.get("input_std")
        if mean and std:  # the victim's normalisation is public (it is in the shadow's copy too)
            self.normalization = (torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1))
        if self.preset is not None:
            self._apply_preset(_Named(self.cut_info.get("victim")))
        self.resolve_schedule()
        self.shadow_stats = {
            "train_seconds": seconds,
            "train_images": module.images_seen,
            "train_images_per_s": module.images_seen / seconds if seconds > 0 else float("nan"),
            "train_steps": trainer.global_step,
        }
        return dict(self.shadow_stats)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "shadow_lr": self.shadow_lr, "shadow_eps": self.shadow_eps}


class _Named:
    """What the he2019 preset reads of a context (the victim's name), without the victim."""

    def __init__(self, victim: Any) -> None:
        self.victim = type("Victim", (), {"name": str(victim)})()
