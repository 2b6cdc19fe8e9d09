"""Attacks: one interface (``fit`` is optional; ``invert`` maps cut-point activations to [0, 1] images)."""

from splitinv.attacks.base import Attack, AttackerKnowledge
from splitinv.attacks.decoder import DecoderAttack, build_decoder

__all__ = ["Attack", "AttackerKnowledge", "DecoderAttack", "build_decoder"]
