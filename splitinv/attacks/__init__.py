"""Attacks: one interface (``fit`` is optional; ``invert`` maps cut-point activations to [0, 1] images)."""

from splitinv.attacks.base import Attack, AttackerKnowledge
from splitinv.attacks.dci import DCIAttack
from splitinv.attacks.decoder import DecoderAttack, build_decoder
from splitinv.attacks.gan_prior import GANPriorAttack, optimize_state
from splitinv.attacks.hybrid import HybridAttack
from splitinv.attacks.optimize import OptimizationAttack, OptimizeSettings
from splitinv.attacks.priors import BNStatsPrior

__all__ = [
    "Attack",
    "AttackerKnowledge",
    "BNStatsPrior",
    "DCIAttack",
    "DecoderAttack",
    "GANPriorAttack",
    "HybridAttack",
    "OptimizationAttack",
    "OptimizeSettings",
    "build_decoder",
    "optimize_state",
]
