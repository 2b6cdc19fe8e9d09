"""Lightning datamodules: the auxiliary images an attacker trains on and the fixed evaluation images.

Every dataset item is ``(image, label, index)``: ``image`` float32 CHW in [0, 1] at ``image_size`` x
``image_size`` with ``channels`` channels (grayscale repeated to 3 channels, RGB reduced to 1 by
luminance), ``label`` an int class id (-1 where unlabelled) and ``index`` the item's position within its
split, the key for per-sample results. The evaluation set is exactly ``n_eval`` items chosen by the seed
alone, transformed without randomness, and never overlaps the auxiliary set. ``train_dataloader`` serves
the auxiliary set (it doubles as the victim's training split), the other three loaders serve the
evaluation set.
"""

from __future__ import annotations

import difflib
import gzip
import hashlib
import importlib.resources
import json
import math
import os
import shutil
from collections.abc import Callable, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import lightning.pytorch as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from splitinv.errors import SplitinvError

__all__ = [
    "DATAMODULES",
    "CIFAR10DataModule",
    "FashionMNISTDataModule",
    "ImageDataModule",
    "ImageFolderDataModule",
    "PhotosDataModule",
    "available_photos",
    "build_datamodule",
    "default_data_root",
]

MIN_IMAGE_SIZE = 8
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
VENDORED_FASHION_MNIST = "assets/fashion_mnist_subset.npz"
_EVAL_STREAM, _AUX_STREAM = 0, 1  # independent numpy streams per seed


# ------------------------------------------------------------------------------------------------- helpers


def default_data_root() -> Path:
    """Folder for downloadable datasets: $SPLITINV_DATA, else ~/.cache/splitinv/data."""
    return Path(os.environ.get("SPLITINV_DATA") or Path.home() / ".cache" / "splitinv" / "data").expanduser()


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream])


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise SplitinvError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}"


def _hash(keys: Sequence[Any]) -> str:
    return hashlib.sha1(json.dumps(list(keys)).encode()).hexdigest()[:16]


def to_channels(image: Tensor, channels: int) -> Tensor:
    """Map a CHW image with 1, 3 or 4 channels to ``channels`` (repeat gray, RGB luminance, drop alpha)."""
    if image.shape[0] == 4:
        image = image[:3]
    if image.shape[0] == channels:
        return image
    if channels == 3:
        return image.expand(3, -1, -1).clone()
    return TF.rgb_to_grayscale(image, num_output_channels=1)


def _uint8_to_float(image: Tensor, image_size: int, channels: int) -> Tensor:
    """uint8 CHW -> float32 [0, 1] CHW at image_size (bilinear, antialiased) with ``channels`` channels.

    Resizing in uint8 is about twice as fast as in float and keeps the pixels on the 8-bit grid.
    """
    if image.shape[-2:] != (image_size, image_size):
        image = TF.resize(image, [image_size, image_size], antialias=True)
    return to_channels(image.float().div_(255.0), channels)


def _unknown(kind: str, name: str, valid: Sequence[str]) -> SplitinvError:
    close = difflib.get_close_matches(str(name), list(valid), n=1, cutoff=0.4)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return SplitinvError(f"unknown {kind} {name!r}{hint}; valid names: {', '.join(valid)}")


# ------------------------------------------------------------------------------------------------ datasets


class _TensorImages(Dataset):
    """Items ``ids`` of a uint8 image tensor (N, C, H, W), resized on the fly; optional random flip."""

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        ids: np.ndarray,
        image_size: int,
        channels: int,
        flip: bool = False,
    ) -> None:
        self.images, self.labels, self.ids = images, labels, np.asarray(ids, dtype=np.int64)
        self.image_size, self.channels, self.flip = image_size, channels, flip

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[Tensor, int, int]:
        row = int(self.ids[index])
        image = _uint8_to_float(self.images[row], self.image_size, self.channels)
        if self.flip and torch.rand(()) < 0.5:
            image = image.flip(-1)
        return image, int(self.labels[row]), index


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


# ---------------------------------------------------------------------------------------------------- base


class ImageDataModule(L.LightningDataModule):
    """Base datamodule: seeded, disjoint auxiliary and evaluation splits of one image source.

    Subclasses set ``NAME`` and implement ``_build`` (setting ``_aux``, ``_eval``, ``eval_ids``, ``aux_ids``
    and ``_eval_keys``) and ``num_classes``. ``setup`` builds once and is free to call again.
    """

    NAME: ClassVar[str] = ""

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
    ) -> None:
        super().__init__()
        self.image_size = _check_int("image_size", image_size, MIN_IMAGE_SIZE)
        if channels not in (1, 3):
            raise SplitinvError(f"channels must be 1 or 3, got {channels!r}")
        self.channels = int(channels)
        self.n_aux = None if n_aux is None else _check_int("n_aux", n_aux, 1)
        self.n_eval = _check_int("n_eval", n_eval, 1)
        self.batch_size = _check_int("batch_size", batch_size, 1)
        self.num_workers = _check_int("num_workers", num_workers, 0)
        self.seed = _check_int("seed", seed, 0)
        self.augment = bool(augment)
        self._aux: Dataset | None = None
        self._eval: Dataset | None = None
        self.eval_ids: list[int] = []  # source id of every evaluation item, in item order
        self.aux_ids: list[int] = []  # source id of every auxiliary item (photo ids for photos)
        self._eval_keys: list[Any] = []  # JSON-able identity of every evaluation item, hashed by describe

    # -- to implement
    def _build(self) -> None:
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        """Number of classes (labels are 0..num_classes-1, or -1 for unlabelled items)."""
        raise NotImplementedError

    # -- public
    @property
    def name(self) -> str:
        return self.NAME

    @property
    def root(self) -> str | None:
        return None

    def setup(self, stage: str | None = None) -> None:
        if self._aux is None or self._eval is None:
            self._build()

    def aux_dataset(self) -> Dataset:
        """Auxiliary images (the attacker's training data and the victim's training split)."""
        self.setup()
        assert self._aux is not None
        return self._aux

    def eval_dataset(self) -> Dataset:
        """The ``n_eval`` fixed evaluation images."""
        self.setup()
        assert self._eval is not None
        return self._eval

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            generator=generator,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.aux_dataset(), shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.eval_dataset(), shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.eval_dataset(), shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.eval_dataset(), shuffle=False)

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable identity of the data, for results files."""
        self.setup()
        info: dict[str, Any] = {
            "name": self.name,
            "root": self.root,
            "image_size": self.image_size,
            "channels": self.channels,
            "n_aux": len(self.aux_dataset()),
            "n_eval": self.n_eval,
            "seed": self.seed,
            "augment": self.augment,
            "num_classes": self.num_classes,
            "eval_hash": _hash(self._eval_keys),
        }
        if len(self.eval_ids) <= 1000:
            info["eval_ids"] = list(self.eval_ids)
        return info


# -------------------------------------------------------------------------------------------------- photos


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


# ------------------------------------------------------------------------------------------------- folders


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


# --------------------------------------------------------------------------------------------- torchvision


class _SplitDataModule(ImageDataModule):
    """A dataset with a train split (auxiliary) and a test split (evaluation) held as uint8 tensors."""

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        download: bool = True,
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
        self._root = Path(root).expanduser() if root is not None else default_data_root()
        self.download = bool(download)
        self.classes: list[str] = []

    @property
    def root(self) -> str:
        return str(self._root)

    @property
    def num_classes(self) -> int:
        return 10

    @property
    def class_names(self) -> list[str]:
        self.setup()
        return list(self.classes)

    def _load(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(train images N,C,H,W uint8, train labels, test images, test labels); sets self.classes."""
        raise NotImplementedError

    def prepare_data(self) -> None:
        self._ensure_files()

    def _ensure_files(self) -> None:
        pass

    def _build(self) -> None:
        x_train, y_train, x_test, y_test = self._load()
        if self.n_eval > len(x_test):
            raise SplitinvError(
                f"n_eval={self.n_eval} exceeds the {len(x_test)} test images of {self.name}: lower n_eval"
            )
        eval_ids = _rng(self.seed, _EVAL_STREAM).permutation(len(x_test))[: self.n_eval]
        aux_ids = np.arange(len(x_train))
        if self.n_aux is not None:
            if self.n_aux > len(x_train):
                raise SplitinvError(
                    f"n_aux={self.n_aux} exceeds the {len(x_train)} training images of "
                    f"{self.name}: lower n_aux or set it to null (all)"
                )
            aux_ids = np.sort(_rng(self.seed, _AUX_STREAM).choice(len(x_train), self.n_aux, replace=False))
        self.eval_ids, self.aux_ids = [int(i) for i in eval_ids], [int(i) for i in aux_ids]
        self._eval_keys = list(self.eval_ids)
        self._eval = _TensorImages(x_test, y_test, eval_ids, self.image_size, self.channels)
        self._aux = _TensorImages(
            x_train, y_train, aux_ids, self.image_size, self.channels, flip=self.augment
        )

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["splits"] = {"aux": "train", "eval": "test"}
        return info


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
        return f"package:splitinv/{VENDORED_FASHION_MNIST}" if self.vendored else str(self._root)

    @property
    def raw_folder(self) -> Path:
        return self._root / "FashionMNIST" / "raw"

    def _ensure_files(self) -> None:
        if self.vendored:
            return
        raw = self.raw_folder
        missing = [f for f in _FASHION_FILES if not (raw / f).is_file()]
        sources = {
            f: next((p for p in (raw / f"{f}.gz", DEBIAN_FASHION_MNIST / f"{f}.gz") if p.is_file()), None)
            for f in missing
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
        hint = (
            f"apt install dataset-fashion-mnist, or place {', '.join(_FASHION_FILES)} "
            f"(or their .gz) in {raw}, or use vendored=True (data=fashion_mnist_mini)"
        )
        if not self.download:
            raise SplitinvError(f"Fashion-MNIST not found in {raw} and download=False: {hint}")
        from torchvision.datasets import FashionMNIST

        try:
            FashionMNIST(str(self._root), train=True, download=True)
        except Exception as exc:  # any download failure: one actionable message
            raise SplitinvError(
                f"Fashion-MNIST not found in {raw} and download failed ({_one_line(exc)}): {hint}"
            ) from exc

    def _load(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        self.classes = list(_FASHION_CLASSES)
        if self.vendored:
            resource = importlib.resources.files("splitinv").joinpath(VENDORED_FASHION_MNIST)
            try:
                with resource.open("rb") as f, np.load(f) as z:
                    arrays = {
                        k: torch.from_numpy(z[k].astype(np.int64 if k[0] == "y" else np.uint8))
                        for k in ("x_train", "y_train", "x_test", "y_test")
                    }
            except (FileNotFoundError, KeyError) as exc:
                raise SplitinvError(
                    f"the vendored Fashion-MNIST subset splitinv/{VENDORED_FASHION_MNIST} is "
                    f"missing or broken ({_one_line(exc)}): reinstall splitinv"
                ) from exc
            return (
                arrays["x_train"][:, None],
                arrays["y_train"],
                arrays["x_test"][:, None],
                arrays["y_test"],
            )
        self._ensure_files()
        from torchvision.datasets import FashionMNIST

        out = []
        for train in (True, False):
            ds = FashionMNIST(str(self._root), train=train, download=False)
            out += [ds.data[:, None], ds.targets]
        return out[0], out[1], out[2], out[3]

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["vendored"] = self.vendored
        return info


class CIFAR10DataModule(_SplitDataModule):
    """CIFAR-10 (32x32 RGB, resized to image_size): aux = train split, eval = seeded test images.

    Expects torchvision's layout ``root``/cifar-10-batches-py (root defaults to $SPLITINV_DATA or
    ~/.cache/splitinv/data); downloads it when absent and ``download``.
    """

    NAME = "cifar10"

    def _ensure_files(self) -> None:
        from torchvision.datasets import CIFAR10

        folder = self._root / CIFAR10.base_folder
        names = [n for n, _ in CIFAR10.train_list + CIFAR10.test_list] + [CIFAR10.meta["filename"]]
        if all((folder / n).is_file() for n in names):
            return
        hint = f"place the extracted python batches (from {CIFAR10.filename}) in {folder} or run once online"
        if not self.download:
            raise SplitinvError(f"CIFAR-10 not found in {folder} and download=False: {hint}")
        try:
            CIFAR10(str(self._root), train=True, download=True)
        except Exception as exc:  # any download failure: one actionable message
            raise SplitinvError(
                f"CIFAR-10 not found in {folder} and download failed ({_one_line(exc)}): {hint}"
            ) from exc

    def _load(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        from torchvision.datasets import CIFAR10

        self._ensure_files()
        out = []
        for train in (True, False):
            try:
                ds = CIFAR10(str(self._root), train=train, download=False)
            except RuntimeError as exc:
                raise SplitinvError(
                    f"CIFAR-10 files in {self._root / CIFAR10.base_folder} are corrupted "
                    f"({_one_line(exc)}): delete that folder and download again"
                ) from exc
            out += [
                torch.from_numpy(ds.data).permute(0, 3, 1, 2),
                torch.as_tensor(ds.targets, dtype=torch.int64),
            ]
            self.classes = list(ds.classes)
        return out[0], out[1], out[2], out[3]


# ------------------------------------------------------------------------------------------------ registry

DATAMODULES: dict[str, type[ImageDataModule]] = {
    cls.NAME: cls
    for cls in (PhotosDataModule, ImageFolderDataModule, FashionMNISTDataModule, CIFAR10DataModule)
}


def build_datamodule(name: str, **kwargs: Any) -> ImageDataModule:
    """Instantiate the datamodule registered as ``name`` with ``kwargs``."""
    if name not in DATAMODULES:
        raise _unknown("dataset", name, sorted(DATAMODULES))
    return DATAMODULES[name](**kwargs)
