"""``photos``: real photos shipped with scikit-image and scikit-learn, split by source photo (offline)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from splitinv.data.base import (
    _EVAL_STREAM,
    ImageDataModule,
    _check_int,
    _rng,
    _uint8_to_float,
    _unknown,
)
from splitinv.errors import SplitinvError


class _PhotoCrops(Dataset):
    """Square crops of cached uint8 photos resized to image_size.

    ``crops`` given: fixed crops ``(photo, side_fraction, x_fraction, y_fraction)``; otherwise ``length``
    random crops drawn on the fly (photo uniform over ``photo_ids``, side fraction uniform in ``scale``,
    random position and, with ``flip``, a random horizontal flip) from torch's RNG: the seeded loader seeds
    each worker; with num_workers=0 it is the global torch seed (``L.seed_everything``).
    """

    def __init__(
        self,
        photos: dict[int, Tensor],
        image_size: int,
        channels: int,
        *,
        crops: Sequence[tuple[int, float, float, float]] | None = None,
        length: int = 0,
        scale: tuple[float, float] = (0.25, 1.0),
        flip: bool = False,
    ) -> None:
        self.photos, self.image_size, self.channels = photos, image_size, channels
        self.crops, self.length, self.scale, self.flip = crops, length, scale, flip
        self.photo_ids = sorted(photos)

    def __len__(self) -> int:
        return len(self.crops) if self.crops is not None else self.length

    def __getitem__(self, index: int) -> tuple[Tensor, int, int]:
        if self.crops is not None:
            photo, side, fx, fy = self.crops[index]
            flip = False
        else:
            r = torch.rand(5).tolist()
            photo = self.photo_ids[min(int(r[0] * len(self.photo_ids)), len(self.photo_ids) - 1)]
            side = self.scale[0] + (self.scale[1] - self.scale[0]) * r[1]
            fx, fy, flip = r[2], r[3], self.flip and r[4] < 0.5
        img = self.photos[photo]
        h, w = img.shape[-2:]
        s = max(1, round(side * min(h, w)))
        top, left = round(fy * (h - s)), round(fx * (w - s))
        image = _uint8_to_float(img[:, top : top + s, left : left + s], self.image_size, self.channels)
        return (image.flip(-1) if flip else image), photo, index


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        return getattr(skimage.data, name)()

    return load


def _motorcycle(side: int) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        return skimage.data.stereo_motorcycle()[side]

    return load


def _sklearn(filename: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_image

        return load_sample_image(filename)

    return load


# name -> (files that must be inside the installed package, loader returning an HxW[xC] array, group).
# Photos of one group (the stereo pair) always land on the same side of the split.
_PHOTO_TABLE: dict[str, tuple[tuple[str, ...], Callable[[], np.ndarray], str]] = {
    "astronaut": (("skimage", "astronaut.png"), _skimage("astronaut"), "astronaut"),
    "camera": (("skimage", "camera.png"), _skimage("camera"), "camera"),
    "chelsea": (("skimage", "chelsea.png"), _skimage("chelsea"), "chelsea"),
    "coffee": (("skimage", "coffee.png"), _skimage("coffee"), "coffee"),
    "rocket": (("skimage", "rocket.jpg"), _skimage("rocket"), "rocket"),
    "motorcycle_left": (
        ("skimage", "motorcycle_left.png", "motorcycle_right.png", "motorcycle_disp.npz"),
        _motorcycle(0),
        "motorcycle",
    ),
    "motorcycle_right": (
        ("skimage", "motorcycle_left.png", "motorcycle_right.png", "motorcycle_disp.npz"),
        _motorcycle(1),
        "motorcycle",
    ),
    "hubble_deep_field": (("skimage", "hubble_deep_field.jpg"), _skimage("hubble_deep_field"), "hubble"),
    "immunohistochemistry": (("skimage", "ihc.png"), _skimage("immunohistochemistry"), "ihc"),
    "retina": (("skimage", "retina.jpg"), _skimage("retina"), "retina"),
    "moon": (("skimage", "moon.png"), _skimage("moon"), "moon"),
    "coins": (("skimage", "coins.png"), _skimage("coins"), "coins"),
    "page": (("skimage", "page.png"), _skimage("page"), "page"),
    "clock": (("skimage", "clock_motion.png"), _skimage("clock"), "clock"),
    "text": (("skimage", "text.png"), _skimage("text"), "text"),
    "grass": (("skimage", "grass.png"), _skimage("grass"), "grass"),
    "gravel": (("skimage", "gravel.png"), _skimage("gravel"), "gravel"),
    "brick": (("skimage", "brick.png"), _skimage("brick"), "brick"),
    "china": (("sklearn", "china.jpg"), _sklearn("china.jpg"), "china"),
    "flower": (("sklearn", "flower.jpg"), _sklearn("flower.jpg"), "flower"),
}
_PHOTO_CACHE: dict[tuple[str, int], Tensor] = {}


def _package_dir(package: str) -> Path:
    if package == "skimage":
        import skimage.data

        return Path(skimage.data.__file__).parent
    import sklearn.datasets

    return Path(sklearn.datasets.__file__).parent / "images"


def available_photos() -> list[str]:
    """Names of the photos whose files ship inside the installed scikit-image / scikit-learn (no download)."""
    names = []
    for name, ((package, *files), _, _) in _PHOTO_TABLE.items():
        folder = _package_dir(package)
        if all((folder / f).is_file() for f in files):
            names.append(name)
    return names


def _load_photo(name: str, max_short: int) -> Tensor:
    """Photo ``name`` as uint8 RGB CHW, downscaled so its shorter side is at most ``max_short``; cached."""
    key = (name, max_short)
    if key not in _PHOTO_CACHE:
        array = np.asarray(_PHOTO_TABLE[name][1]())
        if array.dtype != np.uint8:
            array = (np.clip(array.astype(np.float64), 0, 1) * 255 + 0.5).astype(np.uint8)
        image = torch.from_numpy(np.array(array, dtype=np.uint8, copy=True))
        image = image[None] if image.ndim == 2 else image.permute(2, 0, 1)[:3]
        image = image.expand(3, -1, -1) if image.shape[0] == 1 else image
        h, w = image.shape[-2:]
        if min(h, w) > max_short:
            size = [max_short, round(w * max_short / h)] if h <= w else [round(h * max_short / w), max_short]
            image = TF.resize(image, size, antialias=True)
        _PHOTO_CACHE[key] = image.contiguous()
    return _PHOTO_CACHE[key]


class PhotosDataModule(ImageDataModule):
    """Real photos shipped with scikit-image and scikit-learn, split by source photo.

    A seeded choice of about a quarter of the photo groups (``n_eval_photos``, at least 2) are evaluation
    photos; evaluation items are ``n_eval`` fixed crops of them (seeded side fraction in ``crop_scale`` of the
    shorter side and position), auxiliary items are ``n_aux`` (default 2048) random crops of the other photos
    per epoch, flipped at random when ``augment``. Label = photo id (index in ``photo_names``).
    """

    NAME = "photos"
    DEFAULT_N_AUX = 2048

    def __init__(
        self,
        image_size: int = 64,
        channels: int = 3,
        n_aux: int | None = None,
        n_eval: int = 16,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
        augment: bool = True,
        photos: Sequence[str] | None = None,
        crop_scale: Sequence[float] = (0.25, 1.0),
        n_eval_photos: int | None = None,
    ) -> None:
        super().__init__(image_size, channels, n_aux, n_eval, batch_size, num_workers, seed, augment)
        available = available_photos()
        if photos is None:
            names = available
        else:
            names = list(dict.fromkeys(str(p) for p in photos))
            for p in names:
                if p not in available:
                    raise _unknown("photo (or not shipped with the installed packages)", p, available)
        lo, hi = (float(x) for x in crop_scale) if len(crop_scale) == 2 else (0.0, 0.0)
        if not 0.0 < lo <= hi <= 1.0:
            raise SplitinvError(
                f"crop_scale must be (low, high) with 0 < low <= high <= 1, got {crop_scale!r}"
            )
        self.photo_names, self.crop_scale = names, (lo, hi)
        self.groups = list(dict.fromkeys(_PHOTO_TABLE[n][2] for n in names))
        if len(self.groups) < 3:
            raise SplitinvError(
                f"photos needs at least 3 distinct photos (2 for evaluation), got {names}; "
                "pass more names in photos or leave it unset"
            )
        default = max(2, round(len(self.groups) / 4))
        self.n_eval_photos = (
            default if n_eval_photos is None else _check_int("n_eval_photos", n_eval_photos, 1)
        )
        if self.n_eval_photos >= len(self.groups):
            raise SplitinvError(
                f"n_eval_photos={self.n_eval_photos} leaves no auxiliary photo: use fewer than "
                f"{len(self.groups)}"
            )

    @property
    def num_classes(self) -> int:
        return len(self.photo_names)

    @property
    def class_names(self) -> list[str]:
        return list(self.photo_names)

    @property
    def root(self) -> str:
        return "builtin:skimage.data+sklearn.datasets"

    def eval_names(self) -> list[str]:
        """The photo each evaluation crop was cut from (several crops may share one)."""
        self.setup()
        return [str(key[0]) for key in self._eval_keys]

    @cached_property
    def eval_photos(self) -> list[str]:
        """Names of the evaluation photos (the seed's choice of whole groups)."""
        rng = _rng(self.seed, _EVAL_STREAM)
        chosen = {self.groups[i] for i in rng.permutation(len(self.groups))[: self.n_eval_photos]}
        return [n for n in self.photo_names if _PHOTO_TABLE[n][2] in chosen]

    def _build(self) -> None:
        max_short = math.ceil(self.image_size / self.crop_scale[0])
        photos = {i: _load_photo(n, max_short) for i, n in enumerate(self.photo_names)}
        eval_set = set(self.eval_photos)
        eval_ids = [i for i, n in enumerate(self.photo_names) if n in eval_set]
        self.aux_ids = [i for i, n in enumerate(self.photo_names) if n not in eval_set]
        rng = _rng(self.seed, _EVAL_STREAM + 2)  # crops: independent of how the photos were chosen
        order = rng.permutation(len(eval_ids))
        lo, hi = self.crop_scale
        crops = [
            (
                eval_ids[order[i % len(order)]],
                float(lo + (hi - lo) * rng.random()),
                float(rng.random()),
                float(rng.random()),
            )
            for i in range(self.n_eval)
        ]
        self.eval_ids = [c[0] for c in crops]
        self._eval_keys = [[self.photo_names[c[0]], *(round(x, 6) for x in c[1:])] for c in crops]
        self._eval = _PhotoCrops(
            {i: photos[i] for i in eval_ids}, self.image_size, self.channels, crops=crops
        )
        self._aux = _PhotoCrops(
            {i: photos[i] for i in self.aux_ids},
            self.image_size,
            self.channels,
            length=self.n_aux or self.DEFAULT_N_AUX,
            scale=self.crop_scale,
            flip=self.augment,
        )

    def describe(self) -> dict[str, Any]:
        import skimage
        import sklearn

        info = super().describe()
        info.update(
            photos=list(self.photo_names),
            eval_photos=self.eval_photos,
            crop_scale=list(self.crop_scale),
            versions={"skimage": skimage.__version__, "sklearn": sklearn.__version__},
        )
        return info
