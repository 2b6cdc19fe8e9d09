"""splitinv: model inversion attacks on split computing.

Cut a classifier at a named layer, reconstruct its input from the activations, and score the reconstructions
under one metric contract (LPIPS, SSIM, PSNR, feature and label leakage).

Importing this package is cheap (no torch, timm, Lightning or W&B): every name below is imported on first
use (PEP 562), from the module named beside it.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

# public name -> the module it comes from (a submodule of the same name is exported as itself)
_EXPORTS = {
    "SplitinvError": "splitinv.errors",
    "Victim": "splitinv.victims",
    "build_victim": "splitinv.victims",
    "wrap_module": "splitinv.victims",
    "cut": "splitinv.cut",
    "cut_points": "splitinv.cut",
    "describe_cut_points": "splitinv.cut",
    "stage_points": "splitinv.cut",
    "split": "splitinv.split",
    "Split": "splitinv.split",
    "metrics": "splitinv.metrics",
    "gans": "splitinv.gans",
}
# functions named like the module they live in: ``splitinv.cut`` is the function even after ``splitinv.cut``
# the module was imported (the import system sets the package attribute to the module)
_SHADOWED = {"cut", "split"}

__all__ = [
    "Split",
    "SplitinvError",
    "Victim",
    "__version__",
    "build_victim",
    "cut",
    "cut_points",
    "describe_cut_points",
    "gans",
    "metrics",
    "split",
    "stage_points",
    "wrap_module",
]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from splitinv import gans, metrics
    from splitinv.cut import cut, cut_points, describe_cut_points, stage_points
    from splitinv.errors import SplitinvError
    from splitinv.split import Split, split
    from splitinv.victims import Victim, build_victim, wrap_module

    __version__: str


def _get_version() -> str:
    from splitinv._version import __version__  # the source tree's own, also where the metadata is stale

    return __version__


def __getattr__(name: str) -> Any:
    if name == "__version__":
        value: Any = _get_version()
    elif name in _EXPORTS:
        module = importlib.import_module(_EXPORTS[name])
        is_submodule = _EXPORTS[name] == f"{__name__}.{name}" and name not in _SHADOWED  # metrics, gans
        value = module if is_submodule else getattr(module, name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """Keeps ``splitinv.cut`` / ``splitinv.split`` the functions when their modules are imported."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _SHADOWED and isinstance(value, types.ModuleType) and hasattr(value, name):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
