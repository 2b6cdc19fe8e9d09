"""``fashion_mnist``: Fashion-MNIST from a local copy, Debian's package or a download, and ``vendored=True``:
the 6000 + 1000 image subset shipped inside splitinv (``data=fashion_mnist_mini``)."""

from __future__ import annotations

import gzip
import importlib.resources
import os
import shutil
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from splitinv.data.base import _one_line, _SplitDataModule
from splitinv.errors import SplitinvError

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
VENDORED_FASHION_MNIST = "assets/fashion_mnist_subset.npz"  # relative to the splitinv package


_FASHION_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


class FashionMNISTDataModule(_SplitDataModule):
    """Fashion-MNIST (28x28 gray, resized to image_size): aux = train split, eval = seeded test images.

    Files are looked for in ``root``/FashionMNIST/raw (root defaults to $SPLITINV_DATA or
    ~/.cache/splitinv/data); if absent they are unpacked from Debian's dataset-fashion-mnist copy, else
    downloaded when ``download``. ``vendored=True`` uses the 6000 + 1000 image subset shipped in the package.
    """

    NAME = "fashion_mnist"
    # what differs between Fashion-MNIST and MNIST (splitinv.data.mnist subclasses this): torchvision's class,
    # the vendored subset, the class names, a Debian copy and how to get the files
    TORCHVISION_CLASS = "FashionMNIST"
    VENDORED = VENDORED_FASHION_MNIST
    CLASSES: ClassVar[list[str]] = _FASHION_CLASSES
    HAS_DEBIAN_COPY = True  # Debian packages Fashion-MNIST (dataset-fashion-mnist), not MNIST
    MINI_CONFIG = "fashion_mnist_mini"

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        download: bool = True,
        vendored: bool = False,
        image_size: int = 64,
        channels: int = 3,
        n_aux: int | None = None,
        n_eval: int = 16,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
        augment: bool = True,
    ) -> None:
        super().__init__(
            root, download, image_size, channels, n_aux, n_eval, batch_size, num_workers, seed, augment
        )
        self.vendored = bool(vendored)

    @property
    def root(self) -> str:
        return f"package:splitinv/{self.VENDORED}" if self.vendored else str(self._root)

    @property
    def raw_folder(self) -> Path:
        return self._root / self.TORCHVISION_CLASS / "raw"

    def _ensure_files(self) -> None:
        if self.vendored:
            return
        raw = self.raw_folder
        missing = [f for f in _FASHION_FILES if not (raw / f).is_file()]
        # the module-level path, read now (tests point it elsewhere)
        places = [raw] + ([DEBIAN_FASHION_MNIST] if self.HAS_DEBIAN_COPY else [])
        sources = {
            f: next((p / f"{f}.gz" for p in places if (p / f"{f}.gz").is_file()), None) for f in missing
        }
        if missing and all(sources.values()):
            raw.mkdir(parents=True, exist_ok=True)
            for name, src in sources.items():
                tmp = raw / f".{name}.{os.getpid()}.tmp"
                with gzip.open(src, "rb") as fin, open(tmp, "wb") as fout:
                    shutil.copyfileobj(fin, fout, length=1 << 20)
                os.replace(tmp, raw / name)
            return
        if not missing:
            return
        debian = "apt install dataset-fashion-mnist, or " if self.HAS_DEBIAN_COPY else ""
        hint = (
            f"{debian}place {', '.join(_FASHION_FILES)} (or their .gz) in {raw}, or use vendored=True "
            f"(data={self.MINI_CONFIG})"
        )
        what = self.TORCHVISION_CLASS
        if not self.download:
            raise SplitinvError(f"{what} not found in {raw} and download=False: {hint}")
        try:
            self._torchvision(train=True, download=True)
        except Exception as exc:  # any download failure: one actionable message
            raise SplitinvError(
                f"{what} not found in {raw} and download failed ({_one_line(exc)}): {hint}"
            ) from exc

    def _torchvision(self, train: bool, download: bool) -> Any:
        import torchvision.datasets

        return getattr(torchvision.datasets, self.TORCHVISION_CLASS)(
            str(self._root), train=train, download=download
        )

    def _load(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        self.classes = list(self.CLASSES)
        if self.vendored:
            resource = importlib.resources.files("splitinv").joinpath(self.VENDORED)
            try:
                with resource.open("rb") as f, np.load(f) as z:
                    arrays = {
                        k: torch.from_numpy(z[k].astype(np.int64 if k[0] == "y" else np.uint8))
                        for k in ("x_train", "y_train", "x_test", "y_test")
                    }
            except (FileNotFoundError, KeyError) as exc:
                raise SplitinvError(
                    f"the vendored {self.TORCHVISION_CLASS} subset splitinv/{self.VENDORED} is "
                    f"missing or broken ({_one_line(exc)}): reinstall splitinv"
                ) from exc
            return (
                arrays["x_train"][:, None],
                arrays["y_train"],
                arrays["x_test"][:, None],
                arrays["y_test"],
            )
        self._ensure_files()
        out = []
        for train in (True, False):
            ds = self._torchvision(train=train, download=False)
            out += [ds.data[:, None], ds.targets]
        return out[0], out[1], out[2], out[3]

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["vendored"] = self.vendored
        return info
