"""``noise``: Gaussian-noise images, He et al.'s "random" auxiliary data (``aux=noise``).

Each image is ``clip(mean + std * N(0, 1), 0, 1)`` drawn from its own generator seeded by (seed, index), so
the set is the same for any batch size or worker count. With mean = std = 0.5 (the defaults) and a victim
normalised with mean = std = 0.5 (He et al.'s LeNet), these are standard Gaussian images in the network's
input units, as the paper describes, clipped to the pixel range so that every auxiliary input is an image.
The noise set is auxiliary data only: it has no labels and no evaluation images of its own.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from splitinv.data.base import ImageDataModule, _check_int
from splitinv.errors import SplitinvError


class _NoiseImages(Dataset):
    def __init__(self, n: int, shape: tuple[int, int, int], mean: float, std: float, seed: int) -> None:
        self.n, self.shape, self.mean, self.std, self.seed = n, shape, mean, std, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[Tensor, int, int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(index))
        image = (self.mean + self.std * torch.randn(self.shape, generator=g)).clamp_(0, 1)
        return image, -1, index


class NoiseDataModule(ImageDataModule):
    """``n_aux`` Gaussian images (see module doc); ``n_eval`` of them serve as evaluation images only when
    someone asks for them (evaluation images always come from ``data``)."""

    NAME = "noise"

    def __init__(
        self,
        n_aux: int = 6000,
        mean: float = 0.5,
        std: float = 0.5,
        image_size: int = 64,
        channels: int = 3,
        n_eval: int = 16,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
        augment: bool = False,
    ) -> None:
        super().__init__(image_size, channels, _check_int("n_aux", n_aux, 1), n_eval, batch_size,
                         num_workers, seed, augment)  # fmt: skip
        if not (std > 0 and 0 <= mean <= 1):
            raise SplitinvError(f"noise needs 0 <= mean <= 1 and std > 0, got mean={mean}, std={std}.")
        self.mean, self.std = float(mean), float(std)

    @property
    def num_classes(self) -> int:
        return 0

    def _build(self) -> None:
        shape = (self.channels, self.image_size, self.image_size)
        assert self.n_aux is not None
        self._aux = _NoiseImages(self.n_aux, shape, self.mean, self.std, self.seed)
        # distinct draws for the (rarely used) evaluation images: another seed stream
        self._eval = _NoiseImages(self.n_eval, shape, self.mean, self.std, self.seed + 7_919)
        self.aux_ids = list(range(self.n_aux))
        self.eval_ids = list(range(self.n_eval))
        self._eval_keys = [["noise", self.mean, self.std, i] for i in self.eval_ids]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "mean": self.mean, "std": self.std}
