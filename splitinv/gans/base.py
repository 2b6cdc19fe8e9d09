"""The generator interface: a GAN generator cut at named layers, like a victim classifier.

A generator maps a latent to an image in [0, 1]. Cutting it at a point splits it into ``head`` (latent ->
the state crossing the cut) and ``tail`` (state -> image), with ``tail(head(z, p), p) == G(z)`` for every
point ``p``. The state is a dict of tensors, because more than one value can cross a cut: the activation
``h`` always, and for conditional generators the conditioning (BigGAN's class/latent vector ``cond``).

An adapter for a new generator subclasses :class:`Generator` and lists its ``stages``; see the README.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from splitinv.errors import SplitinvError

State = dict[str, Tensor]  # the same alias as splitinv.optim.State
LATENT = "latent"  # the cut point before the first stage: the state is the latent itself


@dataclass(frozen=True)
class GeneratorCutPoint:
    """One cut point of a generator: its name, position and the shapes (batch 1) of what crosses it."""

    name: str
    index: int
    state: dict[str, tuple[int, ...]]


class Generator(nn.Module):
    """Base class of generator adapters.

    Subclasses set ``name``, ``image_size``, ``channels``, ``latent_spaces`` (the first is the default) and
    implement :meth:`latent_shape`, :meth:`stages` and :meth:`to_image`; :meth:`enter` maps a latent of a
    given space to the first state (default: ``{"h": latent}``).
    """

    name: str = "generator"
    image_size: int = 64
    channels: int = 3
    latent_spaces: tuple[str, ...] = ("z",)
    weights: str = "random"

    def latent_shape(self, space: str = "z") -> tuple[int, ...]:
        """Shape of one latent (without the batch dimension) in ``space``."""
        raise NotImplementedError

    def stages(self) -> list[tuple[str, Callable[[State], State]]]:
        """The named steps from the first state to the raw output, in order; each name is a cut point."""
        raise NotImplementedError

    def to_image(self, raw: Tensor) -> Tensor:
        """The last stage's ``h`` mapped to an image in [0, 1] (default: from tanh's [-1, 1])."""
        return ((raw + 1) / 2).clamp(0, 1)

    def enter(self, latent: Tensor, space: str = "z") -> State:
        """The state at the ``latent`` cut point for a latent of ``space``."""
        self.check_space(space)
        return {"h": latent}

    # ---- derived: every adapter gets these ---------------------------------------------------------------

    def check_space(self, space: str) -> None:
        if space not in self.latent_spaces:
            raise SplitinvError(
                f"generator {self.name} has no latent space {space!r}: "
                f"use one of {', '.join(self.latent_spaces)}."
            )

    def sample_latent(
        self, n: int, space: str = "z", generator: torch.Generator | None = None, device: Any = None
    ) -> Tensor:
        """``n`` latents of ``space`` drawn from the prior (N(0, I) for z; adapters override for others)."""
        self.check_space(space)
        if space != self.latent_spaces[0]:
            raise SplitinvError(f"generator {self.name} cannot sample latent space {space!r} directly.")
        device = device or next(self.parameters()).device
        return torch.randn((n, *self.latent_shape(space)), generator=generator).to(device)

    def cut_points(self) -> list[str]:
        """``latent`` followed by every stage name."""
        return [LATENT, *(name for name, _ in self.stages())]

    def check_point(self, point: str) -> int:
        """Index of ``point`` in :meth:`cut_points`, or a one-line error naming close matches."""
        points = self.cut_points()
        if point in points:
            return points.index(point)
        close = difflib.get_close_matches(str(point), points, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise SplitinvError(
            f"{point!r} is not a cut point of generator {self.name}.{hint} "
            f"List them with `splitinv gan-layers {self.name}`."
        )

    def head(self, latent: Tensor, point: str, space: str = "z") -> State:
        """The state crossing the cut at ``point`` for ``latent``."""
        stop = self.check_point(point)
        state = self.enter(latent, space)
        for _, step in self.stages()[:stop]:
            state = step(state)
        return state

    def tail(self, state: State, point: str) -> Tensor:
        """The image in [0, 1] that the rest of the generator makes from the state at ``point``."""
        start = self.check_point(point)
        for _, step in self.stages()[start:]:
            state = step(state)
        return self.to_image(state["h"])

    def forward(self, latent: Tensor, space: str = "z") -> Tensor:
        return self.tail(self.enter(latent, space), LATENT)

    @torch.no_grad()
    def describe_cut_points(self) -> list[GeneratorCutPoint]:
        """Every cut point with the shapes of the tensors crossing it (one latent pushed through)."""
        was_training = self.training
        self.eval()
        try:
            state = self.enter(self.sample_latent(1, generator=torch.Generator().manual_seed(0)))
            out = [GeneratorCutPoint(LATENT, 0, _shapes(state))]
            for i, (name, step) in enumerate(self.stages(), start=1):
                state = step(state)
                out.append(GeneratorCutPoint(name, i, _shapes(state)))
        finally:
            self.train(was_training)
        return out

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable identity, for results files."""
        return {
            "name": self.name,
            "weights": self.weights,
            "pretrained": self.weights != "random",
            "image_size": self.image_size,
            "channels": self.channels,
            "latent_spaces": list(self.latent_spaces),
        }


def _shapes(state: State) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape[1:]) for k, v in state.items()}


def sequential_stages(
    modules: Sequence[tuple[str, nn.Module]],
) -> list[tuple[str, Callable[[State], State]]]:
    """Stages for a generator that is a plain chain of modules on ``h`` (DCGAN, ProGAN)."""

    def step(module: nn.Module) -> Callable[[State], State]:
        return lambda state: {**state, "h": module(state["h"])}

    return [(name, step(module)) for name, module in modules]
