"""Defenses on the activations that cross the cut (``conf/defense/``); see :mod:`splitinv.defenses.base`.

Applied on the device at inference, none trained: additive noise (:class:`GaussianNoise`,
:class:`LaplaceNoise`), :class:`ActivationDropout`, :class:`Quantize`, :class:`TopK` sparsification,
:class:`ChannelPrune` and a :class:`RandomProjection` to fewer dimensions.

Trained with the network (``splitinv-train-defense``, :mod:`splitinv.defenses.train`; their state travels in
the victim checkpoint, :mod:`splitinv.defenses.checkpoint`): :class:`NoPeek`, :class:`AdversarialDecoder`
(against a proxy decoder) and a learned :class:`Bottleneck`.
"""

from splitinv.defenses.adversarial import AdversarialDecoder
from splitinv.defenses.base import Defense, NoDefense
from splitinv.defenses.bottleneck import Bottleneck
from splitinv.defenses.checkpoint import TrainedDefense, load_defense
from splitinv.defenses.common import SeededDefense
from splitinv.defenses.dropout import ActivationDropout
from splitinv.defenses.noise import GaussianNoise, LaplaceNoise
from splitinv.defenses.nopeek import NoPeek, distance_correlation
from splitinv.defenses.projection import RandomProjection
from splitinv.defenses.prune import ChannelPrune
from splitinv.defenses.quantize import Quantize
from splitinv.defenses.topk import TopK

__all__ = [
    "ActivationDropout",
    "AdversarialDecoder",
    "Bottleneck",
    "ChannelPrune",
    "Defense",
    "GaussianNoise",
    "LaplaceNoise",
    "NoDefense",
    "NoPeek",
    "Quantize",
    "RandomProjection",
    "SeededDefense",
    "TopK",
    "TrainedDefense",
    "distance_correlation",
    "load_defense",
]
