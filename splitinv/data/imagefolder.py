"""``imagefolder``: any folder tree ``root/<class>/<image>`` (e.g. ImageNet val) or a flat image folder, with
the evaluation images drawn from it, from a separate folder (``eval_root``), or listed in a file
(``eval_list``)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import v2

from splitinv.data.base import (
    _AUX_STREAM,
    _EVAL_STREAM,
    IMAGE_EXTENSIONS,
    ImageDataModule,
    _rng,
    read_image,
    to_channels,
    unreadable_image,
)
from splitinv.errors import SplitinvError

log = logging.getLogger(__name__)


def _first(names: Sequence[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (", ..." if len(names) > n else "")


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
        path, label = self.samples[int(self.ids[index])]
        image = self.transform(read_image(path))
        return to_channels(image, self.channels), int(label), index


class ImageFolderDataModule(ImageDataModule):
    """Any image folder tree: ``root/<class>/<image>`` (torchvision ImageFolder) or a flat folder of images.

    A seeded permutation puts ``n_eval`` images in the evaluation set (shorter side resized to
    round(image_size * 256 / 224), then centre crop) and the rest (or ``n_aux`` of them) in the auxiliary set
    (RandomResizedCrop + flip when ``augment``). A flat folder has no classes: labels are -1.

    ``eval_root``: a separate folder (same layout) whose images are the evaluation set (a seeded choice of
    ``n_eval``); ``root`` then serves auxiliary images only. ``eval_list``: a text file naming the evaluation
    images, one per line (relative to ``root`` or absolute; ``#`` comments), the first ``n_eval`` in file
    order; they leave the auxiliary set. Labels of a separate folder follow ``root``'s class names.
    ``role``: ``data`` or ``aux`` (``aux=imagefolder``), the settings its messages name.
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
        eval_root: str | os.PathLike | None = None,
        eval_list: str | os.PathLike | None = None,
        role: str = "data",
    ) -> None:
        super().__init__(image_size, channels, n_aux, n_eval, batch_size, num_workers, seed, augment)
        self.role = str(role)  # the config group it came from (data, or aux=imagefolder): what messages name
        if eval_root is not None and eval_list is not None:
            raise SplitinvError("set one of data.eval_root (a folder) and data.eval_list (a file), not both.")
        self._root = Path(root).expanduser()
        self.eval_root = None if eval_root is None else Path(eval_root).expanduser()
        self.eval_list = None if eval_list is None else Path(eval_list).expanduser()
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
        self.classes, self.samples, self._skipped = self._scan_folder(self._root, "root")

    def _scan_folder(self, root: Path, key: str) -> tuple[list[str], list[tuple[str, int]], list[str]]:
        """(classes, (path, label) samples, skipped non-image files) of one folder tree or flat folder."""
        from torchvision.datasets import ImageFolder

        if not root.is_dir():
            raise SplitinvError(
                f"imagefolder {key} {root} is not a folder: point data.{key} at a folder of class "
                "subfolders holding images (root/<class>/<image>.png, like ImageNet val)"
            )
        skipped: list[str] = []

        def is_image(path: str) -> bool:
            if path.lower().endswith(IMAGE_EXTENSIONS):
                return True
            if not Path(path).name.startswith("."):  # hidden files (.DS_Store) go unmentioned
                skipped.append(os.path.relpath(path, root))
            return False

        try:
            folder = ImageFolder(str(root), is_valid_file=is_image)
            classes, samples = list(folder.classes), list(folder.samples)
        except FileNotFoundError:
            skipped.clear()
            files = sorted(p for p in root.iterdir() if p.is_file() and is_image(str(p)))
            classes, samples = [], [(str(p), -1) for p in files]
        if not samples:
            raise SplitinvError(
                f"imagefolder {key} {root} holds no images ({', '.join(IMAGE_EXTENSIONS)}): put "
                "images in class subfolders root/<class>/ or directly in root"
            )
        return classes, samples, sorted(set(skipped))

    def _split_ids(self) -> tuple[np.ndarray, np.ndarray]:
        """(evaluation ids, auxiliary pool ids) into ``self.samples``: drawn from root, or from eval_root /
        eval_list (whose images are appended to, or looked up in, ``self.samples``)."""
        n = len(self.samples)
        if self.eval_root is not None:
            _, extra, skipped = self._scan_folder(self.eval_root, "eval_root")
            own = {name: i for i, name in enumerate(self.classes)}
            names = [Path(p).parent.name for p, _ in extra]
            extra = [
                (p, own.get(c, -1) if label >= 0 else -1) for (p, label), c in zip(extra, names, strict=True)
            ]
            if self.n_eval > len(extra):
                raise SplitinvError(
                    f"imagefolder eval_root {self.eval_root} has {len(extra)} images, fewer than "
                    f"n_eval={self.n_eval}: lower n_eval or add images"
                )
            self.samples = self.samples + extra
            self._skipped = self._skipped + [f"eval_root/{s}" for s in skipped]
            eval_ids = n + _rng(self.seed, _EVAL_STREAM).permutation(len(extra))[: self.n_eval]
            return eval_ids, np.arange(n)
        if self.eval_list is not None:
            listed = self._read_list()
            index = {os.path.realpath(p): i for i, (p, _) in enumerate(self.samples)}
            ids = []
            for path in listed:
                key = os.path.realpath(path)
                if key not in index:  # an image outside root: evaluation only
                    index[key] = len(self.samples)
                    self.samples.append((str(path), -1))
                ids.append(index[key])
            ids = list(dict.fromkeys(ids))[: self.n_eval]
            if len(ids) < self.n_eval:
                raise SplitinvError(
                    f"data.eval_list {self.eval_list} names {len(ids)} distinct images, fewer than "
                    f"n_eval={self.n_eval}: lower n_eval or list more"
                )
            chosen = set(ids)
            return np.asarray(ids), np.asarray([i for i in range(n) if i not in chosen])
        if self.n_eval >= n:
            raise SplitinvError(
                f"{self.role}=imagefolder: {self.role}.root {self._root} has {n} image(s), too few for "
                f"{self.role}.n_eval={self.n_eval} plus at least one auxiliary image: add images to "
                f"{self.role}.root, or lower {self.role}.n_eval"
            )
        perm = _rng(self.seed, _EVAL_STREAM).permutation(n)
        return perm[: self.n_eval], perm[self.n_eval :]

    def _read_list(self) -> list[Path]:
        assert self.eval_list is not None
        if not self.eval_list.is_file():
            raise SplitinvError(
                f"data.eval_list {self.eval_list} is not a file: give a text file with one image path a line."
            )
        paths = []
        for number, line in enumerate(self.eval_list.read_text().splitlines(), 1):
            text = line.split("#", 1)[0].strip()
            if not text:
                continue
            path = Path(text).expanduser()
            path = path if path.is_absolute() else self._root / path
            if not path.is_file():
                raise SplitinvError(
                    f"data.eval_list {self.eval_list} line {number}: {text} is not an image file (paths are "
                    f"relative to data.root {self._root}, or absolute)."
                )
            paths.append(path)
        return paths

    def _build(self) -> None:
        self._scan()
        eval_ids, rest = self._split_ids()
        if len(rest) == 0:
            raise SplitinvError(
                f"imagefolder root {self._root} has no images left for the auxiliary set: add images"
            )
        if self.n_aux is not None and self.n_aux < len(rest):
            rest = _rng(self.seed, _AUX_STREAM).choice(rest, self.n_aux, replace=False)
        aux_ids = np.sort(rest)
        self.eval_ids, self.aux_ids = [int(i) for i in eval_ids], [int(i) for i in aux_ids]
        self._eval_keys = [os.path.relpath(self.samples[i][0], self._root) for i in self.eval_ids]
        if self.eval_root is not None:
            self._eval_keys = [
                "eval_root/" + os.path.relpath(self.samples[i][0], self.eval_root) for i in self.eval_ids
            ]
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
        self._check_files(round(size * 256 / 224))

    def _check_files(self, resize: int) -> None:
        """Before any training: decode every evaluation image and open every auxiliary one (its header), so
        a bad file is named in one line now, not as a traceback when a batch reaches it; one warning says
        which files were skipped (not images by their extension) and which evaluation images are upscaled
        (shorter side below the ``resize`` px they are resized to)."""
        from PIL import Image

        small: list[str] = []
        for i in self.eval_ids:
            path = self.samples[i][0]
            width, height = read_image(path).size
            if min(width, height) < resize:
                small.append(f"{os.path.relpath(path, self._root)} ({width}x{height})")
        for i in self.aux_ids:
            path = self.samples[i][0]
            try:
                with Image.open(path):
                    pass
            except Exception as err:  # empty files, other files named .jpg: their headers do not read
                raise unreadable_image(path, err) from err
        parts = []
        skipped = getattr(self, "_skipped", [])
        if skipped:
            parts.append(
                f"skipped {len(skipped)} file(s) that are not images by their extension ({_first(skipped)}; "
                f"read: {' '.join(IMAGE_EXTENSIONS)})"
            )
        if small:
            parts.append(
                f"{len(small)} of {len(self.eval_ids)} evaluation images are smaller than {resize} px on "
                f"their shorter side and are upscaled ({_first(small)})"
            )
        if parts:
            log.warning("imagefolder %s: %s", self._root, "; ".join(parts))

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["eval_root"] = None if self.eval_root is None else str(self.eval_root)
        info["eval_list"] = None if self.eval_list is None else str(self.eval_list)
        return info
