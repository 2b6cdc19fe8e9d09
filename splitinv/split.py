"""The split between device and server: one object that every attack, metric and cache goes through.

The device runs the head and may transform what it sends (a defense); the server runs the tail::

    split = splitinv.split(victim, "layer2", defense=None)
    v = split.observe(x)          # defense(head(x)): the ONLY function that makes what the server receives
    logits = split.serve(v)       # tail(defense.restore(v)) == victim(x) without a defense (eval mode)

Black-box attackers get :meth:`Split.oracle` (images in, observations out: no parameters, no gradients);
white-box attackers get the modules. :meth:`Split.utility` measures what the defended split still does.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from splitinv.defenses.base import Defense, NoDefense
from splitinv.errors import SplitinvError


class Client(nn.Module):
    """What runs on the device: the head, then the defense. Its output is the observation."""

    def __init__(self, head: nn.Module, defense: Defense) -> None:
        super().__init__()
        self.head, self.defense = head, defense

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.defense(self.head(x))


class QueryOracle:
    """Black-box access to a split's device side: ``oracle(images) -> observations``.

    It holds no module an attacker could read (no ``parameters``, no ``state_dict``, no attribute that is a
    module) and its outputs carry no gradient: an attack given only this can query, never differentiate.
    """

    __slots__ = ("_move", "_query")

    def __init__(self, client: nn.Module) -> None:
        def query(x: torch.Tensor) -> torch.Tensor:
            client.eval()
            device = next(iter(client.parameters()), torch.empty(0)).device
            with torch.no_grad():
                return client(x.detach().to(device)).detach()

        def move(device: torch.device | str) -> None:
            client.to(device)

        self._query, self._move = query, move

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self._query(x)

    def to(self, device: torch.device | str) -> QueryOracle:
        """Run the queries on ``device`` (the attacker's training device); returns the oracle."""
        self._move(device)
        return self

    def __repr__(self) -> str:
        return "QueryOracle(images -> observations)"


class Split(nn.Module):
    """A victim cut at ``point`` into ``head`` and ``tail``, with a ``defense`` on what crosses the cut.

    ``tail`` may be None for a head-only split (an attack on a bare head); :meth:`utility` then refuses.
    """

    def __init__(
        self,
        head: nn.Module,
        tail: nn.Module | None = None,
        defense: Defense | None = None,
        point: str | None = None,
    ) -> None:
        super().__init__()
        defense = defense if defense is not None else NoDefense()
        if not isinstance(defense, Defense):
            raise SplitinvError(
                f"a defense must be a splitinv.defenses.Defense, got {type(defense).__name__}: "
                "subclass Defense (see CONTRIBUTING.md, 'A new defense')."
            )
        self.client = Client(head, defense)
        self.tail = tail
        self.point = point
        self.train(head.training)  # a new module is in train mode: follow the head's (victims: eval)

    @property
    def head(self) -> nn.Module:
        return self.client.head

    @property
    def defense(self) -> Defense:
        return self.client.defense

    def observe(self, x: torch.Tensor) -> torch.Tensor:
        """What the server receives for images ``x``: ``defense(head(x))``."""
        return self.client(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The defended network end to end: ``tail(defense.restore(observe(x)))``."""
        return self.serve(self.observe(x))

    def serve(self, observation: torch.Tensor) -> torch.Tensor:
        """What the server computes from an observation: ``tail(defense.restore(observation))``."""
        return self._tail()(self.defense.restore(observation))

    def _tail(self) -> nn.Module:
        if self.tail is None:
            raise SplitinvError("this split has no tail (built from a head alone): pass tail= to Split.")
        return self.tail

    def oracle(self) -> QueryOracle:
        """Black-box access: a query oracle over :meth:`observe`."""
        return QueryOracle(self.client)

    def undefended(self) -> Split:
        """The same head and tail without the defense (what a naive attacker models)."""
        if self.defense.is_identity:
            return self
        return Split(self.head, self.tail, None, self.point)

    def describe(self) -> dict[str, Any]:
        return {"point": self.point, "defense": self.defense.describe()}

    @torch.no_grad()
    def utility(self, batches: Iterable[Any], device: torch.device | str | None = None) -> dict[str, Any]:
        """Top-1 accuracy of ``tail(observe(x))`` against the labels (None when the data has none) and
        its top-1 agreement with the undefended ``tail(head(x))``, over ``batches`` of (image, label, ...).
        """
        tail = self._tail()
        self.eval()
        dev = torch.device(device) if device is not None else next(iter(self.parameters())).device
        correct = agree = n = 0
        labelled = True
        for batch in batches:
            x, labels = batch[0].to(dev).float(), batch[1].to(dev)
            h = self.head(x)
            pred = tail(self.defense.restore(self.defense(h))).argmax(1)
            clean = pred if self.defense.is_identity else tail(h).argmax(1)
            agree += int((pred == clean).sum())
            labelled = labelled and bool((labels >= 0).all())
            correct += int((pred == labels).sum()) if labelled else 0
            n += x.shape[0]
        if n == 0:
            raise SplitinvError("utility needs at least one image: the data is empty.")
        return {"accuracy": correct / n if labelled else None, "agreement": agree / n, "n": n}


def split(victim: nn.Module, point: str, defense: Defense | None = None, method: str = "auto") -> Split:
    """Cut ``victim`` at ``point`` (a name, or ``stage:K`` / ``depth:F`` / ``index:K``) into a Split."""
    from splitinv.cut import cut, resolve_point

    point = resolve_point(victim, point, method=method)
    head, tail = cut(victim, point, method=method)
    return Split(head, tail, defense, point)
