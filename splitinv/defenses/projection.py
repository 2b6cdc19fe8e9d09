"""A fixed random orthogonal projection to fewer dimensions (``conf/defense/projection.yaml``;
LightSplit, 2026).

Each image's activations are flattened to ``d`` numbers ``h`` and the device sends ``v = P h``, where ``P`` is
a ``k x d`` matrix with orthonormal rows (``P P^T = I``): the transpose of the ``Q`` of a reduced QR of a
``d x k`` standard Gaussian (signs fixed by ``R``'s diagonal, so ``P`` is a uniformly random orthonormal frame
and the same on every backend). The Gaussian is drawn on the CPU from ``seed``; ``P`` is built on the first
input of each size ``d`` (on its device) and cached, so it is the same on every call. ``k`` (``dims``) is a
count or a fraction of ``d`` (a float in (0, 1], rounded, at least 1).

The observation is (B, k). The server maps it back with :meth:`RandomProjection.restore`: ``P^T v`` reshaped
to the activation shape, which is the orthogonal projection of ``h`` onto the row space of ``P`` (restore of
observe is idempotent), so the tail runs on it. ``restore`` uses the per-image shape of the last input the
defense saw (the device and the server share the defense object in a :class:`splitinv.split.Split`).

``P`` takes ``k * d`` numbers: a matrix over ``max_elements`` is refused in one line (a smaller ``dims``
fraction or a later cut, where ``d`` is smaller, fits). The payload is ``k`` numbers per image.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from splitinv.defenses.base import Defense
from splitinv.defenses.common import check_batched, check_count, check_seed, resolve_count
from splitinv.errors import SplitinvError

MAX_ELEMENTS = 2**27  # 128 Mi numbers: 512 MiB in float32


class RandomProjection(Defense):
    """Sends ``P h`` for a seeded random ``k x d`` matrix ``P`` with orthonormal rows; restores ``P^T v``."""

    name = "projection"
    strength_key = "dims"

    def __init__(self, dims: int | float = 0.1, seed: int = 0, max_elements: int = MAX_ELEMENTS) -> None:
        super().__init__()
        self.dims = check_count(self.name, "dims", dims, "the activations")
        self.seed = check_seed(self.name, seed)
        if isinstance(max_elements, bool) or not isinstance(max_elements, int) or max_elements < 1:
            raise SplitinvError(
                f"projection defense: max_elements must be a positive integer, got {max_elements!r}: set "
                f"defense.max_elements, e.g. {MAX_ELEMENTS}."
            )
        self.max_elements = int(max_elements)
        self._basis: dict[int, torch.Tensor] = {}  # d -> P (k x d, float32), as first built
        self._copies: dict[tuple[int, str, torch.dtype], torch.Tensor] = {}  # on other devices / dtypes
        self._shape: tuple[int, ...] | None = None  # per-image shape of the last input, for restore

    def count(self, d: int) -> int:
        """``k``: the number of dimensions sent for ``d`` activations per image."""
        return resolve_count(self.name, "dims", self.dims, d, "activations per image", " or a later cut")

    def matrix(
        self, d: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """``P`` (k x d, orthonormal rows) for ``d`` activations per image, on ``device`` in ``dtype``."""
        device = torch.device(device)
        if d not in self._basis:
            k = self.count(d)
            if k * d > self.max_elements:
                raise SplitinvError(
                    f"projection defense: projecting d={d} activations per image to k={k} dims needs a "
                    f"{k} x {d} matrix ({k * d:.2e} numbers, over max_elements={self.max_elements:.2e}): "
                    "use a smaller defense.dims fraction, a later cut, or raise defense.max_elements."
                )
            gaussian = torch.randn(d, k, generator=torch.Generator().manual_seed(self.seed))
            q, r = torch.linalg.qr(gaussian.to(device), mode="reduced")  # q: d x k, orthonormal columns
            signs = torch.sign(torch.diagonal(r))
            signs = torch.where(signs == 0, torch.ones_like(signs), signs)
            self._basis[d] = (q * signs).T.contiguous()
        basis = self._basis[d]
        if basis.device == device and basis.dtype == dtype:
            return basis
        key = (d, str(device), dtype)
        if key not in self._copies:
            self._copies[key] = basis.to(device=device, dtype=dtype)
        return self._copies[key]

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        check_batched(self.name, h)
        self._shape = tuple(h.shape[1:])
        flat = h.reshape(h.shape[0], -1)
        return flat @ self.matrix(flat.shape[1], h.device, h.dtype).T

    def restore(self, observation: torch.Tensor) -> torch.Tensor:
        """``P^T v`` reshaped to the activation shape of the last input: what the server's tail runs on."""
        if self._shape is None:
            raise SplitinvError(
                "projection defense: restore needs the activation shape, known once the defense has run on "
                "activations: call split.observe(x) (or the defense) before split.serve."
            )
        d = math.prod(self._shape)
        k = self.count(d)
        if observation.ndim != 2 or observation.shape[1] != k:
            raise SplitinvError(
                f"projection defense: expected observations of shape (B, {k}) for activations of shape "
                f"{self._shape}, got {tuple(observation.shape)}: restore observations this defense made."
            )
        flat = observation @ self.matrix(d, observation.device, observation.dtype)
        return flat.reshape(observation.shape[0], *self._shape)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "dims": self.dims, "seed": self.seed, "max_elements": self.max_elements}

    def payload_elements(self, shape: tuple[int, ...]) -> int:
        """``k``: the projected dimensions."""
        return self.count(math.prod(shape))
