"""GANs: generators cut at named layers, the DCGAN that splitinv trains, inversion, and the membership audit.

``build_generator(name, weights)`` builds ``dcgan``, ``progan`` or ``biggan`` (weights from local files only);
a new generator is a :class:`Generator` subclass registered with :func:`register_generator`.
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
