"""Fisher-information leakage bounds for a split whose defense adds noise (dFIL).

For a device that sends ``e(x) = head(x) + n`` with i.i.d. noise of scale ``s`` per element, the Fisher
information about the [0, 1] image ``x`` (the victim's normalisation is inside ``head``, so inside the
Jacobian ``J``) is ``I(x) = J^T J / s^2`` times the noise's location information per unit scale:
Gaussian ``N(0, sigma^2)``: ``1 / sigma^2``; Laplace ``(0, b)``: ``1 / b^2`` (Maeng, Guo, Kariyappa, Suh,
NeurIPS 2023). ``dFIL(x) = Tr(I(x)) / d`` for ``d`` input dimensions, and by Cramer-Rao every unbiased
attacker's per-pixel MSE is at least ``1 / dFIL(x)``: its PSNR (data range 1) is at most
``10 log10(dFIL(x))``.

With ``relative: true`` the noise scale ``s(x) = scale * std(head(x))`` itself depends on the image, and the
observation also carries information through its spread: for ``m`` output elements that adds
``c * m * ||grad s||^2 / s^2`` to ``Tr I`` (``c = 2`` Gaussian, ``1`` Laplace: the Fisher information of a
scale parameter), computed here exactly by one backward pass. ``Tr(J^T J) = E ||J v||^2`` over Rademacher
probes ``v`` (Hutchinson) through Jacobian-vector products, so ``J`` is never formed; ``probes=0`` uses the
``d`` basis vectors instead (the exact trace, for small inputs).

The biased (prior) bound is the van Trees inequality, in the trace form the paper uses: for images drawn
from a prior ``pi`` with Fisher information ``J(pi) = E[grad log pi grad log pi^T]``, every attacker, biased
or not, has ``E ||x_hat - x||^2 / d >= 1 / (E_pi[dFIL(x)] + Tr J(pi) / d)``. splitinv does not estimate
``Tr J(pi)`` (the paper fits a score model to the data): :func:`van_trees_mse` takes it as a number, and a
results file records the prior bound as null with that reason.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from splitinv.errors import SplitinvError

#: the noise models whose Fisher information is analysable: defense name -> (location information per
#: unit scale, scale-parameter information per unit scale)
NOISE_FISHER = {"gaussian": (1.0, 2.0), "laplace": (1.0, 1.0)}
DEFAULT_PROBES = 32


def noise_model(defense: Any) -> tuple[str | None, str | None]:
    """(the defense's noise family, None) when dFIL applies to it, else (None, the reason it does not)."""
    name = getattr(defense, "name", None)
    if defense is None or getattr(defense, "is_identity", False):
        return None, "no noise on the features: the Fisher information is unbounded (no leakage bound)"
    if name in NOISE_FISHER:
        return str(name), None
    return None, f"defense {name!r} adds no analysable noise (dFIL needs gaussian or laplace noise)"


def _jvp(fn: Any, x: Tensor, v: Tensor) -> Tensor:
    """``J v`` at ``x``: forward mode where the head supports it, else the double-backward trick."""
    try:
        return torch.func.jvp(fn, (x,), (v,))[1]
    except (RuntimeError, NotImplementedError, TypeError):
        return torch.autograd.functional.jvp(fn, x, v)[1]


def jacobian_trace(head: nn.Module, x: Tensor, probes: int = DEFAULT_PROBES, seed: int = 0) -> Tensor:
    """Per-image ``Tr(J^T J)`` of ``head`` at images ``x`` (B, ...), shape (B,), float64.

    ``probes`` Rademacher probes per image (Hutchinson, unbiased), drawn from ``seed``; ``probes=0``: the
    exact trace from the ``d`` basis vectors (``d`` Jacobian-vector products per image, batched).
    The head runs in eval mode (its BatchNorm statistics fixed, so each image's Jacobian is its own).
    """
    if probes < 0:
        raise SplitinvError(f"leakage.probes must be >= 0 (0: exact), got {probes}.")
    was_training = head.training
    head.eval()
    x = x.detach().float()
    b, d = x.shape[0], x[0].numel()
    total = torch.zeros(b, dtype=torch.float64, device=x.device)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    try:
        with torch.enable_grad():
            if probes == 0:
                eye = torch.eye(d, device=x.device)
                for i in range(d):
                    v = eye[i].reshape(1, *x.shape[1:]).expand_as(x).contiguous()
                    jv = _jvp(head, x, v)
                    total += jv.detach().double().reshape(b, -1).pow(2).sum(1)
                return total
            for _ in range(probes):
                v = (torch.randint(0, 2, x.shape, generator=gen) * 2 - 1).to(x.device, x.dtype)
                jv = _jvp(head, x, v)
                total += jv.detach().double().reshape(b, -1).pow(2).sum(1)
            return total / probes
    finally:
        head.train(was_training)


def _scale_term(head: nn.Module, x: Tensor, scale: float) -> tuple[Tensor, Tensor, int]:
    """For relative noise: per image (s(x), ||grad s(x)||^2, m) with ``s = scale * std(head(x))``."""
    was_training = head.training
    head.eval()
    try:
        with torch.enable_grad():
            xg = x.detach().float().requires_grad_(True)
            h = head(xg).reshape(x.shape[0], -1).float()
            s = scale * h.std(dim=1, correction=0)
            (grad,) = torch.autograd.grad(s.sum(), xg)
    finally:
        head.train(was_training)
    return s.detach().double(), grad.detach().double().reshape(x.shape[0], -1).pow(2).sum(1), h.shape[1]


def dfil(head: nn.Module, defense: Any, x: Tensor, probes: int = DEFAULT_PROBES, seed: int = 0) -> Tensor:
    """Per-image dFIL (B,) of ``defense(head(x))`` about the [0, 1] images ``x``; a one-line error for a
    defense without an analysable noise model (see :func:`noise_model`)."""
    family, reason = noise_model(defense)
    if family is None:
        raise SplitinvError(f"no dFIL: {reason}.")
    loc, scale_info = NOISE_FISHER[family]
    d = x[0].numel()
    trace = jacobian_trace(head, x, probes, seed)
    if not defense.relative:
        s2 = float(defense.scale) ** 2
        return trace * loc / s2 / d if s2 > 0 else torch.full_like(trace, math.inf)
    s, grad_s2, m = _scale_term(head, x, float(defense.scale))
    s2 = s.pow(2)
    info = (trace * loc + scale_info * m * grad_s2) / s2
    return torch.where(s2 > 0, info / d, torch.full_like(info, math.inf))


def mse_floor(dfil_value: float) -> float:
    """The unbiased attacker's per-pixel MSE floor, ``1 / dFIL`` (Cramer-Rao)."""
    return math.inf if dfil_value <= 0 else 1.0 / dfil_value


def psnr_ceiling(dfil_value: float) -> float:
    """The PSNR (data range 1) that the MSE floor allows: ``10 log10(dFIL)`` dB."""
    return math.inf if math.isinf(dfil_value) else 10.0 * math.log10(max(dfil_value, 1e-300))


def van_trees_mse(dfil_mean: float, prior_fisher_trace: float, d: int) -> float:
    """Every attacker's (biased too) expected per-pixel MSE floor ``1 / (E[dFIL] + Tr J(pi) / d)`` for
    images from a prior ``pi`` whose Fisher information has trace ``prior_fisher_trace``."""
    if prior_fisher_trace < 0 or d < 1:
        raise SplitinvError("van_trees_mse needs Tr J(pi) >= 0 and d >= 1.")
    return 1.0 / (dfil_mean + prior_fisher_trace / d)


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def leakage_bound(
    head: nn.Module,
    defense: Any,
    batches: Iterable[Any],
    device: torch.device | str = "cpu",
    probes: int = DEFAULT_PROBES,
    seed: int = 0,
) -> dict[str, Any]:
    """The ``leakage_bound`` record of a results file over ``batches`` of images (one batch in memory):
    dFIL's mean and minimum over the images, the unbiased MSE floors and PSNR ceilings they imply, or
    null values with the reason when the defense has no analysable noise model."""
    family, reason = noise_model(defense)
    if family is None:
        return {"dfil_mean": None, "dfil_min": None, "reason": reason}
    values = []
    for batch in batches:
        x = (batch[0] if isinstance(batch, (list, tuple)) else batch).to(device)
        values.append(dfil(head, defense, x, probes, seed).cpu())
    if not values:
        raise SplitinvError("leakage_bound needs at least one image: the data is empty.")
    per_image = torch.cat(values)
    mean, low = float(per_image.mean()), float(per_image.min())
    return {
        "dfil_mean": _finite(mean),
        "dfil_min": _finite(low),
        # the floor on the images' mean per-pixel MSE (mean of 1/dFIL, by Jensen above 1/mean dFIL)
        "mse_floor_mean": _finite(float((1.0 / per_image).mean())),
        "mse_floor_min": _finite(1.0 / float(per_image.max())),
        "psnr_ceiling_mean": _finite(float(10 * torch.log10(per_image).mean())),
        "psnr_ceiling_max": _finite(psnr_ceiling(float(per_image.max()))),
        "noise": family,
        "relative": bool(defense.relative),
        "probes": int(probes),
        "method": "exact" if probes == 0 else "hutchinson",
        "n": int(per_image.numel()),
        "prior_bound": None,
        "prior_reason": "van Trees needs Tr J(pi) of the image prior, which splitinv does not estimate",
    }


def calibrate_sigma(
    head: nn.Module,
    images: Iterable[Any],
    target: float,
    device: Any = "cpu",
    probes: int = 32,
    seed: int = 0,
) -> float:
    """The Gaussian sigma at which the mean dFIL over ``images`` is ``target``: dFIL = Tr(J^T J) /
    (d sigma^2) for a fixed Jacobian, so one trace estimate per image gives
    ``sigma = sqrt(mean(Tr) / (d target))``."""
    if not (isinstance(target, (int, float)) and math.isfinite(target) and target > 0):
        raise SplitinvError(f"defense.target_dfil must be a finite number > 0, got {target!r}.")
    traces, d = [], 1
    for batch in images:
        x = (batch[0] if isinstance(batch, (list, tuple)) else batch).to(device)
        d = x[0].numel()
        traces.append(jacobian_trace(head, x, probes, seed).cpu())
    if not traces:
        raise SplitinvError(
            "defense.target_dfil needs auxiliary images to calibrate on: the aux set is empty."
        )
    mean_trace = float(torch.cat(traces).mean())
    if mean_trace <= 0:
        raise SplitinvError(
            "defense.target_dfil: the head's Jacobian is zero on the auxiliary images, so no sigma gives "
            "that leakage: cut elsewhere, or set defense.scale."
        )
    return math.sqrt(mean_trace / (d * float(target)))
