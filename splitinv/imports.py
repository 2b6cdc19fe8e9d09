"""Third-party imports that must not drag in what a run did not choose.

``import timm`` imports ``wandb`` whenever it is installed (``timm.utils.summary``: ``try: import wandb``, for
timm's own training scripts): half a CPU-second and W&B's import hooks in every job, ``logger=csv`` ones too.
:func:`timm_without_wandb` imports timm with ``wandb`` hidden, so W&B is imported only where a W&B logger (or
``splitinv audit --wandb``) asks for it; a later ``import wandb`` works as usual.
"""

from __future__ import annotations

import sys
import types


def timm_without_wandb() -> types.ModuleType:
    """The ``timm`` module, imported (on first use) without importing ``wandb``.

    timm's ``update_summary(..., log_wandb=True)`` (its training scripts' logging, which splitinv never calls)
    then has no ``wandb``; everything splitinv uses from timm is unaffected.
    """
    found = sys.modules.get("timm")
    if found is not None:
        return found
    hide = "wandb" not in sys.modules
    if hide:
        sys.modules["wandb"] = None  # type: ignore[assignment]  # `import wandb` raises ImportError
    try:
        import timm
    finally:
        if hide and sys.modules.get("wandb", ...) is None:
            del sys.modules["wandb"]
    return timm
