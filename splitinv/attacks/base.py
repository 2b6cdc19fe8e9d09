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
- ``access="query-free"`` (He et al.'s third setting): no oracle, no head weights; ``context.tail`` (the
  server's half), ``context.architecture`` (fresh copies of the head with re-initialised weights) and the
  auxiliary data.
- ``access="architecture"`` (UnSplit): ``context.architecture`` only, and the observations it inverts.
- ``defense_aware``: True (adaptive) gives the attacker the defended split; False (naive) the undefended one,
  while the observations it inverts are always the defended ones. The two blind accesses get the defense
  module (``context.defense``) when it holds no weights.
"""

from __future__ import annotations

import copy
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

ACCESS = ("black-box", "white-box", "query-free", "architecture")
BLIND = ("query-free", "architecture")  # neither queries nor weights of the head
ARCHITECTURE_SEED = 1_000_003  # added to the attack's seed for the fresh weights of architecture_of
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

    access: ``black-box`` (can query the device: learned attacks), ``white-box`` (knows its weights),
    ``query-free`` (the tail and data, no queries) or ``architecture`` (the head's architecture only).
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


def architecture_of(head: nn.Module, seed: int = 0) -> Callable[[], nn.Module]:
    """A constructor of ``head``'s architecture without its weights: each call returns a new copy of one
    template whose parameters were re-initialised (``reset_parameters``, seeded) and whose BatchNorm
    statistics were reset; the input normalisation (public) is kept. A parameter that cannot be
    re-initialised is a one-line error. The constructor holds the template only, never ``head``."""
    template = copy.deepcopy(head)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed) + ARCHITECTURE_SEED)  # not the stream a random-weight victim came from
        for module in template.modules():
            if callable(getattr(module, "reset_parameters", None)):
                module.reset_parameters()
            if callable(getattr(module, "reset_running_stats", None)):
                module.reset_running_stats()
    original = dict(head.named_parameters())
    for name, param in template.named_parameters():
        if name in original and param.numel() > 1 and torch.equal(param, original[name]):
            raise SplitinvError(
                f"cannot give the head's architecture without its weights: parameter {name} has no "
                "reset_parameters(); use an attack with white-box or black-box access."
            )
    template.train(False)
    del original, head

    def build() -> nn.Module:
        return copy.deepcopy(template)

    return build


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
    tail: nn.Module | None = None
    architecture: Callable[[], nn.Module] | None = None
    defense: Any = None

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
        access = attack.knowledge.access
        white, blind = access == "white-box", access in BLIND
        tail = None
        if access == "query-free":
            tail = split._tail()
            heads = {p.data_ptr() for p in split.head.parameters()}
            if any(p.data_ptr() in heads for p in tail.parameters()):
                raise SplitinvError(
                    "a query-free attacker gets the tail, but this tail holds the head's weights (a "
                    "forward-hook cut keeps the whole network): use cut_method=fx."
                )
        weightless = next(iter(modelled.defense.parameters()), None) is None
        return cls(
            image_shape=tuple(image_shape),  # type: ignore[arg-type]
            oracle=None if blind else modelled.oracle(),
            split=modelled if white else None,
            victim=victim if white else None,
            data=None if attack.knowledge.aux_data == "none" else data,
            trainer=trainer,
            cut=dict(cut or {}),
            tail=tail,
            architecture=architecture_of(split.head, getattr(attack, "seed", 0)) if blind else None,
            defense=modelled.defense if blind and weightless else None,
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

    def require_architecture(self, who: str) -> Callable[[], nn.Module]:
        """The head's architecture without weights, or a one-line error naming the attack."""
        if self.architecture is None:
            raise SplitinvError(f"{who} needs the head's architecture: its context has none.")
        return self.architecture

    def require_tail(self, who: str) -> nn.Module:
        """The server's half (query-free access), or a one-line error naming the attack."""
        if self.tail is None:
            raise SplitinvError(f"{who} is a query-free attack: its context needs the tail (context.tail).")
        return self.tail

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
    # the settings that give it more budget (more steps, data, epochs): named in the run's warning when its
    # reconstructions do not beat a flat grey image
    budget: tuple[str, ...] = ()

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
