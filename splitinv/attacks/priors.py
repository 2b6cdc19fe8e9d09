"""Image priors for optimisation-based inversion, shared by the per-image attacks and DCI.

- :func:`total_variation`: TV^beta (Mahendran & Vedaldi 2015; beta = 1 is the isotropic TV of He et al. 2019).
- :func:`alpha_norm`: the alpha-norm prior of Mahendran & Vedaldi (alpha = 6).
- :class:`BNStatsPrior`: DeepInversion's feature-distribution regulariser (Yin et al. 2020): the distance
  between the statistics of the inputs of every BatchNorm layer and that layer's running statistics.
- :func:`random_jitter`, :func:`random_flip`: DeepInversion's augmentations, one draw per batch or per image.

Every per-image function returns one value per image (a 1-D tensor of length B), so a loss summed over images
gives each image the same gradient whatever batch it is in.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from splitinv.errors import SplitinvError

__all__ = ["BNStatsPrior", "alpha_norm", "random_flip", "random_jitter", "total_variation"]

Generators = torch.Generator | Sequence[torch.Generator] | None


def _check_images(x: Tensor, name: str) -> None:
    if not isinstance(x, Tensor) or x.ndim != 4:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise SplitinvError(f"{name} expects images of shape (B, C, H, W), got {shape}.")


def _power(sq: Tensor, beta: float, eps: float) -> Tensor:
    """``sq^(beta/2)``, with ``eps`` added for beta < 2 so the gradient stays finite where ``sq`` is 0."""
    if beta == 2.0:
        return sq
    floor = torch.tensor(eps, dtype=sq.dtype, device=sq.device).pow(beta / 2)  # same rounding as below
    return (sq + eps).pow(beta / 2) - floor  # exactly 0 where sq is 0


def total_variation(x: Tensor, beta: float = 1.0, eps: float = 1e-8, reduction: str = "sum") -> Tensor:
    """Per-image TV^beta, shape (B,).

    ``reduction="sum"``: ``sum_{c,i,j} ((x[i+1,j]-x[i,j])^2 + (x[i,j+1]-x[i,j])^2 + eps)^(beta/2)``,
    Mahendran & Vedaldi's TV^beta (their public ports use beta = 2); beta = 1 is isotropic TV.
    ``reduction="mean"``: ``mean |x[i+1,j]-x[i,j]|^beta + mean |x[i,j+1]-x[i,j]|^beta``, each mean over its
    own differences: with beta = 2, the TV of He et al.'s public code. ``eps`` (added only for beta < 2) keeps
    the gradient finite on flat images such as rMLE's constant start.
    """
    _check_images(x, "total_variation")
    if beta <= 0:
        raise SplitinvError(f"total_variation needs beta > 0, got {beta}.")
    if reduction == "mean":
        dh = x[:, :, 1:, :] - x[:, :, :-1, :]
        dw = x[:, :, :, 1:] - x[:, :, :, :-1]
        return _power(dh.pow(2), beta, eps).flatten(1).mean(1) + _power(dw.pow(2), beta, eps).flatten(1).mean(
            1
        )
    if reduction != "sum":
        raise SplitinvError(f"total_variation reduction must be sum or mean, got {reduction!r}.")
    dh = x[:, :, 1:, :-1] - x[:, :, :-1, :-1]
    dw = x[:, :, :-1, 1:] - x[:, :, :-1, :-1]
    return _power(dh.pow(2) + dw.pow(2), beta, eps).flatten(1).sum(1)


def alpha_norm(x: Tensor, alpha: float = 6.0, reduction: str = "sum") -> Tensor:
    """Per-image alpha-norm prior ``sum |x|^alpha`` (Mahendran & Vedaldi, alpha = 6), or its mean over the
    pixels (``reduction="mean"``; alpha = 2: the L2 term of He et al.'s code); shape (B,).

    Apply it to a centred image (the optimisation attacks pass ``x - 0.5``) so it bounds the pixel range.
    """
    _check_images(x, "alpha_norm")
    if alpha <= 0:
        raise SplitinvError(f"alpha_norm needs alpha > 0, got {alpha}.")
    if reduction not in ("sum", "mean"):
        raise SplitinvError(f"alpha_norm reduction must be sum or mean, got {reduction!r}.")
    values = x.abs().pow(alpha).flatten(1)
    return values.mean(1) if reduction == "mean" else values.sum(1)


def _generators(generator: Generators, batch: int) -> list[torch.Generator | None] | None:
    """One generator per image (a sequence of length B), or None for one draw for the whole batch."""
    if generator is None or isinstance(generator, torch.Generator):
        return None
    gens = list(generator)
    if len(gens) != batch:
        raise SplitinvError(f"got {len(gens)} generators for a batch of {batch} images: pass one per image.")
    return gens


def random_jitter(x: Tensor, max_shift: int, generator: Generators = None) -> Tensor:
    """Roll images by a random (dy, dx) in [-max_shift, max_shift] (DeepInversion's jitter; 30 px at 224 px).

    ``generator``: one ``torch.Generator`` (or None) draws one shift for the whole batch, as DeepInversion
    does; a sequence of B generators draws one shift per image (results then do not depend on batching).
    """
    _check_images(x, "random_jitter")
    if max_shift < 0:
        raise SplitinvError(f"random_jitter needs max_shift >= 0, got {max_shift}.")
    if max_shift == 0:
        return x
    gens = _generators(generator, x.shape[0])
    if gens is None:
        dy, dx = torch.randint(-max_shift, max_shift + 1, (2,), generator=generator).tolist()
        return torch.roll(x, shifts=(dy, dx), dims=(2, 3))
    out = []
    for i, g in enumerate(gens):
        dy, dx = torch.randint(-max_shift, max_shift + 1, (2,), generator=g).tolist()
        out.append(torch.roll(x[i : i + 1], shifts=(dy, dx), dims=(2, 3)))
    return torch.cat(out)


def random_flip(x: Tensor, p: float = 0.5, generator: Generators = None) -> Tensor:
    """Flip images left-right with probability ``p`` (one draw per batch, or per image given B generators)."""
    _check_images(x, "random_flip")
    if not 0.0 <= p <= 1.0:
        raise SplitinvError(f"random_flip needs 0 <= p <= 1, got {p}.")
    if p == 0.0:
        return x
    gens = _generators(generator, x.shape[0])
    if gens is None:
        return x.flip(3) if float(torch.rand((), generator=generator)) < p else x
    mask = torch.tensor([float(torch.rand((), generator=g)) < p for g in gens], device=x.device)
    return torch.where(mask.view(-1, 1, 1, 1), x.flip(3), x)


_BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


class BNStatsPrior:
    """DeepInversion's BatchNorm-statistics prior over every ``nn.BatchNorm2d`` of a module.

    ``sum_l ||mu_l(x) - running_mean_l||_2 + ||var_l(x) - running_var_l||_2`` where mu_l, var_l are the
    per-channel mean and (biased) variance of the inputs of BN layer l in the last forward pass. Use it as a
    context manager around forward passes::

        with BNStatsPrior(head) as prior:
            f = head(x)
            loss = feature_loss(f) + 0.01 * prior.loss()

    ``per_image=False`` (DeepInversion): statistics over the batch and space, ``loss()`` is a scalar.
    ``per_image=True``: statistics of each image over space, ``loss()`` has shape (B,), so an image's loss
    does not depend on the rest of its batch (it is not 0 on real images: one image varies less than a batch).
    ``first_layer_scale`` multiplies the first BN layer's term (DeepInversion's code uses 10 in some
    settings; 1 is the paper's plain sum).

    Works in eval or train mode and never changes the running statistics: the targets are the running
    statistics at entry, momentum is 0 inside the context, and the buffers are restored on exit.
    """

    def __init__(self, module: nn.Module, per_image: bool = False, first_layer_scale: float = 1.0) -> None:
        self.module = module
        self.per_image = bool(per_image)
        self.first_layer_scale = float(first_layer_scale)
        self.layers: list[nn.BatchNorm2d] = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]
        self._terms: dict[int, Tensor] = {}
        self._handles: list[Any] = []
        self._saved: list[tuple[dict[str, Tensor | None], float | None]] = []
        self._targets: list[tuple[Tensor, Tensor]] = []

    @property
    def n_layers(self) -> int:
        """How many BatchNorm2d layers the prior covers."""
        return len(self.layers)

    def attach(self) -> BNStatsPrior:
        """Register the hooks (what ``__enter__`` does)."""
        if self._handles:
            return self
        self._terms.clear()
        self._saved, self._targets = [], []
        for i, bn in enumerate(self.layers):
            if bn.running_mean is None or bn.running_var is None:
                raise SplitinvError(
                    f"BatchNorm layer {i} of {type(self.module).__name__} tracks no running statistics "
                    "(track_running_stats=False): the BN-statistics prior needs them."
                )
            buffers = {
                k: (b.clone() if (b := getattr(bn, k, None)) is not None else None) for k in _BN_BUFFERS
            }
            self._saved.append((buffers, bn.momentum))
            self._targets.append((bn.running_mean.detach().clone(), bn.running_var.detach().clone()))
            bn.momentum = 0.0  # train-mode forwards inside the context leave the running stats in place
            self._handles.append(bn.register_forward_pre_hook(self._hook(i)))
        return self

    def detach(self) -> None:
        """Remove the hooks and restore every BN layer's buffers and momentum (what ``__exit__`` does)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        with torch.no_grad():
            for bn, (buffers, momentum) in zip(self.layers, self._saved, strict=False):
                bn.momentum = momentum
                for k, v in buffers.items():
                    if v is not None:
                        getattr(bn, k).copy_(v)
        self._saved, self._targets = [], []
        self._terms.clear()

    def __enter__(self) -> BNStatsPrior:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def _hook(self, i: int) -> Any:
        def hook(bn: nn.Module, inputs: tuple[Tensor, ...]) -> None:
            x = inputs[0].float()
            mean_t, var_t = self._targets[i]
            mean_t, var_t = mean_t.to(x.device), var_t.to(x.device)
            if self.per_image:
                dims = (2, 3)
                mean = x.mean(dims)  # (B, C)
                var = x.var(dims, unbiased=False)
                term = (mean - mean_t).norm(dim=1) + (var - var_t).norm(dim=1)
            else:
                dims = (0, 2, 3)
                mean = x.mean(dims)
                var = x.var(dims, unbiased=False)
                term = (mean - mean_t).norm() + (var - var_t).norm()
            self._terms[i] = term * (self.first_layer_scale if i == 0 else 1.0)

        return hook

    def loss(self) -> Tensor:
        """The prior over the last forward pass: a scalar, or (B,) with ``per_image=True``."""
        if not self._handles:
            raise SplitinvError(
                "BNStatsPrior.loss() called outside its context: use `with BNStatsPrior(m):`."
            )
        if not self.layers:
            raise SplitinvError(
                f"{type(self.module).__name__} has no BatchNorm2d layer: the BN-statistics prior needs one "
                "(set the bn weight to 0)."
            )
        if not self._terms:
            raise SplitinvError("BNStatsPrior.loss() called before any forward pass through the module.")
        return torch.stack(list(self._terms.values())).sum(0)

    def reset(self) -> None:
        """Forget the statistics of the last forward pass."""
        self._terms.clear()
