"""Lightning datamodules: the auxiliary images an attacker trains on and the fixed evaluation images.

One file per source over a small base (:mod:`splitinv.data.base`: :class:`ImageDataModule`, the item format,
the seeded disjoint splits): ``photos``, ``imagefolder``, ``fashion_mnist`` and ``mnist`` (``vendored=True``:
the subsets shipped inside splitinv), ``cifar10``, and ``noise`` (Gaussian images: auxiliary data only).
:func:`build_datamodule` builds one by name; configs name the classes (``_target_:
splitinv.data.FashionMNISTDataModule``).
"""

from __future__ import annotations

from typing import Any

from splitinv.data.base import MIN_IMAGE_SIZE, ImageDataModule, default_data_root, to_channels
from splitinv.data.cifar10 import CIFAR10DataModule
from splitinv.data.fashion_mnist import DEBIAN_FASHION_MNIST, VENDORED_FASHION_MNIST, FashionMNISTDataModule
from splitinv.data.imagefolder import ImageFolderDataModule
from splitinv.data.mnist import VENDORED_MNIST, MNISTDataModule
from splitinv.data.noise import NoiseDataModule
from splitinv.data.photos import PhotosDataModule, available_photos
from splitinv.registry import Registry

__all__ = [
    "DATAMODULES",
    "DEBIAN_FASHION_MNIST",
    "MIN_IMAGE_SIZE",
    "VENDORED_FASHION_MNIST",
    "VENDORED_MNIST",
    "CIFAR10DataModule",
    "FashionMNISTDataModule",
    "ImageDataModule",
    "ImageFolderDataModule",
    "MNISTDataModule",
    "NoiseDataModule",
    "PhotosDataModule",
    "available_photos",
    "build_datamodule",
    "default_data_root",
    "to_channels",
]

# name (the class's NAME) -> datamodule class; a new source is one module, one line here and one config
DATAMODULES: Registry[type[ImageDataModule]] = Registry("dataset")
for _cls in (
    PhotosDataModule,
    ImageFolderDataModule,
    FashionMNISTDataModule,
    MNISTDataModule,
    CIFAR10DataModule,
    NoiseDataModule,
):
    DATAMODULES.register(_cls.NAME, _cls)
del _cls


def build_datamodule(name: str, **kwargs: Any) -> ImageDataModule:
    """Instantiate the datamodule registered as ``name`` with ``kwargs``."""
    return DATAMODULES.get(name)(**kwargs)
