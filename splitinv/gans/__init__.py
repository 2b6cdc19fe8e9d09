"""GANs: generators cut at named layers, the DCGAN that splitinv trains, and GAN inversion.

``build_generator(name, weights)`` builds ``dcgan``, ``progan`` or ``biggan`` (weights from local files only);
a new generator is a :class:`Generator` subclass registered with :func:`register_generator`. The built-in
adapters are lazy registry entries (:mod:`splitinv.gans.registry`): importing this package imports none of
them, building one by name imports its module.

Two levels live here. ``base``, ``registry`` and the adapters (``dcgan``, ``progan``, ``biggan``) sit beside
victims: attacks import them (``attacks/gan_prior.py``). ``invert``, ``run`` and ``train`` sit beside the run:
they use attacks and metrics, and nothing below imports them. The identity membership audit, which samples
generators, is its own package, :mod:`splitinv.audit`.
"""

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
