"""UnSplit (Erdogan, Kupcu, Cicek, 2022): the attacker knows only the head's architecture and its output.

For each observation ``v`` it starts a clone of the head (the architecture with fresh weights) and an image
``x`` (constant ``init_value``), then alternates, ``outer_steps`` times: ``input_steps`` Adam steps on ``x``
against ``MSE(clone(x), v) + tv_weight * TV(x) + l2_weight * L2(x)``, and ``clone_steps`` Adam steps on the
clone's weights against ``MSE(clone(x), v)``. ``attack.preset=unsplit2022`` is the public code's setting (x
from 0.5, both Adam with AMSGrad lr 1e-3, TV 0.1, L2 1.0, 1000 x (100 + 100) steps); the defaults in
``conf/attack/unsplit.yaml`` are splitinv's, sized for CPU minutes. TV is the mean squared neighbour
difference and L2 the mean square of ``x`` (our reading of the code's losses). Each image has its own clone
(all start from the same fresh weights), so a result does not depend on the batch.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from splitinv.attacks.base import (
    Attack,
    AttackContext,
    AttackerKnowledge,
    Reconstruction,
    check_int,
    check_number,
)
from splitinv.attacks.priors import total_variation
from splitinv.errors import SplitinvError
from splitinv.progress import track

# ``attack.preset=unsplit2022``: the public code's defaults (see the module docstring)
UNSPLIT_PRESETS: dict[str, dict[str, Any]] = {
    "unsplit2022": {
        "init_value": 0.5, "input_lr": 1e-3, "clone_lr": 1e-3, "amsgrad": True, "tv_weight": 0.1,
        "l2_weight": 1.0, "outer_steps": 1000, "input_steps": 100, "clone_steps": 100,
    },
}  # fmt: skip


class UnSplitAttack(Attack):
    """Architecture-only inversion: alternate optimising the input and a clone of the head, per image."""

    name = "unsplit"
    per_image = True
    budget = ("attack.outer_steps", "attack.input_steps", "attack.clone_steps")

    def __init__(
        self,
        name: str = "unsplit",
        access: str = "architecture",
        seed: int = 0,
        init_value: float = 0.5,
        input_lr: float = 1e-2,
        clone_lr: float = 1e-3,
        amsgrad: bool = True,
        tv_weight: float = 0.1,
        l2_weight: float = 0.0,
        outer_steps: int = 20,
        input_steps: int = 25,
        clone_steps: int = 25,
        preset: str | None = None,
        progress: bool = True,
        defense_aware: bool = True,
    ) -> None:
        if access != "architecture":
            raise SplitinvError(f"attack.access={access!r}: UnSplit's access is architecture.")
        self.name = str(name)
        self.seed = int(seed)
        self.preset = None if preset in (None, "none", "null") else str(preset)
        if self.preset not in (None, *UNSPLIT_PRESETS):
            raise SplitinvError(
                f"unknown attack.preset={preset!r} for unsplit: use null or {', '.join(UNSPLIT_PRESETS)}."
            )
        values = {
            "init_value": init_value, "input_lr": input_lr, "clone_lr": clone_lr, "amsgrad": amsgrad,
            "tv_weight": tv_weight, "l2_weight": l2_weight, "outer_steps": outer_steps,
            "input_steps": input_steps, "clone_steps": clone_steps,
        }  # fmt: skip
        values.update(UNSPLIT_PRESETS.get(self.preset or "", {}))
        self.init_value = check_number("init_value", values["init_value"])
        if self.init_value > 1:
            raise SplitinvError(f"attack.init_value must lie in [0, 1], got {init_value!r}.")
        self.input_lr = check_number("input_lr", values["input_lr"], 0.0, strict=True)
        self.clone_lr = check_number("clone_lr", values["clone_lr"], 0.0, strict=True)
        self.amsgrad = bool(values["amsgrad"])
        self.tv_weight = check_number("tv_weight", values["tv_weight"])
        self.l2_weight = check_number("l2_weight", values["l2_weight"])
        self.outer_steps = check_int("outer_steps", values["outer_steps"], 1)
        self.input_steps = check_int("input_steps", values["input_steps"], 1)
        self.clone_steps = check_int("clone_steps", values["clone_steps"], 0)
        self.progress = bool(progress)
        self.knowledge = AttackerKnowledge(
            access="architecture", aux_data="none", defense_aware=defense_aware
        )
        self.template: nn.Module | None = None
        self.defense: Any = None
        self.image_shape: tuple[int, ...] | None = None

    @property
    def steps_per_image(self) -> int:
        return self.outer_steps * (self.input_steps + self.clone_steps)

    def fit(self, context: AttackContext) -> dict[str, Any]:
        """Keep the head's architecture (fresh weights) and the weightless defense, where it has one."""
        self.template = context.require_architecture(self.name)()
        self.defense = context.defense
        self.image_shape = tuple(context.image_shape)
        return {}

    def _one(self, v: Tensor, device: torch.device) -> tuple[Tensor, Tensor]:
        """Reconstruct one image from its observation ``v`` (1, ...); returns (image, final feature loss)."""
        assert self.template is not None and self.image_shape is not None
        clone = copy.deepcopy(self.template).to(device).eval()  # eval: BatchNorm uses its (reset) statistics
        for p in clone.parameters():
            p.requires_grad_(True)
        x = torch.full((1, *self.image_shape), self.init_value, device=device, requires_grad=True)
        x_opt = torch.optim.Adam([x], lr=self.input_lr, amsgrad=self.amsgrad)
        params = list(clone.parameters())
        c_opt = torch.optim.Adam(params, lr=self.clone_lr, amsgrad=self.amsgrad) if params else None
        defense = self.defense

        def observe(z: Tensor) -> Tensor:
            h = clone(z)
            return defense(h) if defense is not None else h

        loss = torch.zeros((), device=device)
        for _ in range(self.outer_steps):
            for _ in range(self.input_steps):
                feature = F.mse_loss(observe(x), v)
                loss = feature
                if self.tv_weight > 0:
                    loss = loss + self.tv_weight * total_variation(x, 2.0, reduction="mean").sum()
                if self.l2_weight > 0:
                    loss = loss + self.l2_weight * x.pow(2).mean()
                x_opt.zero_grad(set_to_none=True)
                loss.backward()
                x_opt.step()
                with torch.no_grad():
                    x.clamp_(0, 1)
            if c_opt is None:
                continue
            for _ in range(self.clone_steps):
                feature = F.mse_loss(observe(x.detach()), v)
                c_opt.zero_grad(set_to_none=True)
                feature.backward()
                c_opt.step()
        with torch.no_grad():
            final = F.mse_loss(observe(x), v)
        if not torch.isfinite(final):
            raise SplitinvError(f"{self.name} loss became nan/inf: lower attack.input_lr / attack.clone_lr.")
        return x.detach().clamp(0, 1), final.detach()

    def invert(self, observations: Tensor, index: Tensor | Sequence[int] | None = None) -> Reconstruction:
        if self.template is None:
            raise SplitinvError(f"the {self.name} attack has no architecture: call fit(context) first.")
        device = observations.device
        images, losses = [], []
        with torch.enable_grad():
            for i in track(range(observations.shape[0]), desc=self.name, enabled=self.progress):
                image, loss = self._one(observations[i : i + 1].detach().float(), device)
                images.append(image)
                losses.append(loss)
        return Reconstruction(torch.cat(images), torch.stack(losses).float().cpu())

    def describe(self) -> dict[str, Any]:
        info = {
            **super().describe(),
            "seed": self.seed,
            "preset": self.preset,
            "init_value": self.init_value,
            "input_lr": self.input_lr,
            "clone_lr": self.clone_lr,
            "amsgrad": self.amsgrad,
            "tv_weight": self.tv_weight,
            "l2_weight": self.l2_weight,
            "outer_steps": self.outer_steps,
            "input_steps": self.input_steps,
            "clone_steps": self.clone_steps,
        }
        return json.loads(json.dumps(info, default=str))
