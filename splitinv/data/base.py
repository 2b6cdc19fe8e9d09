"""The shared base of the datamodules: :class:`ImageDataModule`, the helpers and the datasets they share.

Every dataset item is ``(image, label, index)``: ``image`` float32 CHW in [0, 1] at ``image_size`` x
``image_size`` with ``channels`` channels (grayscale repeated to 3 channels, RGB reduced to 1 by
luminance), ``label`` an int class id (-1 where unlabelled) and ``index`` the item's position within its
split, the key for per-sample results. The evaluation set is exactly ``n_eval`` items chosen by the seed
alone, transformed without randomness, and never overlaps the auxiliary set. ``train_dataloader`` serves
the auxiliary set (it doubles as the victim's training split), the other three loaders serve the
evaluation set.

One file per source builds on this: ``photos``, ``imagefolder``, ``fashion_mnist``, ``cifar10``.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import lightning.pytorch as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import functional as TF

from splitinv.errors import SplitinvError

MIN_IMAGE_SIZE = 11  # SSIM's 11x11 Gaussian window (metrics.SSIM_WIN): smaller images cannot be scored
_EVAL_STREAM, _AUX_STREAM = 0, 1  # independent numpy streams per seed
# image files read from folders: torchvision's extensions, and GIF (its first frame)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")


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


def read_image(path: str | os.PathLike) -> Any:
    """An image file as an 8-bit RGB PIL image, as a viewer shows it, or a one-line error naming the file.

    The first frame of an animation (GIF, APNG, WebP); EXIF orientation applied; 16-bit grayscale scaled to
    8 bit (``convert("RGB")`` would clip it to white); palette, CMYK and YCbCr converted; transparency (LA,
    RGBA, PA, a palette's or PNG's transparent colour) composited on white. Modes whose range cannot be told
    (32-bit float) are refused in one line.
    """
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as image:
            image.seek(0)
            image.load()
            return _to_rgb(ImageOps.exif_transpose(image), path)
    except SplitinvError:
        raise
    except Exception as err:  # PIL raises many kinds (OSError, SyntaxError, struct.error...) for bad files
        raise unreadable_image(path, err) from err


def unreadable_image(path: str | os.PathLike, err: BaseException) -> SplitinvError:
    """The one-line error for an image file that PIL cannot open or decode."""
    return SplitinvError(
        f"cannot read image {path} ({_one_line(err)}): it is corrupt, truncated, empty or not an image; "
        "remove or replace it."
    )


def _to_rgb(image: Any, path: str | os.PathLike) -> Any:
    from PIL import Image

    mode = image.mode
    if mode == "F":
        raise SplitinvError(
            f"image {path} is a 32-bit float image, whose range splitinv cannot tell: save it as 8 or 16 bit."
        )
    if mode.startswith("I"):  # I;16, I;16B, I;16L (16-bit PNG/TIFF), I (32-bit integer, 16-bit PNGs before)
        values = np.asarray(image).astype(np.float64)
        high = float(values.max()) if values.size else 0.0
        if (values.size and float(values.min()) < 0) or high > 65535:
            raise SplitinvError(
                f"image {path} holds {mode} values outside 0..65535: save it as an 8- or 16-bit image."
            )
        if mode.startswith("I;16") or high > 255:
            values = values / 257.0  # 65535 -> 255
        image = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L")
    if image.mode in ("LA", "La", "PA", "RGBA", "RGBa") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def _unknown(kind: str, name: str, valid: Sequence[str]) -> SplitinvError:
    close = difflib.get_close_matches(str(name), list(valid), n=1, cutoff=0.4)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return SplitinvError(f"unknown {kind} {name!r}{hint}; valid names: {', '.join(valid)}")


# ------------------------------------------------------------------------------------------------ datasets


# describe() keys that say which images are evaluated, not which are auxiliary (aux_describe drops them)
EVAL_ONLY_KEYS = ("n_eval", "eval_hash", "eval_ids", "eval_names", "eval_root", "eval_list", "eval_photos")


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
        if (
            not isinstance(image_size, bool)
            and isinstance(image_size, (int, np.integer))
            and 0 < image_size < MIN_IMAGE_SIZE
        ):
            raise SplitinvError(
                f"image_size must be an integer >= {MIN_IMAGE_SIZE}, got {image_size}: SSIM scores images "
                f"of at least {MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE} px (its Gaussian window); use a larger size."
            )
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
        self._held_out: Dataset | None = None  # the whole split the evaluation images come from, if any
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

    def eval_names(self) -> list[str]:
        """A name per evaluation item, in item order (samples.csv's ``image``): the file it was read from,
        relative to the data's root, or its id in its source (``test/1234``: a dataset's test item 1234)."""
        self.setup()
        return [str(k) if isinstance(k, str) else f"{self.name}/{k[-1] if isinstance(k, list) else k}"
                for k in self._eval_keys]  # fmt: skip

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

    def held_out_dataset(self) -> Dataset | None:
        """The whole labelled split the evaluation images are drawn from (a dataset's test split), for
        measuring a defended split's utility beyond the ``n_eval`` images; None where there is none."""
        self.setup()
        return self._held_out

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
            info["eval_names"] = self.eval_names()  # samples.csv's image column, in its order of indices
        return info

    def aux_describe(self) -> dict[str, Any]:
        """What the auxiliary images depend on: :meth:`describe` without the evaluation's keys, with a hash
        of the auxiliary items' source ids. The activation cache is keyed on it, so one cache serves every
        ``n_eval`` (and evaluation list or folder) that leaves the auxiliary set as it is: a dataset's train
        split, or an image folder with a separate ``eval_root``."""
        info = {k: v for k, v in self.describe().items() if k not in EVAL_ONLY_KEYS}
        info["aux_hash"] = _hash(self.aux_ids)
        return info


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
        self._held_out = _TensorImages(x_test, y_test, np.arange(len(x_test)), self.image_size, self.channels)
        self._aux = _TensorImages(
            x_train, y_train, aux_ids, self.image_size, self.channels, flip=self.augment
        )

    def eval_names(self) -> list[str]:
        self.setup()
        return [f"test/{i}" for i in self.eval_ids]

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["splits"] = {"aux": "train", "eval": "test"}
        return info
