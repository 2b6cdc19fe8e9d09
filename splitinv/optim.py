"""Optimisation pieces shared by the attacks and GAN inversion (below both, so neither imports the other).

- :func:`image_generator`: a per-image random generator seeded by (seed, image index), so an image's draws
  do not depend on its batch or on the number of processes.
- :func:`optimize_state`: per-sample Adam over a dict of tensors (a generator's latent or layer state),
  keeping each sample's best.
- :func:`fit_image`: generator images resized / re-channelled to a victim's input shape.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from splitinv.errors import SplitinvError
from splitinv.progress import track

State = dict[str, Tensor]  # named tensors; a generator's state at a cut (splitinv.gans.base.State)


def image_generator(seed: int, index: int) -> torch.Generator:
    """A CPU generator seeded from (seed, image index): an image's random draws do not depend on its batch."""
    state = np.random.SeedSequence([int(seed), int(index)]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def optimize_state(
    state0: State,
    objective: Callable[[State], Tensor],
    steps: int,
    lr: float,
    keys: Sequence[str] | None = None,
    *,
    progress: bool = False,
    name: str = "search",
    check_every: int = 50,
) -> tuple[State, Tensor]:
    """Adam on the tensors ``keys`` of ``state0`` (default: all) to minimise ``objective``'s per-sample loss.

    Returns the state with each sample's best values seen and that best loss (B,). Raises a one-line
    :class:`SplitinvError` when the loss becomes NaN or inf, checked on the host every ``check_every`` steps
    and at the last (finiteness is accumulated on the device: no host sync per step).
    """
    keys = list(keys or state0)
    free = {k: v.detach().clone().float().requires_grad_(k in keys) for k, v in state0.items()}
    opt = torch.optim.Adam([free[k] for k in keys], lr=lr)
    best = {k: v.detach().clone() for k, v in free.items()}
    first = next(iter(free.values()))
    best_loss = torch.full((first.shape[0],), float("inf"), device=first.device)
    finite = torch.ones((), dtype=torch.bool, device=first.device)
    with torch.enable_grad():
        for step in track(range(steps), desc=name, enabled=progress):
            loss = objective(free)
            finite = finite & torch.isfinite(loss.detach()).all()
            if (step == 0 or (step + 1) % check_every == 0 or step + 1 == steps) and not bool(finite):
                raise SplitinvError(
                    f"{name} loss became nan/inf by step {step + 1}: lower the learning rate (now {lr})."
                )
            with torch.no_grad():  # the loss at this step belongs to the state before the update
                better = loss.detach() < best_loss
                best_loss = torch.where(better, loss.detach(), best_loss)
                for k in keys:
                    mask = better.view(-1, *([1] * (free[k].ndim - 1)))
                    best[k] = torch.where(mask, free[k].detach(), best[k])
            opt.zero_grad(set_to_none=True)
            loss.sum().backward()
            opt.step()
    with torch.no_grad():  # the state after the last update may be the best of all
        loss = objective(free)
        better = loss < best_loss
        best_loss = torch.where(better, loss, best_loss)
        for k in keys:
            best[k] = torch.where(better.view(-1, *([1] * (free[k].ndim - 1))), free[k], best[k])
    return best, best_loss


def fit_image(x: Tensor, shape: Sequence[int]) -> Tensor:
    """Generator images (B, c, h, w) in the victim's input shape (C, H, W): channels repeated or averaged,
    size changed by bilinear interpolation (antialiased when shrinking)."""
    c, h, w = (int(s) for s in shape)
    if x.shape[1] != c:
        if x.shape[1] == 1:
            x = x.expand(-1, c, -1, -1)
        elif c == 1:
            x = x.mean(1, keepdim=True)
        else:
            raise SplitinvError(f"cannot feed {x.shape[1]}-channel generator images to a {c}-channel victim.")
    if tuple(x.shape[-2:]) != (h, w):
        shrink = x.shape[-1] > w
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=shrink)
    return x
