"""Generators by name (``dcgan``, ``progan``, ``biggan``, or a user's), with weights from local files.

The built-in adapters are lazy entries: listing or registering generators imports none of them.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from splitinv.errors import SplitinvError
from splitinv.gans.base import Generator
from splitinv.registry import Registry
from splitinv.victims import is_random_weights

GENERATORS: Registry[Callable[..., Generator]] = Registry(
    "generator", "Register your own with splitinv.gans.register_generator."
)
GENERATORS.register("dcgan", "splitinv.gans.dcgan:build_dcgan")
GENERATORS.register("progan", "splitinv.gans.progan:build_progan")
GENERATORS.register("biggan", "splitinv.gans.biggan:build_biggan")


def register_generator(name: str) -> Callable[[Callable[..., Generator]], Callable[..., Generator]]:
    """Decorator adding a builder ``(weights, **kwargs) -> Generator`` under ``name``."""
    return GENERATORS.register(name)


def available_generators() -> list[str]:
    return GENERATORS.names()


def warn_random(name: str) -> None:
    warnings.warn(
        f"generator {name} has RANDOM weights (weights=None): its images are not those of a trained GAN; "
        "pass a weights file for meaningful results.",
        stacklevel=3,
    )


def build_generator(name: str, weights: str | os.PathLike | None = None, **kwargs: Any) -> Generator:
    """Build generator ``name`` with weights from a local file (``None``: random, warned about)."""
    builder = GENERATORS.get(name)
    path = None if is_random_weights(weights) else Path(weights).expanduser()
    if path is not None and not path.exists():
        raise SplitinvError(f"generator weights {weights} do not exist: pass a local file, or weights=null.")
    generator = builder(path, **kwargs)
    return generator.eval()


def load_strict(module: torch.nn.Module, state: dict[str, Any], path: Any, what: str) -> None:
    """load_state_dict that reports a mismatch in one line (missing, unexpected, wrong-shape keys)."""
    own = module.state_dict()
    wrong = [k for k, v in state.items() if k in own and getattr(v, "shape", None) != own[k].shape]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if wrong or missing or unexpected:
        raise SplitinvError(
            f"weights {path} do not fit {what} (missing {len(missing)}, unexpected {len(unexpected)}, "
            f"wrong shape {len(wrong)}; first: {[*wrong, *missing, *unexpected][:3]}): is it a {what} "
            "checkpoint with the same architecture settings?"
        )
    module.load_state_dict(state)
