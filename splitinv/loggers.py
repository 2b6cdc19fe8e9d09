"""The experiment loggers the configs build (``conf/logger/``): Lightning's, with what splitinv changes."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger


class WandbLogger(_LightningWandbLogger):
    """Lightning's ``WandbLogger``, without the ``anonymous`` setting it always passes to ``wandb.init``.

    Lightning sends ``anonymous=None`` even when nobody set it, and W&B (0.19 and later) answers every run
    with "The anonymous setting has no effect and will be removed", a warning about nothing in the run."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)
