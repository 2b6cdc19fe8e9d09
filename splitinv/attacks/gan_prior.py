"""GAN-prior attack (GLASS, NeurIPS 2023): search a generator's latent space for the image whose cut-point
activations match the observed ones.

For each observed activation ``v`` the attack optimises a generator state ``s`` (the latent ``z``, BigGAN's
``cond``, or the generator's layer-k representation) so that ``head(G_tail(s)) ~ v``:

    loss(s) = D(head(G_tail(s)), v) + tv_weight * TV(G_tail(s)) + l2_weight * mean(s^2)

with Adam, ``restarts`` starting points per image (the lowest final loss wins). The starts are drawn from the
generator's prior, or predicted by a small network trained on generated images (``init: decoder``, GLASS++'s
encoder start; it needs no real data). The generator is the attacker's: one trained on the victim's
distribution is ``aux_data: same``.

:func:`optimize_state` is the one loop, shared with GAN inversion (:mod:`splitinv.gans.invert`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from splitinv.attacks.base import Attack, AttackerKnowledge
from splitinv.attacks.optimize import FEATURE_LOSSES, _choice, _number, feature_loss, image_generator
from splitinv.attacks.priors import total_variation
from splitinv.errors import SplitinvError
from splitinv.gans.base import LATENT, Generator, State


def optimize_state(
    state0: State,
    objective: Callable[[State], Tensor],
    steps: int,
    lr: float,
    keys: Sequence[str] | None = None,
    *,
    progress: bool = False,
    name: str = "search",
) -> tuple[State, Tensor]:
    """Adam on the tensors ``keys`` of ``state0`` (default: all) to minimise ``objective``'s per-sample loss.

    Returns the state with each sample's best values seen and that best loss (B,). Raises a one-line
    :class:`SplitinvError` when the loss becomes NaN or inf.
    """
    keys = list(keys or state0)
    free = {k: v.detach().clone().float().requires_grad_(k in keys) for k, v in state0.items()}
    opt = torch.optim.Adam([free[k] for k in keys], lr=lr)
    best = {k: v.detach().clone() for k, v in free.items()}
    first = next(iter(free.values()))
    best_loss = torch.full((first.shape[0],), float("inf"), device=first.device)
    with torch.enable_grad():
        for step in tqdm(range(steps), desc=name, leave=False, disable=not progress):
            loss = objective(free)
            if not bool(torch.isfinite(loss).all()):
                raise SplitinvError(
                    f"{name} loss became nan/inf at step {step + 1}: lower the learning rate (now {lr})."
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


class LatentPredictor(nn.Module):
    """Head features -> a generator state tensor: GLASS++'s learned start (trained on generated images)."""

    def __init__(self, feature_shape: Sequence[int], target_shape: Sequence[int], width: int = 256) -> None:
        super().__init__()
        self.feature_shape, self.target_shape = tuple(feature_shape), tuple(target_shape)
        pooled = feature_shape[0] * 16 if len(feature_shape) == 3 else int(torch.tensor(feature_shape).prod())
        self.pool = nn.AdaptiveAvgPool2d(4) if len(feature_shape) == 3 else nn.Identity()
        out = int(torch.tensor(self.target_shape).prod())
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(pooled, width), nn.LeakyReLU(0.2), nn.Linear(width, width),
            nn.LeakyReLU(0.2), nn.Linear(width, out),
        )  # fmt: skip

    def forward(self, f: Tensor) -> Tensor:
        return self.net(self.pool(f.float())).view(f.shape[0], *self.target_shape)


class GANPriorAttack(Attack):
    """Search a generator's latent space (or a layer's representation) to match cut-point activations.

    Args:
        generator: the attacker's generator (``splitinv.gans.build_generator``).
        search: what is optimised: a latent space of the generator (``z``; ``cond`` for BigGAN) or one of
            its cut points (the layer-k representation, started from the prior's layer-k states).
        steps, lr: Adam iterations and learning rate per image.
        restarts: starting points per image; the lowest final loss wins.
        feature_loss: mse | nmse | cosine (see :func:`splitinv.attacks.optimize.feature_loss`).
        tv_weight, l2_weight: weights of TV on the image and of the mean square of the searched tensors.
        init: ``prior`` (random draws) or ``decoder`` (a :class:`LatentPredictor` trained in ``fit`` on
            ``init_samples`` generated images; with restarts > 1 the other starts come from the prior).
    """

    per_image = True
    uses_features = False

    def __init__(
        self,
        generator: Generator,
        search: str = "z",
        steps: int = 300,
        lr: float = 0.05,
        restarts: int = 4,
        feature_loss: str = "mse",
        tv_weight: float = 0.0,
        l2_weight: float = 1e-3,
        init: str = "prior",
        init_samples: int = 2048,
        init_epochs: int = 10,
        seed: int = 0,
        name: str = "gan_prior",
        access: str = "white-box",
        aux_data: str = "same",
        progress: bool = True,
    ) -> None:
        if not isinstance(generator, Generator):
            raise SplitinvError(
                f"attack.generator must be a splitinv generator (build_generator), not {type(generator)}."
            )
        self.generator = generator.eval()
        for p in self.generator.parameters():
            p.requires_grad_(False)
        in_latent = search in generator.latent_spaces or search == LATENT  # "latent": the default space
        self.space = search if search in generator.latent_spaces else generator.latent_spaces[0]
        self.point = LATENT if in_latent else search
        generator.check_point(self.point)  # a one-line error for an unknown layer
        self.search, self.name, self.seed, self.progress = search, name, int(seed), bool(progress)
        self.steps = int(_number("steps", steps, 1))
        self.lr = _number("lr", lr, 0.0, strict=True)
        self.restarts = int(_number("restarts", restarts, 1))
        self.feature_loss = _choice("feature_loss", feature_loss, FEATURE_LOSSES)
        self.tv_weight, self.l2_weight = _number("tv_weight", tv_weight), _number("l2_weight", l2_weight)
        self.init = _choice("init", init, ("prior", "decoder"))
        self.init_samples, self.init_epochs = int(init_samples), int(init_epochs)
        self.knowledge = AttackerKnowledge(access=access, aux_data=aux_data)
        self.head: nn.Module | None = None
        self.image_shape: tuple[int, int, int] | None = None
        self.predictor: LatentPredictor | None = None
        self.last_losses: Tensor | None = None

    # ------------------------------------------------------------------ pieces
    def start(self, z: Tensor) -> State:
        """What is searched, from latents ``z`` of the space: ``{"z": z}``, or the layer's state for ``z``
        (every tensor crossing that cut: BigGAN's ``cond`` with ``h``)."""
        if self.point == LATENT:
            return {"z": z}
        return self.generator.head(z, self.point, self.space)

    def render(self, state: State) -> Tensor:
        """The generator's image from the searched state, in the victim's input shape."""
        assert self.image_shape is not None
        if self.point == LATENT:
            x = self.generator(state["z"], self.space)
        else:
            x = self.generator.tail(state, self.point)
        return fit_image(x, self.image_shape)

    def _prior_states(self, gens: Sequence[torch.Generator], device: torch.device) -> State:
        """One start per generator (an image's seeded draw) from the generator's prior."""
        z = torch.cat([self.generator.sample_latent(1, self.space, generator=g, device=device) for g in gens])
        return self.start(z)

    def _objective(self, target: Tensor) -> Callable[[State], Tensor]:
        head = self.head
        assert head is not None

        def objective(state: State) -> Tensor:
            x = self.render(state)
            loss = feature_loss(head(x), target, self.feature_loss)
            if self.tv_weight > 0:
                loss = loss + self.tv_weight * total_variation(x)
            if self.l2_weight > 0:
                loss = loss + self.l2_weight * sum(v.flatten(1).pow(2).mean(1) for v in state.values())
            return loss

        return objective

    @property
    def _main_key(self) -> str:
        return "z" if self.point == LATENT else "h"

    # ------------------------------------------------------------------ interface
    def fit(
        self,
        head: nn.Module,
        datamodule: Any,
        trainer: Any,
        image_shape: tuple[int, int, int],
        victim: nn.Module | None = None,
    ) -> None:
        """Keep the head (white-box); for ``init: decoder``, train the start predictor on generated images."""
        self.head, self.image_shape = head.eval(), tuple(image_shape)
        device = next(iter(head.parameters()), torch.empty(0)).device
        self.generator.to(device)
        if self.init == "decoder":
            self.predictor = self._train_predictor(device)

    @torch.no_grad()
    def _sample_pairs(self, n: int, g: torch.Generator, device: torch.device) -> tuple[Tensor, Tensor]:
        """(head features of generated images, the searched tensor that made them)."""
        assert self.head is not None
        state = self.start(self.generator.sample_latent(n, self.space, generator=g, device=device))
        return self.head(self.render(state)), state[self._main_key]

    def _train_predictor(self, device: torch.device) -> LatentPredictor:
        """Regress the searched tensor from head features of generated images (data-free)."""
        g = torch.Generator().manual_seed(self.seed)
        feats, targets = [], []
        for start in range(0, self.init_samples, 64):
            f, h = self._sample_pairs(min(64, self.init_samples - start), g, device)
            feats.append(f.cpu())
            targets.append(h.cpu())
        f_all, h_all = torch.cat(feats), torch.cat(targets)
        predictor = LatentPredictor(f_all.shape[1:], h_all.shape[1:]).to(device)
        opt = torch.optim.Adam(predictor.parameters(), lr=1e-3)
        with torch.enable_grad():
            for _ in tqdm(
                range(self.init_epochs), desc="latent predictor", leave=False, disable=not self.progress
            ):
                order = torch.randperm(len(f_all), generator=g)
                for i in range(0, len(order), 64):
                    idx = order[i : i + 64]
                    loss = F.mse_loss(predictor(f_all[idx].to(device)), h_all[idx].to(device))
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
        return predictor.eval()

    def invert(self, features: Tensor, index: Tensor | Sequence[int] | None = None) -> Tensor:
        """Search ``restarts`` starts per image (seeded by (seed, index)); return the best reconstructions."""
        if self.head is None or self.image_shape is None:
            raise SplitinvError(f"the {self.name} attack has no head: call fit(head, ...) before invert().")
        device = next(iter(self.head.parameters()), torch.empty(0)).device
        self.generator.to(device)  # the run moves the head to its device after fit (a no-op when there)
        if self.predictor is not None:
            self.predictor.to(device)
        features = features.to(device).float()
        b = features.shape[0]
        idx = torch.arange(b) if index is None else torch.as_tensor(index).flatten().cpu()
        if idx.numel() != b:
            raise SplitinvError(f"{idx.numel()} indices for {b} feature maps: pass one index per image.")
        gens = [image_generator(self.seed, int(i)) for i in idx]
        # restart r of image i sits at row r * b + i: all starts are optimised together in one batch
        starts = [self._prior_states(gens, device) for _ in range(self.restarts)]
        if self.predictor is not None:
            with torch.no_grad():
                starts[0] = {**starts[0], self._main_key: self.predictor(features)}
        state0 = {k: torch.cat([s[k] for s in starts]) for k in starts[0]}
        target = features.repeat(self.restarts, *([1] * (features.ndim - 1)))
        best, loss = optimize_state(
            state0, self._objective(target), self.steps, self.lr, progress=self.progress, name=self.name
        )
        choice = loss.view(self.restarts, b).argmin(0)  # the best restart of each image
        rows = choice * b + torch.arange(b, device=choice.device)
        with torch.no_grad():
            x = self.render({k: v[rows] for k, v in best.items()})
        self.last_losses = loss.view(self.restarts, b).min(0).values.cpu()
        return x.clamp(0, 1)

    @property
    def steps_per_image(self) -> int:
        """Optimisation steps each image gets, all restarts together (recorded in the run's cost)."""
        return self.steps * self.restarts

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "generator": self.generator.describe(),
            "search": self.search,
            "steps": self.steps,
            "lr": self.lr,
            "restarts": self.restarts,
            "feature_loss": self.feature_loss,
            "tv_weight": self.tv_weight,
            "l2_weight": self.l2_weight,
            "init": self.init,
            "seed": self.seed,
        }
