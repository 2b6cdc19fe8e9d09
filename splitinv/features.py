"""A disk cache of head activations, so that the frozen head is not recomputed every epoch of every job.

The cache memoises the head inside ``Split.observe``: it stores ``head(x)``, and :class:`CachedFeatureData`
applies the split's defense to every batch it serves, so a learned attack trains on ``defense(head(x))``
exactly as when it queries the device (a stochastic defense draws fresh noise every epoch, as it would
uncached), and one cache serves a sweep over defenses and their strengths.

The auxiliary images are drawn once (a fixed set: no per-epoch augmentation) and pushed through the victim
ONCE for all the cut points a sweep needs (one forward pass, :func:`splitinv.cut.extractor`). Each cut point's
activations go to their own file, keyed by a hash of everything they depend on: the victim (name, weights
file content, image size), the data (its ``describe()``: dataset, sizes, seed), the cut point and the storage
dtype. Change any of them and the key changes, so a stale file is never read.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, default_collate
from tqdm.auto import tqdm

from splitinv.cut import extractor
from splitinv.defenses.base import Defense, NoDefense
from splitinv.errors import SplitinvError
from splitinv.io import save_atomic

log = logging.getLogger(__name__)
CACHE_FORMAT = "splitinv-features/1"
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def victim_identity(victim: nn.Module, seed: int) -> dict[str, Any]:
    """What a victim's activations depend on: its description, and its weights' content (or the seed)."""
    identity = dict(victim.describe()) if hasattr(victim, "describe") else {"name": type(victim).__name__}
    weights = identity.get("weights")
    if weights and Path(str(weights)).is_file():
        identity["weights_sha256"] = _file_digest(Path(str(weights)))
    elif weights == "random":
        identity["init_seed"] = seed  # random weights are a function of the seed
    return identity


class FeatureCache:
    """Activations of a fixed auxiliary set at several cut points of one victim, on disk.

    Args:
        root: cache folder. victim: the Victim. datamodule: a splitinv datamodule (its ``aux_dataset()``).
        points: every cut point to compute in the one forward pass (a sweep's points). dtype: storage dtype
        (float16 halves the disk and memory; decoders train on them cast back to float32).
    """

    def __init__(
        self,
        root: str | Path,
        victim: nn.Module,
        datamodule: Any,
        points: Sequence[str],
        dtype: str = "float16",
        seed: int = 0,
        batch_size: int = 64,
    ) -> None:
        if dtype not in DTYPES:
            raise SplitinvError(f"unknown cache dtype {dtype!r}: use one of {', '.join(DTYPES)}.")
        if not points:
            raise SplitinvError("the feature cache needs at least one cut point (cache.points).")
        self.root = Path(root).expanduser()
        self.victim, self.datamodule, self.points = victim, datamodule, list(dict.fromkeys(points))
        self.dtype, self.seed, self.batch_size = dtype, seed, batch_size
        self._identity = {
            "format": CACHE_FORMAT,
            "victim": victim_identity(victim, seed),
            "data": datamodule.describe(),
            "dtype": dtype,
        }

    def key(self, point: str | None) -> str:
        """The hash naming one point's file (``None``: the images' file)."""
        text = json.dumps({**self._identity, "point": point}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:20]

    def path(self, point: str | None) -> Path:
        name = getattr(self.victim, "name", "model")
        what = "images" if point is None else point.replace("/", "_")
        return self.root / f"{name}-{what}-{self.key(point)}.pt"

    def missing(self) -> list[str]:
        return [p for p in self.points if not self.path(p).is_file()]

    def load(self, point: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(uint8 images, features) for one point, computing every missing point first."""
        if point not in self.points:
            self.points.append(point)
        if self.missing() or not self.path(None).is_file():
            self.compute()
        images = torch.load(self.path(None), map_location="cpu", weights_only=True, mmap=True)
        features = torch.load(self.path(point), map_location="cpu", weights_only=True, mmap=True)
        return images["images"], features["features"]

    @torch.no_grad()
    def compute(self) -> None:
        """One pass over the auxiliary set through the victim, writing every missing point (atomically)."""
        todo = self.missing()
        log.info("feature cache: computing %s in one pass -> %s", ", ".join(todo) or "images", self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.datamodule.setup("fit")
        dataset = self.datamodule.aux_dataset()
        generator = torch.Generator().manual_seed(self.seed)
        loader = DataLoader(dataset, batch_size=self.batch_size, shuffle=False, generator=generator)
        torch.manual_seed(self.seed)  # datasets that draw random crops draw the same ones every time
        extract = extractor(self.victim, todo) if todo else None
        device = next(self.victim.parameters()).device
        self.victim.eval()
        images: list[torch.Tensor] = []
        feats: dict[str, list[torch.Tensor]] = {p: [] for p in todo}
        for batch in tqdm(loader, desc="caching activations", leave=False):
            x = batch[0]
            images.append((x * 255).round().clamp(0, 255).to(torch.uint8))
            if extract is not None:
                for point, value in extract(x.to(device)).items():
                    feats[point].append(value.to(DTYPES[self.dtype]).cpu())
        save_atomic({"images": torch.cat(images)}, self.path(None))
        for point in todo:
            save_atomic({"features": torch.cat(feats[point]), "identity": self._identity}, self.path(point))


class _Pairs(Dataset):
    def __init__(self, images: torch.Tensor, features: torch.Tensor) -> None:
        self.images, self.features = images, features

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[i].float() / 255, "observation": self.features[i]}


class _Observe:
    """A collate function: stacks a batch of pairs and applies the defense to the cached head outputs."""

    def __init__(self, defense: Defense) -> None:
        self.defense = defense

    def __call__(self, items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        batch = default_collate(items)
        with torch.no_grad():
            batch["observation"] = self.defense(batch["observation"].float())
        return batch


class CachedFeatureData:
    """Stands in for a datamodule in a learned attack's ``fit``: {"image", "observation"} batches, where the
    observation is ``defense(head(image))`` with ``head(image)`` read from the cache."""

    def __init__(
        self,
        cache: FeatureCache,
        point: str,
        batch_size: int,
        seed: int = 0,
        defense: Defense | None = None,
    ) -> None:
        self.cache, self.point, self.batch_size, self.seed = cache, point, batch_size, seed
        self.defense = defense if defense is not None else NoDefense()
        self._pairs: _Pairs | None = None

    def setup(self, stage: str | None = None) -> None:
        if self._pairs is None:
            self._pairs = _Pairs(*self.cache.load(self.point))

    def train_dataloader(self) -> DataLoader:
        self.setup()
        generator = torch.Generator().manual_seed(self.seed)
        collate = None if self.defense.is_identity else _Observe(self.defense)
        return DataLoader(
            self._pairs, batch_size=self.batch_size, shuffle=True, generator=generator, collate_fn=collate
        )
