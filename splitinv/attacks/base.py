"""The attack protocol: what an attack receives, what it returns, which files it writes.

An attack never builds its own victim, reads the raw head, or writes files itself. The run builds the
:class:`splitinv.split.Split`, hands the attack one :class:`AttackContext` holding exactly what its threat
model allows, and scores what :meth:`Attack.invert` returns::

    stats = attack.fit(context)                   # learn (learned attacks) or keep the modules (white-box)
    out = attack.invert(observations, index)      # Reconstruction(images in [0, 1], per-image losses | None)
    for name, write in attack.artifacts().items(): write(folder / name)

- ``access="black-box"``: ``context.oracle`` only (images in, observations out; no parameters, no
  gradients). ``context.split`` and ``context.victim`` are None.
- ``access="white-box"``: also ``context.split`` (head, defense, tail) and ``context.victim``.
- ``defense_aware``: True (adaptive) gives the attacker the defended split; False (naive) the undefended one,
  while the observations it inverts are always the defended ones.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import nn

from splitinv.errors import SplitinvError

if TYPE_CHECKING:  # pragma: no cover
    from splitinv.split import QueryOracle, Split

ACCESS = ("black-box", "white-box")
AUX_DATA = ("same", "other", "none")


def check_choice(name: str, value: Any, valid: Sequence[str]) -> str:
    """``value`` if it is one of ``valid``, else a one-line error naming ``attack.<name>`` and the choices."""
    if value not in valid:
        raise SplitinvError(f"unknown attack.{name} {value!r}: choose one of {', '.join(valid)}.")
    return str(value)


def check_number(name: str, value: Any, minimum: float = 0.0, strict: bool = False) -> float:
    """``value`` as a finite float >= ``minimum`` (> with ``strict``), else a one-line error: the one
    validation of every attack's numeric settings (NaN, negative and non-numeric values are refused)."""
    if isinstance(value, bool):
        raise SplitinvError(f"attack.{name} must be a number, got {value!r}.")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise SplitinvError(f"attack.{name} must be a number, got {value!r}.") from None
    if not math.isfinite(v) or v < minimum or (strict and v == minimum):
        op = ">" if strict else ">="
        raise SplitinvError(f"attack.{name} must be a finite number {op} {minimum}, got {value!r}.")
    return v


def check_int(name: str, value: Any, minimum: int = 0) -> int:
    """``value`` as an int >= ``minimum`` (an integral float is accepted), else a one-line error."""
    v = check_number(name, value, minimum)
    if v != int(v):
        raise SplitinvError(f"attack.{name} must be a whole number, got {value!r}.")
    return int(v)


@dataclass(frozen=True)
class AttackerKnowledge:
    """What the attacker is assumed to have, recorded in every results file and table row.

    access: ``black-box`` (can query the device: learned attacks) or ``white-box`` (knows its weights).
    aux_data: ``same`` (the victim's distribution), ``other`` (another distribution) or ``none`` (data-free).
    defense_aware: whether the attacker knows the defense (adaptive) or models the undefended head (naive).
    """

    access: str = "black-box"
    aux_data: str = "same"
    defense_aware: bool = True

    def __post_init__(self) -> None:
        if self.access not in ACCESS:
            raise SplitinvError(f"attack.access={self.access!r}: choose one of {', '.join(ACCESS)}.")
        if self.aux_data not in AUX_DATA:
            raise SplitinvError(f"attack.aux_data={self.aux_data!r}: choose one of {', '.join(AUX_DATA)}.")
        if not isinstance(self.defense_aware, bool):
            raise SplitinvError(f"attack.defense_aware must be true or false, got {self.defense_aware!r}.")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class AttackContext:
    """Everything an attack may use in ``fit``, and nothing more (see the module docstring).

    image_shape: (C, H, W) of the victim's inputs. cut: where the cut sits (name, index, n_points,
    relative_depth, shape). data: the auxiliary data (a datamodule of images, or cached observations whose
    batches are {"image", "observation"} dicts); None for data-free attacks. trainer: a Lightning trainer.
    """

    image_shape: tuple[int, int, int]
    oracle: QueryOracle | None = None
    split: Split | None = None
    victim: nn.Module | None = None
    data: Any = None
    trainer: Any = None
    cut: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def for_attack(
        cls,
        attack: Attack,
        split: Split,
        image_shape: tuple[int, int, int],
        *,
        victim: nn.Module | None = None,
        data: Any = None,
        trainer: Any = None,
        cut: dict[str, Any] | None = None,
    ) -> AttackContext:
        """The context ``attack``'s knowledge allows on ``split``: an oracle for black-box attacks, the
        modules for white-box ones; the undefended split for a naive (``defense_aware=False``) attacker."""
        modelled = split if attack.knowledge.defense_aware else split.undefended()
        white = attack.knowledge.access == "white-box"
        return cls(
            image_shape=tuple(image_shape),  # type: ignore[arg-type]
            oracle=modelled.oracle(),
            split=modelled if white else None,
            victim=victim if white else None,
            data=None if attack.knowledge.aux_data == "none" else data,
            trainer=trainer,
            cut=dict(cut or {}),
        )

    @classmethod
    def for_head(
        cls,
        head: nn.Module,
        image_shape: tuple[int, int, int],
        *,
        data: Any = None,
        trainer: Any = None,
        cut: dict[str, Any] | None = None,
    ) -> AttackContext:
        """A white-box context on a bare head (no tail, no defense): attacking a head from Python."""
        from splitinv.split import Split

        the_split = Split(head)
        return cls(
            image_shape=tuple(image_shape),  # type: ignore[arg-type]
            oracle=the_split.oracle(),
            split=the_split,
            data=data,
            trainer=trainer,
            cut=dict(cut or {}),
        )

    def require_split(self, who: str) -> Split:
        """The white-box modules, or a one-line error naming the attack that needs them."""
        if self.split is None:
            raise SplitinvError(f"{who} is a white-box attack: its context needs the split (context.split).")
        return self.split

    def require_data(self, who: str) -> Any:
        if self.data is None:
            raise SplitinvError(f"{who} learns from auxiliary data, but its context has none (context.data).")
        return self.data


class Reconstruction(NamedTuple):
    """What ``invert`` returns: images in [0, 1] (B, C, H, W) and, where the attack has them, per-image
    final losses (B,)."""

    images: torch.Tensor
    losses: torch.Tensor | None = None


Writer = Callable[[Path], None]


class Attack(ABC):
    """Reconstructs a split's input from what the server observes. Subclasses implement ``invert``."""

    name: str = "attack"
    knowledge: AttackerKnowledge = AttackerKnowledge()
    # True for attacks that optimise each image on its own (white-box optimisation, hybrid): the evaluation
    # runs them through ``trainer.predict`` with gradients on, passes each image's evaluation index to
    # ``invert`` (per-image seeding) and keeps per-image results so that a re-run skips finished images.
    per_image: bool = False
    # True for attacks that learn from (image, observation) pairs only: the run may feed them cached
    # observations (the activation cache) instead of querying the device every epoch.
    learns_from_observations: bool = False

    @property
    def uses_aux_data(self) -> bool:
        """Whether the attack trains on the run's auxiliary data: the run then records which data that was
        (``knowledge.aux_data``: same or other). Attacks that learn from observations do; others may."""
        return self.learns_from_observations

    def fit(self, context: AttackContext) -> dict[str, Any]:
        """Learn from, or keep, what ``context`` offers; returns training statistics (empty when none)."""
        return {}

    @abstractmethod
    def invert(self, observations: torch.Tensor, index: torch.Tensor | None = None) -> Reconstruction:
        """Reconstructions of the images whose observations these are.

        ``index`` (the images' evaluation indices) seeds per-image random draws (``per_image`` attacks).
        """

    @property
    def steps_per_image(self) -> int:
        """Optimisation steps each image gets at inversion (0 for one-pass attacks); recorded in the cost."""
        return 0

    def artifacts(self) -> dict[str, Writer]:
        """Files the attack writes into the run folder: {file name: writer(path)}; none by default."""
        return {}

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable settings of the attack, for results files."""
        return {"name": self.name, **self.knowledge.as_dict()}
