"""``cifar10``: CIFAR-10 in torchvision's layout, downloaded when absent."""

from __future__ import annotations

import torch
from torch import Tensor

from splitinv.data.base import _one_line, _SplitDataModule
from splitinv.errors import SplitinvError


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
