"""GANs: generators cut at named layers, the DCGAN that splitinv trains, inversion, and the membership audit.

``build_generator(name, weights)`` builds ``dcgan``, ``progan`` or ``biggan`` (weights from local files only);
a new generator is a :class:`Generator` subclass registered with :func:`register_generator`.

Two levels live here. ``base``, ``registry`` and the adapters (``dcgan``, ``progan``, ``biggan``) sit beside
victims: attacks import them (``attacks/gan_prior.py``). ``invert``, ``run``, ``train`` and ``audit`` sit
beside the run: they use attacks and metrics, and nothing below imports them.
"""

from splitinv.gans import biggan, dcgan, progan  # noqa: F401 - registers them and the dcgan discriminator
from splitinv.gans.base import LATENT, Generator, GeneratorCutPoint, State, sequential_stages
from splitinv.gans.registry import available_generators, build_generator, register_generator

__all__ = [
    "LATENT",
    "Generator",
    "GeneratorCutPoint",
    "State",
    "available_generators",
    "build_generator",
    "register_generator",
    "sequential_stages",
]
