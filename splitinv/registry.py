"""Objects by name: one small registry for victims, generators and datamodules.

A :class:`Registry` maps names to objects (builders, classes). An entry is added with a decorator
(``@VICTIMS.register("name")``), directly (``VICTIMS.register("name", builder)``), or lazily as a
``"package.module:attr"`` string that is imported on first lookup, so that registering a built-in does not
import its (possibly heavy) module. A name that is not registered fails with one line listing the closest
names and every choice.

:func:`import_target` is the same ``"package.module:attr"`` resolution with one-line errors, for configs that
name a function (``victim.factory=mynets:tiny_cnn``).

This module imports nothing but the standard library and :mod:`splitinv.errors`.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar, overload

from splitinv.errors import SplitinvError

T = TypeVar("T")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0][:160]}" if text else type(err).__name__


def import_target(spec: str, what: str = "target") -> Any:
    """The object that ``"package.module:attr"`` names (``attr`` may be dotted), imported now.

    ``what`` names the setting in the error messages (``victim.factory``). Every failure is one line: not of
    the form ``module:attr``, a module that does not import, an attribute the module lacks.
    """
    text = str(spec).strip() if spec is not None else ""
    module_name, sep, attr = text.partition(":")
    if not sep or not module_name or not attr or ":" in attr:
        raise SplitinvError(
            f"{what}={spec!r} is not of the form 'package.module:function' (a module on PYTHONPATH, a colon, "
            "the name inside it), e.g. mynets:tiny_cnn."
        )
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as err:  # ModuleNotFoundError, or an error raised while the module runs
        hint = " (is its folder on PYTHONPATH?)" if isinstance(err, ModuleNotFoundError) else ""
        raise SplitinvError(
            f"{what}={text}: module {module_name!r} does not import{hint}: {_first_line(err)}"
        ) from err
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_")]
            close = difflib.get_close_matches(part, names, n=3, cutoff=0.6)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise SplitinvError(f"{what}={text}: {module_name} has no attribute {attr!r}.{hint}")
        obj = getattr(obj, part)
    return obj


class Registry(Generic[T]):
    """Named objects of one ``kind`` (``victim``, ``generator``, ``dataset``), some of them lazy.

    ``hint`` ends the unknown-name error (how to add one). Iterating gives the names, sorted;
    ``registry[name]`` and :meth:`get` return the object (importing a lazy entry); :meth:`items` resolves
    every entry.
    """

    def __init__(self, kind: str, hint: str = "") -> None:
        self.kind, self.hint = kind, hint
        self._entries: dict[str, T | str] = {}

    @overload
    def register(self, name: str) -> Callable[[T], T]: ...

    @overload
    def register(self, name: str, obj: T | str) -> T | str: ...

    def register(self, name: str, obj: Any = None) -> Any:
        """Add ``obj`` under ``name``; without ``obj``, a decorator. A ``"module:attr"`` string is lazy.

        Registering a name again replaces its entry (a re-run notebook cell, a user's override).
        """
        if not isinstance(name, str) or not name:
            raise SplitinvError(f"a {self.kind} name must be a non-empty string, got {name!r}.")
        if obj is None:

            def add(target: T) -> T:
                self._entries[name] = target
                return target

            return add
        if isinstance(obj, str) and ":" not in obj:
            raise SplitinvError(f"lazy {self.kind} entry {name}={obj!r} is not of the form 'module:attr'.")
        self._entries[name] = obj
        return obj

    def names(self) -> list[str]:
        """Every registered name, sorted (lazy entries included, not imported)."""
        return sorted(self._entries)

    def is_lazy(self, name: str) -> bool:
        return isinstance(self._entries.get(name), str)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self.names())})"

    def unknown(self, name: Any, choices: list[str] | None = None) -> SplitinvError:
        """The one-line error for a name that is not registered (closest names, then every choice)."""
        choices = self.names() if choices is None else choices
        close = difflib.get_close_matches(str(name), choices, n=3, cutoff=0.5)
        did_you_mean = f" Did you mean {', '.join(close)}?" if close else ""
        known = f" Known: {', '.join(choices)}." if choices else f" No {self.kind} is registered."
        hint = f" {self.hint}" if self.hint else ""
        return SplitinvError(f"unknown {self.kind} {name!r}.{did_you_mean}{known}{hint}")

    def get(self, name: str) -> T:
        """The object registered as ``name`` (a lazy entry is imported once), or a one-line error."""
        if name not in self._entries:
            raise self.unknown(name)
        entry = self._entries[name]
        if isinstance(entry, str):
            entry = import_target(entry, what=f"{self.kind} {name}")
            self._entries[name] = entry
        return entry  # type: ignore[return-value]

    __getitem__ = get

    def items(self) -> list[tuple[str, T]]:
        """(name, object) for every entry, sorted by name; imports every lazy entry."""
        return [(name, self.get(name)) for name in self.names()]
