"""Attacks: one protocol (:mod:`splitinv.attacks.base`): ``fit(context)``, ``invert(observations)``,
``artifacts()``."""

from splitinv.attacks.base import Attack, AttackContext, AttackerKnowledge, Reconstruction
from splitinv.attacks.dci import DCIAttack
from splitinv.attacks.decoder import DecoderAttack, build_decoder
from splitinv.attacks.gan_prior import GANPriorAttack
from splitinv.attacks.hybrid import HybridAttack
from splitinv.attacks.optimize import OptimizationAttack, OptimizeSettings
from splitinv.attacks.priors import BNStatsPrior
from splitinv.attacks.query_free import QueryFreeAttack
from splitinv.attacks.unsplit import UnSplitAttack

__all__ = [
    "Attack",
    "AttackContext",
    "AttackerKnowledge",
    "BNStatsPrior",
    "DCIAttack",
    "DecoderAttack",
    "GANPriorAttack",
    "HybridAttack",
    "OptimizationAttack",
    "OptimizeSettings",
    "QueryFreeAttack",
    "Reconstruction",
    "UnSplitAttack",
    "build_decoder",
]
