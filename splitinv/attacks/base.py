"""The attack interface that every reconstruction attack implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class AttackerKnowledge:
    """What the attacker is assumed to have, recorded in every results file and table row.

    access: ``black-box`` (can query the head: learned attacks) or ``white-box`` (knows its weights).
    aux_data: ``same`` (the victim's distribution), ``other`` (another distribution) or ``none`` (data-free).
    """

    access: str = "black-box"
    aux_data: str = "same"

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


class Attack(ABC):
    """Reconstructs the input of a head from its output.

    An attack never builds its own victim or writes files: the run hands it the frozen head, the auxiliary
    data (learned attacks only) and a Lightning trainer, and scores what ``invert`` returns.
    """

    name: str = "attack"
    knowledge: AttackerKnowledge = AttackerKnowledge()
    # True for attacks that optimise each image on its own (white-box optimisation, hybrid): the evaluation
    # runs them through ``trainer.predict`` with gradients on, passes each image's evaluation index to
    # ``invert`` (per-image seeding) and keeps per-image results so that a re-run skips finished images.
    per_image: bool = False
    # Where the cut sits (name, index, n_points, relative_depth, shape), set by the run before ``fit``.
    cut_info: dict[str, Any] | None = None

    def fit(  # noqa: B027 - optional: per-image attacks learn nothing
        self,
        head: nn.Module,
        datamodule: Any,
        trainer: Any,
        image_shape: tuple[int, int, int],
        victim: nn.Module | None = None,
    ) -> None:
        """Learn from auxiliary images pushed through ``head`` (no-op for per-image attacks).

        ``victim`` is the whole network, for white-box attacks that use more than the head (DCI's synthesis).
        """

    @abstractmethod
    def invert(self, features: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """Reconstructions in [0, 1] (B, C, H, W) of the images whose head output is ``features``.

        ``index`` (the images' evaluation indices) is passed to ``per_image`` attacks only, which seed each
        image's random draws from (seed, index); other attacks may leave it out of their signature.
        """

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable settings of the attack, for results files."""
        return {"name": self.name, **self.knowledge.as_dict()}

    def save(self, path: str) -> None:  # noqa: B027 - optional: only learned attacks save anything
        """Write what the attack learned (nothing for per-image attacks)."""
