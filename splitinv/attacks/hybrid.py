"""Hybrid attack (as GLASS++ and DRAG++ do): a learned decoder gives the start, optimisation refines it.

The attacker queries the head with auxiliary images to train He et al.'s inverse network (or reuses a
``decoder.pt`` written by an ``attack=decoder`` run, ``attack.decoder_checkpoint=PATH``), then, knowing the
head's weights, runs the per-image optimisation of :mod:`splitinv.attacks.optimize` from the decoder's output.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from splitinv.attacks.base import AttackContext, Writer
from splitinv.attacks.decoder import DecoderAttack
from splitinv.attacks.optimize import OptimizationAttack
from splitinv.errors import SplitinvError

DECODER_KEYS = ("loss", "perceptual_weight", "lr", "amsgrad", "weight_decay", "width")


class HybridAttack(OptimizationAttack):
    """Decoder first (trained here, or loaded from ``decoder_checkpoint``), then per-image optimisation."""

    name = "hybrid"
    budget = ("attack.steps", "trainer.max_epochs", "data.n_aux")  # aux.n_aux for another auxiliary set

    def __init__(
        self,
        name: str = "hybrid",
        decoder_checkpoint: str | None = None,
        decoder: Mapping[str, Any] | None = None,
        aux_data: str = "same",
        defense_aware: bool = True,
        **kwargs: Any,
    ) -> None:
        kwargs.pop("init", None)  # the start is the decoder's output
        if aux_data == "none":
            raise SplitinvError(
                "the hybrid attack's decoder learns from auxiliary data: set attack.aux_data=same or other."
            )
        super().__init__(name=name, aux_data=aux_data, defense_aware=defense_aware, **kwargs)
        settings = dict(decoder or {})
        unknown = sorted(set(settings) - set(DECODER_KEYS))
        if unknown:
            raise SplitinvError(
                f"unknown setting attack.decoder.{unknown[0]}: valid settings are {', '.join(DECODER_KEYS)}."
            )
        self.decoder_checkpoint = str(decoder_checkpoint) if decoder_checkpoint else None
        if self.decoder_checkpoint and not Path(self.decoder_checkpoint).is_file():
            raise SplitinvError(
                f"attack.decoder_checkpoint {self.decoder_checkpoint} does not exist: train one with "
                "attack=decoder first, or set attack.decoder_checkpoint=null to train it in this job."
            )
        self.decoder_attack = DecoderAttack(
            **settings,
            aux_data=aux_data,
            checkpoint=self.decoder_checkpoint,
            name=f"{name}-decoder",
            defense_aware=defense_aware,
        )
        self.decoder: nn.Module | None = None
        # the decoder trains from (image, observation) pairs only: the run's activation cache can feed it
        self.learns_from_observations = self.decoder_checkpoint is None

    def fit(self, context: AttackContext) -> dict[str, Any]:
        """Train (or load) the decoder from the context's data, keep the device side, fix the schedule."""
        super().fit(context)
        try:
            stats = self.decoder_attack.fit(context)
        except RuntimeError as err:  # load_state_dict: a decoder built by another splitinv version
            if not self.decoder_checkpoint:
                raise
            first = str(err).strip().splitlines()[-1].strip()
            raise SplitinvError(
                f"decoder checkpoint {self.decoder_checkpoint} does not load into the decoder this splitinv "
                f"builds ({first}): retrain it with attack=decoder."
            ) from err
        self.decoder = self.decoder_attack.decoder
        assert self.decoder is not None and self.client is not None
        image_shape = tuple(context.image_shape)
        if tuple(self.decoder.image_shape) != image_shape:
            raise SplitinvError(
                f"decoder {self.decoder_checkpoint} makes images of shape {tuple(self.decoder.image_shape)} "
                f"but this run's images are {image_shape}: use a decoder trained for this data."
            )
        client = self.client
        device = next(iter(client.parameters()), torch.empty(0)).device
        with torch.no_grad():
            was_training = client.training
            client.eval()
            shape = tuple(client(torch.zeros(1, *image_shape, device=device)).shape[1:])
            client.train(was_training)
        if shape != tuple(self.decoder.feature_shape):
            raise SplitinvError(
                f"decoder {self.decoder_checkpoint} was trained on features of shape "
                f"{tuple(self.decoder.feature_shape)} but the head at this cut gives {shape}: "
                "use a decoder from a run at the same cut point."
            )
        return stats

    def _initial(
        self, features: Tensor, index: Tensor, shape: tuple[int, ...], device: torch.device
    ) -> Tensor:
        if self.decoder is None:
            raise SplitinvError("the hybrid attack was not fitted: call fit(context) before invert().")
        self.decoder.to(device)
        return self.decoder_attack.invert(features).images.to(device).float()

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.pop("init", None)
        info.pop("init_value", None)
        info["init"] = "decoder"
        info["decoder_checkpoint"] = self.decoder_checkpoint
        info["decoder"] = {k: v for k, v in self.decoder_attack.settings.items()}
        return info

    def artifacts(self) -> dict[str, Writer]:
        """The decoder (``decoder.pt``, loadable by ``attack.decoder_checkpoint``)."""
        return self.decoder_attack.artifacts()
