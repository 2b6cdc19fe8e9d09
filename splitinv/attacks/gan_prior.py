"""GAN-prior attack (GLASS, NeurIPS 2023): search a generator's latent space for the image whose cut-point
activations match the observed ones.

For each observed activation ``v`` the attack optimises a generator state ``s`` (the latent ``z``, BigGAN's
``cond``, or the generator's layer-k representation) so that ``head(G_tail(s)) ~ v``:

    loss(s) = D(head(G_tail(s)), v) + tv_weight * TV(G_tail(s)) + l2_weight * mean(s^2)

with Adam, ``restarts`` starting points per image (the lowest final loss wins). The starts are drawn from the
generator's prior, or predicted by a small network trained on generated images (``init: decoder``, GLASS++'s
encoder start; it needs no real data). The generator is the attacker's: one trained on the victim's
distribution is ``aux_data: same``.

:func:`splitinv.optim.optimize_state` is the one loop, shared with GAN inversion
(:mod:`splitinv.gans.invert`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from splitinv.attacks.base import Attack, AttackContext, AttackerKnowledge, Reconstruction
from splitinv.attacks.optimize import FEATURE_LOSSES, _choice, _number, expected_feature_loss
from splitinv.attacks.priors import total_variation
from splitinv.errors import SplitinvError
from splitinv.gans.base import LATENT, Generator, State
from splitinv.optim import fit_image, image_generator, optimize_state
from splitinv.progress import track


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
    budget = ("attack.steps", "attack.restarts")

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
        defense_aware: bool = True,
        eot_samples: int = 4,
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
        if access != "white-box":
            raise SplitinvError(
                f"attack.access={access!r}: the GAN-prior attack differentiates through the head (white-box)."
            )
        self.knowledge = AttackerKnowledge(access=access, aux_data=aux_data, defense_aware=defense_aware)
        self.client: nn.Module | None = None  # what observe() runs: the head, then the defense
        self.eot_samples = int(_number("eot_samples", eot_samples, 1))
        self.eot_used = 1  # eot_samples against a stochastic defense the attacker models (set by fit)
        self.image_shape: tuple[int, int, int] | None = None
        self.predictor: LatentPredictor | None = None

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
        head = self.client
        assert head is not None

        def objective(state: State) -> Tensor:
            x = self.render(state)
            loss = expected_feature_loss(head, x, target, self.feature_loss, self.eot_used)
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
    def fit(self, context: AttackContext) -> dict[str, Any]:
        """Keep the device side (white-box); for ``init: decoder``, train the start predictor on generated
        images (no real data)."""
        the_split = context.require_split(self.name)
        self.client = the_split.client.eval()
        self.eot_used = self.eot_samples if the_split.defense.stochastic else 1
        self.image_shape = tuple(context.image_shape)  # type: ignore[assignment]
        device = next(iter(self.client.parameters()), torch.empty(0)).device
        self.generator.to(device)
        if self.init == "decoder":
            self.predictor = self._train_predictor(device)
        return {}

    @torch.no_grad()
    def _sample_pairs(self, n: int, g: torch.Generator, device: torch.device) -> tuple[Tensor, Tensor]:
        """(observations of generated images, the searched tensor that made them)."""
        assert self.client is not None
        state = self.start(self.generator.sample_latent(n, self.space, generator=g, device=device))
        return self.client(self.render(state)), state[self._main_key]

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
            for _ in track(
                range(self.init_epochs), desc="latent predictor", unit="epoch", enabled=self.progress
            ):
                order = torch.randperm(len(f_all), generator=g)
                for i in range(0, len(order), 64):
                    idx = order[i : i + 64]
                    loss = F.mse_loss(predictor(f_all[idx].to(device)), h_all[idx].to(device))
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
        return predictor.eval()

    def invert(self, features: Tensor, index: Tensor | Sequence[int] | None = None) -> Reconstruction:
        """Search ``restarts`` starts per image (seeded by (seed, index)); return the best reconstructions."""
        if self.client is None or self.image_shape is None:
            raise SplitinvError(f"the {self.name} attack has no split: call fit(context) before invert().")
        device = next(iter(self.client.parameters()), torch.empty(0)).device
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
        return Reconstruction(x.clamp(0, 1), loss.view(self.restarts, b).min(0).values.cpu())

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
            "eot_samples": self.eot_used,
        }
