"""White-box per-image optimisation attacks: one loop, the methods are configurations of its loss terms.

The attacker knows the head's weights and searches, for each image, an input ``x`` whose head output matches
the observed features ``v``:

    loss(x) = w_f * D(head(aug(x)), v) + w_tv * TV^beta(x) + w_a * ||x - 0.5||_a^a + w_bn * R_bn(x)

- rMLE (He et al., ACSAC 2019): D = MSE, TV (beta 1), x starts at a constant 0.5 image, Adam; the paper's
  schedule: shallow cuts lr 1e-2 for 500 iterations, deep cuts lr 1e-3 for 5000 (``conf/attack/rmle.yaml``).
- Mahendran & Vedaldi (CVPR 2015): D = ||phi(x) - phi0||^2 / ||phi0||^2 (``nmse``), alpha-norm (alpha 6) and
  TV^beta (beta 2) priors, both weights 1e-5, SGD with momentum (``conf/attack/mahendran.yaml``).
- DeepInversion's BatchNorm-statistics prior R_bn (Yin et al. 2020, weight 0.01 in the paper), random jitter
  and flips: optional terms of any of them (``attack.bn_weight=0.01 attack.jitter=2 attack.flip=true``).

Each image's loss is its own term of a sum and the optimisers act element-wise, so an image's result does not
depend on its batch; random initialisation and augmentation are drawn from a generator seeded by
(seed, image index). The image is optimised directly in pixel space and clamped to [0, 1] after every step
(``param: clamp``, the default): the paper's learning rates are then steps in pixel units, as in He et al.
``param: sigmoid`` optimises logits instead (no clamping, but the gradient shrinks near 0 and 1 and the
published learning rates no longer mean the same step).
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from splitinv.attacks.base import AUX_DATA, Attack, AttackContext, AttackerKnowledge, Reconstruction
from splitinv.attacks.priors import BNStatsPrior, alpha_norm, random_flip, random_jitter, total_variation
from splitinv.errors import SplitinvError
from splitinv.optim import image_generator

__all__ = [
    "DEPTH_THRESHOLD",
    "FEATURE_LOSSES",
    "OptimizationAttack",
    "OptimizeSettings",
    "feature_loss",
    "image_generator",
    "optimize",
]

FEATURE_LOSSES = ("mse", "cosine", "nmse")
OPTIMIZERS = ("adam", "adamw", "sgd")
LR_SCHEDULES = ("constant", "cosine", "step")
SCHEDULES = ("auto", "shallow", "deep")
PARAMS = ("clamp", "sigmoid")
INITS = ("constant", "noise")
# ``schedule: auto`` calls a cut shallow below this relative depth (cut index / (number of cut points - 1)).
# He et al.'s shallow cuts sit at 1/6 (CIFAR conv11) and 1/5 (LeNet conv1) of their networks, their deep
# ones at 2/5 (LeNet ReLU2) and beyond (CIFAR ReLU22 at 4/6): 0.4 separates them. On ResNet-18, layer1
# (0.36) is shallow and layer2.0 (0.43) deep.
DEPTH_THRESHOLD = 0.4
PAPER_SCHEDULES = {"shallow": {"lr": 1e-2, "steps": 500}, "deep": {"lr": 1e-3, "steps": 5000}}


def _choice(name: str, value: Any, valid: Sequence[str]) -> str:
    if value not in valid:
        raise SplitinvError(f"unknown attack.{name} {value!r}: choose one of {', '.join(valid)}.")
    return str(value)


def _number(name: str, value: Any, minimum: float = 0.0, strict: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise SplitinvError(f"attack.{name} must be a number, got {value!r}.") from None
    if not math.isfinite(v) or v < minimum or (strict and v == minimum):
        op = ">" if strict else ">="
        raise SplitinvError(f"attack.{name} must be a finite number {op} {minimum}, got {value!r}.")
    return v


def feature_loss(f_hat: Tensor, f: Tensor, kind: str = "mse") -> Tensor:
    """Per-image feature distance, shape (B,): ``mse`` (mean squared error over the feature elements),
    ``nmse`` (``||f_hat - f||^2 / ||f||^2``, Mahendran & Vedaldi) or ``cosine`` (1 - cosine similarity)."""
    a, b = f_hat.float().flatten(1), f.float().flatten(1)
    if kind == "mse":
        return (a - b).pow(2).mean(1)
    if kind == "nmse":
        return (a - b).pow(2).sum(1) / b.pow(2).sum(1).clamp_min(1e-12)
    if kind == "cosine":
        return 1.0 - F.cosine_similarity(a, b, dim=1, eps=1e-12)
    raise SplitinvError(f"unknown attack.feature_loss {kind!r}: choose one of {', '.join(FEATURE_LOSSES)}.")


@dataclass
class OptimizeSettings:
    """Everything the optimisation loop needs: the loss terms, the optimiser and the schedule."""

    steps: int = 500
    lr: float = 1e-2
    feature_loss: str = "mse"
    feature_weight: float = 1.0
    tv_weight: float = 0.0
    tv_beta: float = 1.0
    alpha_weight: float = 0.0
    alpha: float = 6.0
    bn_weight: float = 0.0
    bn_per_image: bool = True
    bn_first_layer_scale: float = 1.0
    jitter: int = 0
    flip: bool = False
    optimizer: str = "adam"
    betas: tuple[float, float] = (0.9, 0.999)
    amsgrad: bool = False
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    lr_schedule: str = "constant"
    lr_step_every: int = 0
    lr_gamma: float = 0.1
    param: str = "clamp"
    check_every: int = 50
    eot_samples: int = 1

    def __post_init__(self) -> None:
        self.steps = int(_number("steps", self.steps, 1))
        self.lr = _number("lr", self.lr, 0.0, strict=True)
        _choice("feature_loss", self.feature_loss, FEATURE_LOSSES)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        _choice("param", self.param, PARAMS)
        for name in ("feature_weight", "tv_weight", "alpha_weight", "bn_weight", "weight_decay", "momentum"):
            setattr(self, name, _number(name, getattr(self, name)))
        self.tv_beta = _number("tv_beta", self.tv_beta, 0.0, strict=True)
        self.alpha = _number("alpha", self.alpha, 0.0, strict=True)
        self.lr_gamma = _number("lr_gamma", self.lr_gamma, 0.0, strict=True)
        self.jitter = int(_number("jitter", self.jitter))
        self.lr_step_every = int(_number("lr_step_every", self.lr_step_every))
        self.check_every = int(_number("check_every", self.check_every, 1))
        self.eot_samples = int(_number("eot_samples", self.eot_samples, 1))
        if self.lr_schedule == "step" and self.lr_step_every < 1:
            raise SplitinvError(
                "attack.lr_schedule=step needs attack.lr_step_every >= 1 (steps between decays)."
            )
        if len(tuple(self.betas)) != 2:
            raise SplitinvError(f"attack.betas must be two numbers, got {self.betas!r}.")
        self.betas = (_number("betas", self.betas[0]), _number("betas", self.betas[1]))
        if (
            self.feature_weight == 0
            and self.tv_weight == 0
            and self.alpha_weight == 0
            and self.bn_weight == 0
        ):
            raise SplitinvError("every loss weight of the attack is 0: set attack.feature_weight > 0.")

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["betas"] = list(self.betas)
        return out


def _make_optimizer(params: list[Tensor], s: OptimizeSettings) -> torch.optim.Optimizer:
    if s.optimizer == "adam":
        return torch.optim.Adam(
            params, lr=s.lr, betas=s.betas, amsgrad=s.amsgrad, weight_decay=s.weight_decay
        )
    if s.optimizer == "adamw":
        return torch.optim.AdamW(
            params, lr=s.lr, betas=s.betas, amsgrad=s.amsgrad, weight_decay=s.weight_decay
        )
    return torch.optim.SGD(
        params, lr=s.lr, momentum=s.momentum, nesterov=s.nesterov, weight_decay=s.weight_decay
    )


def _make_scheduler(opt: torch.optim.Optimizer, s: OptimizeSettings) -> Any:
    if s.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=s.steps)
    if s.lr_schedule == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=s.lr_step_every, gamma=s.lr_gamma)
    return None


def expected_feature_loss(
    model: nn.Module, x: Tensor, target: Tensor, kind: str = "mse", samples: int = 1
) -> Tensor:
    """Per-image ``feature_loss(model(x), target)``; with ``samples`` S > 1, its mean over S draws of a
    stochastic defense inside ``model`` (expectation over transformation), the S replicas in one batch."""
    if samples == 1:
        return feature_loss(model(x), target, kind)
    b = x.shape[0]
    tile = (samples, *([1] * (x.ndim - 1)))
    reps = (samples, *([1] * (target.ndim - 1)))
    return feature_loss(model(x.repeat(tile)), target.repeat(reps), kind).view(samples, b).mean(0)


def optimize(
    head: nn.Module,
    target: Tensor,
    x0: Tensor,
    settings: OptimizeSettings,
    generators: Sequence[torch.Generator] | None = None,
    *,
    progress: bool = False,
    name: str = "optimize",
) -> tuple[Tensor, Tensor]:
    """Optimise the images ``x0`` (B, C, H, W) in [0, 1] so that ``head(x)`` matches ``target``.

    Returns (reconstructions in [0, 1], final per-image loss). ``generators`` (one per image) drive jitter
    and flips. Raises a one-line :class:`SplitinvError` when the loss becomes NaN or inf.
    """
    s = settings
    target = target.detach().float()
    if x0.shape[0] != target.shape[0]:
        raise SplitinvError(
            f"{x0.shape[0]} start images for {target.shape[0]} feature maps: pass one per image."
        )
    with torch.no_grad():
        start = x0.detach().float().clamp(0, 1)
        if s.param == "sigmoid":
            z = torch.logit(start.clamp(1e-3, 1 - 1e-3))
        else:
            z = start.clone()
    z.requires_grad_(True)
    opt = _make_optimizer([z], s)
    sched = _make_scheduler(opt, s)
    prior = BNStatsPrior(head, per_image=s.bn_per_image, first_layer_scale=s.bn_first_layer_scale)
    if s.bn_weight > 0 and prior.n_layers == 0:
        raise SplitinvError(
            "attack.bn_weight > 0 but the head has no BatchNorm2d layer before the cut: "
            "set attack.bn_weight=0."
        )
    augment = s.jitter > 0 or s.flip
    per_image = torch.zeros(target.shape[0], device=target.device)
    finite = torch.ones((), dtype=torch.bool, device=target.device)
    params = list(head.parameters())
    was_requiring = [p.requires_grad for p in params]
    for p in params:  # gradients flow to the image only
        p.requires_grad_(False)
    try:
        with torch.enable_grad(), prior if s.bn_weight > 0 else contextlib.nullcontext():
            bar = tqdm(range(s.steps), desc=name, leave=False, disable=not progress)
            for step in bar:
                x = torch.sigmoid(z) if s.param == "sigmoid" else z
                x_in = x
                if augment:
                    x_in = random_jitter(x_in, s.jitter, generators) if s.jitter > 0 else x_in
                    x_in = random_flip(x_in, 0.5, generators) if s.flip else x_in
                loss = s.feature_weight * expected_feature_loss(
                    head, x_in, target, s.feature_loss, s.eot_samples
                )
                if s.tv_weight > 0:
                    loss = loss + s.tv_weight * total_variation(x, s.tv_beta)
                if s.alpha_weight > 0:
                    loss = loss + s.alpha_weight * alpha_norm(x - 0.5, s.alpha)
                total = loss.sum()
                if s.bn_weight > 0:
                    bn = prior.loss()
                    if bn.ndim and bn.numel() != loss.numel():  # EOT replicas: one value per image
                        bn = bn.view(-1, loss.numel()).mean(0)
                    if bn.ndim:
                        loss = loss + s.bn_weight * bn
                        total = loss.sum()
                    else:
                        total = total + s.bn_weight * bn
                opt.zero_grad(set_to_none=True)
                total.backward()
                opt.step()
                if sched is not None:
                    sched.step()
                if s.param == "clamp":
                    with torch.no_grad():
                        z.clamp_(0, 1)
                finite = finite & torch.isfinite(total.detach())
                if (step + 1) % s.check_every == 0 or step + 1 == s.steps:
                    if not bool(finite):
                        raise SplitinvError(
                            f"{name} loss became nan/inf by step {step + 1}: lower attack.lr (now {s.lr}) "
                            "or check the head's activations for inf/NaN."
                        )
                    if progress:
                        bar.set_postfix(loss=float(total) / target.shape[0])
                per_image = loss.detach()
    finally:
        for p, r in zip(params, was_requiring, strict=True):
            p.requires_grad_(r)
    with torch.no_grad():
        x = torch.sigmoid(z) if s.param == "sigmoid" else z
        return x.detach().clamp(0, 1), per_image.float()


class OptimizationAttack(Attack):
    """White-box per-image inversion by optimisation (rMLE, Mahendran & Vedaldi, + BN prior), see module doc.

    ``lr`` / ``steps`` override the schedule; otherwise ``schedule`` picks the ``shallow`` or ``deep`` pair
    (``auto``: by the cut's relative depth from ``context.cut``, shallow below ``depth_threshold``).
    """

    name = "optimize"
    per_image = True

    def __init__(
        self,
        name: str = "optimize",
        seed: int = 0,
        access: str = "white-box",
        aux_data: str = "none",
        init: str = "constant",
        init_value: float = 0.5,
        init_std: float = 0.1,
        schedule: str = "auto",
        depth_threshold: float = DEPTH_THRESHOLD,
        shallow: Mapping[str, Any] | None = None,
        deep: Mapping[str, Any] | None = None,
        lr: float | None = None,
        steps: int | None = None,
        progress: bool = True,
        defense_aware: bool = True,
        **settings: Any,
    ) -> None:
        self.name = str(name)
        self.seed = int(seed)
        if access != "white-box":
            raise SplitinvError(
                f"attack.access={access!r}: optimisation attacks need the head's weights (white-box)."
            )
        self.knowledge = AttackerKnowledge(
            access=access, aux_data=_choice("aux_data", aux_data, AUX_DATA), defense_aware=defense_aware
        )
        self.init = _choice("init", init, INITS)
        self.init_value = _number("init_value", init_value)
        self.init_std = _number("init_std", init_std)
        if not 0.0 <= self.init_value <= 1.0:
            raise SplitinvError(f"attack.init_value must lie in [0, 1], got {init_value!r}.")
        self.schedule = _choice("schedule", schedule, SCHEDULES)
        self.depth_threshold = _number("depth_threshold", depth_threshold)
        self.schedules = {
            "shallow": {**PAPER_SCHEDULES["shallow"], **dict(shallow or {})},
            "deep": {**PAPER_SCHEDULES["deep"], **dict(deep or {})},
        }
        for kind, pair in self.schedules.items():
            if set(pair) != {"lr", "steps"}:
                raise SplitinvError(f"attack.{kind} takes lr and steps only, got {sorted(pair)}.")
        self.lr, self.steps = lr, steps
        self.progress = bool(progress)
        known = set(OptimizeSettings.__dataclass_fields__) - {"steps", "lr"}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise SplitinvError(
                f"unknown setting attack.{unknown[0]} for {self.name}: valid settings are "
                f"{', '.join(sorted(known | {'lr', 'steps', 'schedule', 'init', 'seed'}))}."
            )
        settings = {k: (tuple(v) if k == "betas" else v) for k, v in settings.items()}
        # validate now (one-line errors at instantiation), with the shallow pair as placeholder schedule
        self.settings = OptimizeSettings(
            steps=steps or self.schedules["shallow"]["steps"],
            lr=lr or self.schedules["shallow"]["lr"],
            **settings,
        )
        self.eot_samples = self.settings.eot_samples  # used only against a stochastic defense (see fit)
        self._resolved: str | None = None
        self.cut_info: dict[str, Any] = {}
        self.client: nn.Module | None = None  # what observe() runs: the head, then the defense
        self.calls = 0  # optimisation batches run (tests count re-attacks)
        self.images_attacked = 0

    # ------------------------------------------------------------------ schedule
    @property
    def relative_depth(self) -> float | None:
        info = self.cut_info or {}
        depth = info.get("relative_depth")
        return None if depth is None else float(depth)

    def resolve_schedule(self) -> str:
        """Fix lr and steps: explicit values win; else the shallow or deep pair (``auto``: by cut depth)."""
        kind = self.schedule
        if kind == "auto":
            if self.lr is not None and self.steps is not None:
                kind = "explicit"
            elif self.relative_depth is None:
                raise SplitinvError(
                    "attack.schedule=auto needs the cut's relative depth (splitinv-run provides it): "
                    "set attack.schedule=shallow or attack.schedule=deep."
                )
            else:
                kind = "shallow" if self.relative_depth < self.depth_threshold else "deep"
        pair = self.schedules.get(kind, {})
        self.settings.lr = _number("lr", self.lr if self.lr is not None else pair["lr"], 0.0, strict=True)
        self.settings.steps = int(
            _number("steps", self.steps if self.steps is not None else pair["steps"], 1)
        )
        self._resolved = kind
        return kind

    @property
    def steps_per_image(self) -> int:
        """Optimisation steps each image gets (recorded in the run's cost)."""
        return self.settings.steps

    # ------------------------------------------------------------------ interface
    def fit(self, context: AttackContext) -> dict[str, Any]:
        """Keep the device side (white-box: the attacker knows the head's weights, and the defense when
        ``defense_aware``) and fix the schedule from the cut's depth."""
        the_split = context.require_split(self.name)
        self.client = the_split.client
        # EOT only where there is randomness to average: a stochastic defense the attacker models (a naive
        # attacker's split has no defense)
        self.settings.eot_samples = self.eot_samples if the_split.defense.stochastic else 1
        self.image_shape = tuple(context.image_shape)
        self.cut_info = dict(context.cut)
        self.resolve_schedule()
        return {}

    def _initial(
        self, features: Tensor, index: Tensor, shape: tuple[int, ...], device: torch.device
    ) -> Tensor:
        """The start images: constant ``init_value``, or that plus seeded Gaussian noise (``init: noise``)."""
        x0 = torch.full(shape, self.init_value, device=device)
        if self.init == "noise":
            noise = torch.stack(
                [torch.randn(shape[1:], generator=image_generator(self.seed, int(i))) for i in index]
            )
            x0 = (x0 + self.init_std * noise.to(device)).clamp(0, 1)
        return x0

    def invert(self, features: Tensor, index: Tensor | Sequence[int] | None = None) -> Reconstruction:
        """Optimise one start image per observation; ``index`` (evaluation indices) seeds each image."""
        if self.client is None:
            raise SplitinvError(f"the {self.name} attack has no split: call fit(context) before invert().")
        if self._resolved is None:
            self.resolve_schedule()
        head = self.client
        device = next(iter(head.parameters()), torch.empty(0)).device
        features = features.to(device)
        b = features.shape[0]
        idx = torch.arange(b) if index is None else torch.as_tensor(index).flatten().cpu()
        if idx.numel() != b:
            raise SplitinvError(f"{idx.numel()} indices for {b} feature maps: pass one index per image.")
        shape = (b, *self._image_shape())
        x0 = self._initial(features, idx, shape, device)
        needs_gens = self.settings.jitter > 0 or self.settings.flip
        gens = [image_generator(self.seed + 1, int(i)) for i in idx] if needs_gens else None
        was_training = head.training
        head.eval()
        try:
            x_hat, losses = optimize(
                head, features, x0, self.settings, gens, progress=self.progress, name=self.name
            )
        finally:
            head.train(was_training)
        self.calls += 1
        self.images_attacked += b
        return Reconstruction(x_hat, losses.cpu())

    def _image_shape(self) -> tuple[int, int, int]:
        shape = getattr(self, "image_shape", None)
        if shape is None:
            raise SplitinvError(
                f"the {self.name} attack does not know the image shape: call fit(context) first."
            )
        return tuple(shape)  # type: ignore[return-value]

    def describe(self) -> dict[str, Any]:
        info = {
            **super().describe(),
            "seed": self.seed,
            "init": self.init,
            "init_value": self.init_value,
            "schedule": self.schedule,
            "schedule_used": self._resolved,
            "depth_threshold": self.depth_threshold,
            "relative_depth": self.relative_depth,
            **self.settings.as_dict(),
        }
        if self.init == "noise":
            info["init_std"] = self.init_std
        return json.loads(json.dumps(info, default=str))
