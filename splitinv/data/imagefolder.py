"""``imagefolder``: any folder tree ``root/<class>/<image>`` (e.g. ImageNet val) or a flat image folder."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import v2

from splitinv.data.base import _AUX_STREAM, _EVAL_STREAM, ImageDataModule, _rng, to_channels
from splitinv.errors import SplitinvError


class _FileImages(Dataset):
    """Items ``ids`` of a list of (path, label) image files, loaded as RGB, passed through ``transform``."""

    def __init__(
        self, samples: Sequence[tuple[str, int]], ids: np.ndarray, transform: Callable, channels: int
    ) -> None:
        self.samples, self.ids = samples, np.asarray(ids, dtype=np.int64)
        self.transform, self.channels = transform, channels

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[Tensor, int, int]:
        from torchvision.datasets.folder import pil_loader

        path, label = self.samples[int(self.ids[index])]
        image = self.transform(pil_loader(path))
        return to_channels(image, self.channels), int(label), index


class ImageFolderDataModule(ImageDataModule):
    """Any image folder tree: ``root/<class>/<image>`` (torchvision ImageFolder) or a flat folder of images.

    A seeded permutation puts ``n_eval`` images in the evaluation set (shorter side resized to
    round(image_size * 256 / 224), then centre crop) and the rest (or ``n_aux`` of them) in the auxiliary set
    (RandomResizedCrop + flip when ``augment``). A flat folder has no classes: labels are -1.
    """

    NAME = "imagefolder"

    def __init__(
        self,
        root: str | os.PathLike,
        image_size: int = 64,
        channels: int = 3,
        n_aux: int | None = None,
        n_eval: int = 16,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
        augment: bool = True,
    ) -> None:
        super().__init__(image_size, channels, n_aux, n_eval, batch_size, num_workers, seed, augment)
        self._root = Path(root).expanduser()
        self.classes: list[str] = []
        self.samples: list[tuple[str, int]] = []

    @property
    def root(self) -> str:
        return str(self._root)

    @property
    def num_classes(self) -> int:
        self.setup()
        return len(self.classes)

    @property
    def class_names(self) -> list[str]:
        self.setup()
        return list(self.classes)

    def _scan(self) -> None:
        from torchvision.datasets import ImageFolder
        from torchvision.datasets.folder import IMG_EXTENSIONS

        root = self._root
        if not root.is_dir():
            raise SplitinvError(
                f"imagefolder root {root} is not a folder: point root at a folder of class "
                "subfolders holding images (root/<class>/<image>.png, like ImageNet val)"
            )
        try:
            folder = ImageFolder(str(root))
            self.classes, self.samples = list(folder.classes), list(folder.samples)
        except FileNotFoundError:
            files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)
            self.classes, self.samples = [], [(str(p), -1) for p in files]
        if not self.samples:
            raise SplitinvError(
                f"imagefolder root {root} holds no images ({', '.join(IMG_EXTENSIONS)}): put "
                "images in class subfolders root/<class>/ or directly in root"
            )

    def _build(self) -> None:
        self._scan()
        n = len(self.samples)
        if self.n_eval >= n:
            raise SplitinvError(
                f"imagefolder root {self._root} has {n} images, too few for n_eval={self.n_eval} "
                "plus at least one auxiliary image: lower n_eval or add images"
            )
        perm = _rng(self.seed, _EVAL_STREAM).permutation(n)
        eval_ids, rest = perm[: self.n_eval], perm[self.n_eval :]
        if self.n_aux is not None and self.n_aux < len(rest):
            rest = _rng(self.seed, _AUX_STREAM).choice(rest, self.n_aux, replace=False)
        aux_ids = np.sort(rest)
        self.eval_ids, self.aux_ids = [int(i) for i in eval_ids], [int(i) for i in aux_ids]
        self._eval_keys = [os.path.relpath(self.samples[i][0], self._root) for i in self.eval_ids]
        size = self.image_size
        eval_tf = v2.Compose(
            [
                v2.ToImage(),
                v2.Resize(round(size * 256 / 224), antialias=True),
                v2.CenterCrop(size),
                v2.ToDtype(torch.float32, scale=True),
            ]
        )
        aux_tf = eval_tf
        if self.augment:
            aux_tf = v2.Compose(
                [
                    v2.ToImage(),
                    v2.RandomResizedCrop(size, antialias=True),
                    v2.RandomHorizontalFlip(),
                    v2.ToDtype(torch.float32, scale=True),
                ]
            )
        self._eval = _FileImages(self.samples, eval_ids, eval_tf, self.channels)
        self._aux = _FileImages(self.samples, aux_ids, aux_tf, self.channels)
