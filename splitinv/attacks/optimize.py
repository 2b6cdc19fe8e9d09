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
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from splitinv.attacks.base import (
    AUX_DATA,
    Attack,
    AttackContext,
    AttackerKnowledge,
    Reconstruction,
    check_choice,
    check_number,
)
from splitinv.attacks.priors import BNStatsPrior, alpha_norm, random_flip, random_jitter, total_variation
from splitinv.errors import SplitinvError
from splitinv.optim import image_generator
from splitinv.progress import track

log = logging.getLogger(__name__)

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
PARAMS = ("clamp", "sigmoid", "normalized")
INITS = ("constant", "noise", "mean")
PRIOR_REDUCTIONS = ("sum", "mean")
# ``schedule: auto`` calls a cut shallow below this relative depth (cut index / (number of cut points - 1)).
# He et al.'s shallow cuts sit at 1/6 (CIFAR conv11) and 1/5 (LeNet conv1) of their networks, their deep
# ones at 2/5 (LeNet ReLU2) and beyond (CIFAR ReLU22 at 4/6): 0.4 separates them. On ResNet-18, layer1
# (0.36) is shallow and layer2.0 (0.43) deep.
DEPTH_THRESHOLD = 0.4
PAPER_SCHEDULES = {"shallow": {"lr": 1e-2, "steps": 500}, "deep": {"lr": 1e-3, "steps": 5000}}

# ``attack.preset=he2019``: the public code's settings (zechenghe/Inverse_Collaborative_Inference,
# inverse_whitebox_*.py), which differ from the paper's text: the normalised image is optimised from 0 (the
# mean image), unconstrained, and clipped to [0, 1] at the end; TV is the mean squared neighbour difference
# and the L2 term the mean square, both of the normalised image; Adam lr 1e-2 (normalised units), eps 1e-3,
# AMSGrad; 500 iterations at the paper's shallow cuts, 5000 at its deep ones. Weights per (victim, cut): TV 1
# (the code's default) and no L2 term (the paper's objective has none; the code's MNIST script defaults to
# lambda_l2 = 1, which costs about 7 dB at LeNet conv1), and its README commands for CIFAR (L2 0; TV 0 / 10 /
# 1000 at conv11 / ReLU22 / ReLU32). The L2 term is alpha_weight with alpha 2 and prior_reduction mean.
HE2019_SETTINGS: dict[str, Any] = {
    "param": "normalized", "optimizer": "adam", "eps": 1e-3, "amsgrad": True, "betas": (0.9, 0.999),
    "weight_decay": 0.0, "lr_schedule": "constant", "feature_loss": "mse", "feature_weight": 1.0,
    "tv_beta": 2.0, "alpha": 2.0, "prior_reduction": "mean", "bn_weight": 0.0, "jitter": 0, "flip": False,
    "tv_weight": 1.0, "alpha_weight": 0.0,
}  # fmt: skip
HE2019_WEIGHTS: dict[tuple[str, str], dict[str, float]] = {
    ("he2019_cifar", "conv11"): {"tv_weight": 0.0, "alpha_weight": 0.0},
    ("he2019_cifar", "ReLU22"): {"tv_weight": 10.0, "alpha_weight": 0.0},
    ("he2019_cifar", "ReLU32"): {"tv_weight": 1000.0, "alpha_weight": 0.0},
}
HE2019_SCHEDULES = {"shallow": {"lr": 1e-2, "steps": 500}, "deep": {"lr": 1e-2, "steps": 5000}}
PRESETS = ("he2019",)


# one validation for every attack's settings (splitinv.attacks.base)
_choice, _number = check_choice, check_number


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
    eps: float = 1e-8
    amsgrad: bool = False
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    lr_schedule: str = "constant"
    lr_step_every: int = 0
    lr_gamma: float = 0.1
    param: str = "clamp"
    prior_reduction: str = "sum"
    check_every: int = 50
    eot_samples: int = 1

    def __post_init__(self) -> None:
        self.steps = int(_number("steps", self.steps, 1))
        self.lr = _number("lr", self.lr, 0.0, strict=True)
        _choice("feature_loss", self.feature_loss, FEATURE_LOSSES)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        _choice("param", self.param, PARAMS)
        _choice("prior_reduction", self.prior_reduction, PRIOR_REDUCTIONS)
        self.eps = _number("eps", self.eps, 0.0, strict=True)
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
            params, lr=s.lr, betas=s.betas, eps=s.eps, amsgrad=s.amsgrad, weight_decay=s.weight_decay
        )
    if s.optimizer == "adamw":
        return torch.optim.AdamW(
            params, lr=s.lr, betas=s.betas, eps=s.eps, amsgrad=s.amsgrad, weight_decay=s.weight_decay
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


def _check_gradient(grad: Tensor | None, loss: Tensor, name: str) -> None:
    """A one-line error when an image with a non-zero loss has an exactly zero gradient at the start: Adam
    would never move it (e.g. a random-weight BatchNorm network whose normalised input is all zero, the mean
    image He et al.'s code starts from: every ReLU before the cut sees 0, where its gradient is 0)."""
    if grad is None:
        return
    positive = loss.reshape(-1) > 0 if loss.numel() == grad.shape[0] else loss.sum() > 0
    dead = (grad.flatten(1).abs().amax(1) == 0) & positive
    if bool(dead.any()):
        raise SplitinvError(
            f"{name}: the gradient is exactly zero at the start image for {int(dead.sum())} of "
            f"{dead.numel()} images (no ReLU before the cut passes it there, e.g. a random-weight BatchNorm "
            "network started from its mean image, as attack.preset=he2019 does), so the image would never "
            "change: start from noise with attack.init=noise, or use a trained victim."
        )


def optimize(
    head: nn.Module,
    target: Tensor,
    x0: Tensor,
    settings: OptimizeSettings,
    generators: Sequence[torch.Generator] | None = None,
    *,
    progress: bool = False,
    name: str = "optimize",
    normalization: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """Optimise the images ``x0`` (B, C, H, W) in [0, 1] so that ``head(x)`` matches ``target``.

    Returns (reconstructions in [0, 1], final per-image loss). ``generators`` (one per image) drive jitter
    and flips. ``normalization`` (mean, std), each (1, C, 1, 1): the victim's, needed by
    ``param: normalized``, which optimises ``z = (x - mean) / std`` unconstrained (the priors act on z) and
    clips ``x`` to [0, 1] only at the end. Raises a one-line :class:`SplitinvError` when the loss becomes NaN
    or inf.
    """
    s = settings
    if s.param == "normalized" and normalization is None:
        raise SplitinvError(
            "attack.param=normalized needs the victim's normalisation (mean, std): use a splitinv Victim "
            "or attack.param=clamp."
        )
    mean, std = (t.to(x0.device).float() for t in normalization) if normalization is not None else (0.0, 1.0)
    target = target.detach().float()
    if x0.shape[0] != target.shape[0]:
        raise SplitinvError(
            f"{x0.shape[0]} start images for {target.shape[0]} feature maps: pass one per image."
        )
    with torch.no_grad():
        start = x0.detach().float().clamp(0, 1)
        if s.param == "sigmoid":
            z = torch.logit(start.clamp(1e-3, 1 - 1e-3))
        elif s.param == "normalized":
            z = (start - mean) / std
        else:
            z = start.clone()

    def image(z: Tensor) -> Tensor:
        if s.param == "sigmoid":
            return torch.sigmoid(z)
        return mean + std * z if s.param == "normalized" else z

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
            bar = track(range(s.steps), desc=name, enabled=progress)
            for step in bar:
                x = image(z)
                x_in = x
                if augment:
                    x_in = random_jitter(x_in, s.jitter, generators) if s.jitter > 0 else x_in
                    x_in = random_flip(x_in, 0.5, generators) if s.flip else x_in
                loss = s.feature_weight * expected_feature_loss(
                    head, x_in, target, s.feature_loss, s.eot_samples
                )
                # the priors: of the normalised image where it is optimised (He et al.'s code), else of x
                prior_x, centred = (z, z) if s.param == "normalized" else (x, x - 0.5)
                if s.tv_weight > 0:
                    tv = total_variation(prior_x, s.tv_beta, reduction=s.prior_reduction)
                    loss = loss + s.tv_weight * tv
                if s.alpha_weight > 0:
                    loss = loss + s.alpha_weight * alpha_norm(centred, s.alpha, reduction=s.prior_reduction)
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
                if step == 0:
                    _check_gradient(z.grad, loss.detach(), name)
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
                    if progress:  # at the check steps only: one more host read there
                        bar.set_postfix(loss=float(total.detach()) / target.shape[0])
                per_image = loss.detach()
    finally:
        for p, r in zip(params, was_requiring, strict=True):
            p.requires_grad_(r)
    with torch.no_grad():
        return image(z).detach().clamp(0, 1), per_image.float()


class OptimizationAttack(Attack):
    """White-box per-image inversion by optimisation (rMLE, Mahendran & Vedaldi, + BN prior), see module doc.

    ``lr`` / ``steps`` override the schedule; otherwise ``schedule`` picks the ``shallow`` or ``deep`` pair
    (``auto``: by the cut's relative depth from ``context.cut``, shallow below ``depth_threshold``).
    """

    name = "optimize"
    per_image = True
    budget = ("attack.steps", "attack.lr")

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
        preset: str | None = None,
        **settings: Any,
    ) -> None:
        self.name = str(name)
        self.preset = None if preset in (None, "none", "null") else _choice("preset", preset, PRESETS)
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
                f"{', '.join(sorted(known | {'lr', 'steps', 'schedule', 'init', 'seed', 'preset'}))}."
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
        self.schedule_reason: str | None = None
        self.normalization: tuple[Tensor, Tensor] | None = None  # the victim's (mean, std), from fit
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
        self.schedule_reason = "set"
        if kind == "auto":
            paper = (self.cut_info or {}).get("paper_depth")
            if self.lr is not None and self.steps is not None:
                kind, self.schedule_reason = "explicit", "lr and steps set"
            elif paper in ("shallow", "deep"):  # the victim's paper names this cut (splitinv.nets)
                kind, self.schedule_reason = paper, "the paper's name for this cut"
            elif self.relative_depth is None:
                raise SplitinvError(
                    "attack.schedule=auto needs the cut's relative depth (splitinv-run provides it): "
                    "set attack.schedule=shallow or attack.schedule=deep."
                )
            else:
                kind = "shallow" if self.relative_depth < self.depth_threshold else "deep"
                self.schedule_reason = f"relative depth {self.relative_depth:.2f} vs {self.depth_threshold}"
        pair = self.schedules.get(kind, {})
        if (self.lr is None) != (self.steps is None) and kind in self.schedules:  # one of the two overridden
            kept = f"lr {pair['lr']:g}" if self.lr is None else f"{pair['steps']} steps"
            given = f"steps={self.steps}" if self.lr is None else f"lr={self.lr:g}"
            log.warning(
                "%s: attack.%s overrides the %s schedule, which still gives %s: set attack.%s to change it",
                self.name, given, kind, kept, "lr" if self.lr is None else "steps",
            )  # fmt: skip
            self.schedule_reason = f"{self.schedule_reason}; {given} with the {kind} schedule's {kept}"
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
        norm = getattr(context.victim, "normalize", None)
        if norm is not None and hasattr(norm, "mean"):
            self.normalization = (norm.mean.detach().cpu(), norm.std.detach().cpu())
        if self.preset is not None:
            self._apply_preset(context)
        self.resolve_schedule()
        return {}

    def _apply_preset(self, context: AttackContext) -> None:
        """Replace the loss, optimiser and schedule settings with the preset's for this victim and cut
        (``attack.lr`` / ``attack.steps`` still win: they override any schedule)."""
        victim = str(getattr(context.victim, "name", ""))
        cut = str(self.cut_info.get("canonical") or self.cut_info.get("name") or "")
        values = {**HE2019_SETTINGS, **HE2019_WEIGHTS.get((victim, cut), {})}
        current = self.settings.as_dict()
        current.update(values, betas=tuple(values["betas"]), steps=self.settings.steps, lr=self.settings.lr)
        self.settings = OptimizeSettings(**current)
        self.schedules = {k: dict(v) for k, v in HE2019_SCHEDULES.items()}
        if self.init != "noise":  # attack.init=noise: a start with a gradient where the mean image has none
            self.init = "mean"

    def _initial(
        self, features: Tensor, index: Tensor, shape: tuple[int, ...], device: torch.device
    ) -> Tensor:
        """The start images: constant ``init_value``, or that plus seeded Gaussian noise (``init: noise``)."""
        if self.init == "mean":  # the victim's mean image: 0 in its normalised units (He et al.'s code)
            if self.normalization is None:
                raise SplitinvError("attack.init=mean needs a splitinv Victim (its normalisation mean).")
            return self.normalization[0].to(device).float().expand(shape).clone()
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
                head, features, x0, self.settings, gens, progress=self.progress, name=self.name,
                normalization=self.normalization,
            )  # fmt: skip
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
            "preset": self.preset,
            "schedule": self.schedule,
            "schedule_used": self._resolved,
            "schedule_reason": self.schedule_reason,
            "depth_threshold": self.depth_threshold,
            "relative_depth": self.relative_depth,
            **self.settings.as_dict(),
        }
        if self.init == "noise":
            info["init_std"] = self.init_std
        return json.loads(json.dumps(info, default=str))
