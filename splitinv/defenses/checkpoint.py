"""Defenses trained with the network, and the victim checkpoints that carry them.

A :class:`TrainedDefense` is fine-tuned together with the victim's head and tail by
``splitinv-train-defense`` (:mod:`splitinv.defenses.train`). It adds to the :class:`Defense` interface the
hooks that task calls, all optional:

- :meth:`~TrainedDefense.build` (``feature_shape``): create what depends on one image's activation shape
  (the bottleneck's convolutions); also called by :func:`load_defense` before its state is loaded;
- :meth:`~TrainedDefense.fit_start` (``x, h``): data-dependent initialisation on one training batch;
- :meth:`~TrainedDefense.training_loss` (``x, h, adversary``): terms added to the head and tail's
  cross-entropy (NoPeek's distance correlation, the adversarial defense's ``-weight * MSE``);
- :meth:`~TrainedDefense.build_adversary`, :meth:`~TrainedDefense.adversary_loss` and
  :meth:`~TrainedDefense.adversary_optimizer`: a model trained against the network with its own optimizer,
  one step before each step of the network (the proxy decoder). It is not part of the defense (not in its
  ``state_dict``, not in the split the attacks get).

A new trained defense is one file: subclass :class:`TrainedDefense`, implement ``forward`` (and ``restore``
when it changes what is sent) and the hooks it needs, list its constructor arguments in ``describe``.

The checkpoint ``splitinv-train-defense`` writes is a victim checkpoint (``build_victim(weights=PATH)``
loads it; the loader ignores the extra keys) plus :func:`defense_record`'s keys: ``defense`` (its
``describe()``), ``defense_state`` (its ``state_dict()``), ``cut`` (the resolved cut point),
``feature_shape`` (one image's activation shape there) and ``defense_format``. :func:`load_defense` checks a
run's defense and cut against it and loads the state.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from splitinv.defenses.base import Defense
from splitinv.errors import SplitinvError
from splitinv.io import load_weights

DEFENSE_FORMAT = "splitinv-defense/1"
DEFENSE_KEYS = ("defense", "defense_state", "cut", "feature_shape", "defense_format")


class TrainedDefense(Defense):
    """A defense trained with the network (see the module docstring for the hooks)."""

    trained = True  # splitinv-train-defense fine-tunes it; load_defense requires its checkpoint

    def __init__(self) -> None:
        super().__init__()
        self.feature_shape: tuple[int, ...] | None = None

    def build(self, feature_shape: Sequence[int]) -> None:
        """Create what depends on one image's activation shape ``feature_shape`` (no batch dim).

        Called before fine-tuning and before a checkpoint's state is loaded; a second call with the same
        shape is a no-op, with another shape an error. Subclasses extend :meth:`_build`.
        """
        shape = tuple(int(s) for s in feature_shape)
        if self.feature_shape is not None:
            if shape != self.feature_shape:
                raise SplitinvError(
                    f"{self.name} defense was built for activations of shape {self.feature_shape}, got "
                    f"{shape}: use a new defense object for another victim or cut point."
                )
            return
        self._build(shape)
        self.feature_shape = shape

    def _build(self, feature_shape: tuple[int, ...]) -> None:
        """What :meth:`build` creates (nothing by default)."""

    def fit_start(self, x: torch.Tensor, h: torch.Tensor) -> None:
        """Before fine-tuning, with one training batch: images ``x`` and head activations ``h`` (no gradient).
        Builds the defense by default; a defense may also initialise itself from the data."""
        self.build(h.shape[1:])

    def training_loss(
        self, x: torch.Tensor, h: torch.Tensor, adversary: nn.Module | None = None
    ) -> dict[str, torch.Tensor]:
        """Terms added to the cross-entropy of head and tail, by name (logged as ``train/NAME``).

        ``x`` are the images, ``h`` the head's activations (with their graph), ``adversary`` what
        :meth:`build_adversary` returned (its parameters are not stepped by the network's optimizer).
        """
        return {}

    def build_adversary(self, image_shape: tuple[int, int, int]) -> nn.Module | None:
        """A model trained against the network by its own optimizer (None: no adversary)."""
        return None

    def adversary_loss(self, adversary: nn.Module, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """What the adversary minimises on images ``x`` and detached activations ``h``."""
        raise NotImplementedError

    def adversary_optimizer(self, adversary: nn.Module) -> torch.optim.Optimizer:
        """The adversary's optimizer (Adam, lr 1e-3 by default)."""
        return torch.optim.Adam(adversary.parameters(), lr=1e-3)


def is_trained(defense: Defense) -> bool:
    """Whether ``defense`` is trained with the network (its checkpoint comes from splitinv-train-defense)."""
    return defense.trained


def defense_record(defense: Defense, point: str, feature_shape: Sequence[int]) -> dict[str, Any]:
    """The keys ``splitinv-train-defense`` adds to a victim checkpoint for ``defense`` at cut ``point``."""
    return {
        "defense_format": DEFENSE_FORMAT,
        "defense": _plain(defense.describe()),
        "defense_state": {k: v.detach().cpu() for k, v in defense.state_dict().items()},
        "cut": str(point),
        "feature_shape": [int(s) for s in feature_shape],
    }


def _plain(value: Any) -> Any:
    """A JSON round trip: what describe() says, as the plain types a weights_only load accepts."""
    return json.loads(json.dumps(value, default=str))


def _override(value: Any) -> str:
    """A value as a Hydra command-line override writes it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_override(v) for v in value) + "]"
    return str(value)


def defense_label(description: Mapping[str, Any]) -> str:
    """``nopeek (weight 0.5)``: a defense's name and parameters, for messages."""
    params = ", ".join(f"{k} {_override(v)}" for k, v in description.items() if k != "name")
    return f"{description.get('name', '?')}" + (f" ({params})" if params else "")


def _overrides(description: Mapping[str, Any], point: str) -> str:
    """The command-line overrides that ask for this defense at this cut point."""
    params = [f"defense.{k}={_override(v)}" for k, v in description.items() if k != "name"]
    return " ".join([f"defense={description.get('name', '?')}", *params, f"cut={point}"])


def _same(a: Any, b: Any) -> bool:
    """Equal descriptions, numbers compared as numbers (0.5 == 0.5, 1 == 1.0)."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if _number(a) and _number(b):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=0.0)
    return a == b


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_defense(weights_path: str | os.PathLike | None) -> dict[str, Any] | None:
    """The defense keys of a victim weights file (see :func:`defense_record`), or None when it has none
    (no file: ``None``, ``imagenet``, random weights; or a victim checkpoint without a defense)."""
    if _no_file(weights_path):
        return None
    path = Path(weights_path).expanduser()  # type: ignore[arg-type]
    obj = load_weights(path, "victim")
    if "defense" not in obj:
        return None
    missing = [k for k in DEFENSE_KEYS if k not in obj]
    if missing or not isinstance(obj["defense"], Mapping):
        raise SplitinvError(
            f"victim weights {path} name a defense but lack {', '.join(missing) or 'its description'}: "
            "retrain it with splitinv-train-defense."
        )
    if obj["defense_format"] != DEFENSE_FORMAT:
        raise SplitinvError(
            f"victim weights {path} hold a defense in format {obj['defense_format']!r}, not "
            f"{DEFENSE_FORMAT}: retrain it with this version's splitinv-train-defense."
        )
    return {k: obj[k] for k in DEFENSE_KEYS}


def load_defense(weights_path: str | os.PathLike | None, defense: Defense | None, point: str) -> None:
    """Check a run's ``defense`` and cut ``point`` against a victim weights file; load the defense's state.

    ``weights_path`` is the victim's ``weights`` (a checkpoint path, or ``None`` / ``imagenet`` / random);
    ``point`` is the resolved cut point (``Split.point``); ``defense`` None means no defense. When the file
    carries a defense (written by ``splitinv-train-defense``), the run must ask for the same defense, with
    the same parameters, at the same cut; its state (a bottleneck's weights) is then loaded into
    ``defense``. A trained defense (nopeek, adversarial, bottleneck) needs such a file. Any mismatch is one
    line saying what the file holds and which overrides ask for it.
    """
    described = defense.describe() if defense is not None else {"name": "none"}
    saved = read_defense(weights_path)
    if saved is None:
        if defense is not None and is_trained(defense):
            where = (
                f"victim.weights={_override(weights_path)} is not a checkpoint of it"
                if _no_file(weights_path)
                else f"victim.weights={weights_path} holds no defense"
            )
            raise SplitinvError(
                f"defense={defense.name} is trained with the network, but {where}: train it with "
                f"`splitinv-train-defense defense={defense.name} cut={point} victim.weights=...` and pass "
                "the checkpoint it writes as victim.weights."
            )
        return
    name = Path(weights_path).name  # type: ignore[arg-type]
    held = saved["defense"]
    if not _same(_plain(described), held) or str(point) != saved["cut"]:
        trained, asked = defense_label(held), defense_label(described)
        raise SplitinvError(
            f"{name} was trained with defense {trained} at {saved['cut']}, not {asked} at {point}: "
            f"pass {_overrides(held, saved['cut'])}."
        )
    if defense is None:  # unreachable: splitinv-train-defense never saves defense "none"
        return
    if hasattr(defense, "build"):
        defense.build(saved["feature_shape"])
    state = saved["defense_state"]
    own = defense.state_dict()
    wrong = sorted(set(own) ^ set(state)) + [
        k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)
    ]
    if wrong:
        raise SplitinvError(
            f"{name}: the saved state of defense {held.get('name')} does not fit this defense (first "
            f"mismatched key {wrong[0]!r}): retrain it with this version's splitinv-train-defense."
        )
    device = next((t.device for t in own.values()), torch.device("cpu"))
    defense.load_state_dict({k: v.to(device) for k, v in state.items()})


def _no_file(weights: Any) -> bool:
    """Whether a victim ``weights`` value names no file (random weights or ``imagenet``)."""
    from splitinv.victims import is_random_weights  # victims imports nothing of the defenses

    return is_random_weights(weights) or str(weights).lower() == "imagenet"
