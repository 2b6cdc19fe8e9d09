"""The identity membership audit of Webster et al., "This Person (Potentially) Exists" (arXiv 2107.06018).

Generate N samples from a generator (or take a folder of already generated images), embed them and the
training images with an embedding network (:mod:`splitinv.audit.embed`), find each sample's nearest training
images by cosine similarity, and flag the samples whose best similarity passes a threshold calibrated on
reference images known NOT to be in the training set, at a chosen false-positive rate.

Calibration: each reference image's best similarity to the training set is a draw from the non-member null
distribution; the threshold is its (1 - fpr) quantile by the inverted-CDF definition (the
ceil((1 - fpr) * n_reference)-th smallest value; numpy's ``method="inverted_cdf"``) and a sample is flagged
when its similarity is strictly above it, so the empirical FPR on the reference set is at most ``fpr``
(reported as ``fpr_reference``). The match rate (flagged / N) comes with a Wilson score interval.

Two uses, one audit:

- "Did this GAN train on my images?": the training set is one person's (or one artist's) images; a match
  rate well above the FPR says the generator reproduces them (Webster et al.'s identity membership attack).
- "Is this sample safe to release?": audit a generator's samples (or a folder of them) against its training
  set before publishing them; flagged samples are likely (near-)copies of training images.

Results go into one folder (written atomically, ``audit.json`` last): ``audit.json`` (the summary),
``samples.csv`` (per sample: nearest training images and similarities, flagged) and ``audit.png`` (the top
flagged samples, each followed by its 3 nearest training images).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from splitinv.audit.embed import Embedder, PixelEmbedder
from splitinv.audit.faces import FaceAligner
from splitinv.errors import SplitinvError
from splitinv.gans.base import Generator
from splitinv.progress import track

AUDIT_FORMAT = "splitinv-audit/1"
FILES = {"summary": "audit.json", "samples": "samples.csv", "figure": "audit.png"}
QUANTILE_METHOD = "inverted_cdf"
MECHANICS = "MECHANICS TEST (random embedder weights: no identity or match-rate claim)"

# ---------------------------------------------------------------------------------------------------------
# Image sets: folders, tensors and generators behind one interface, loaded batch by batch


class ImageSet:
    """``n`` images in [0, 1], loaded by index in batches; ``size`` is (H, W) or None when sizes vary."""

    name: str = "images"
    n: int = 0
    size: tuple[int, int] | None = None
    resize_to: tuple[int, int] | None = None  # set by the audit (resize=True)

    def _load(self, indices: Sequence[int]) -> Tensor:
        raise NotImplementedError

    def load(self, indices: Sequence[int]) -> Tensor:
        """Images ``indices`` as a float tensor (B, C, H, W) in [0, 1]."""
        images = self._load(indices)
        if self.resize_to is not None and tuple(images.shape[-2:]) != self.resize_to:
            images = F.interpolate(images, size=self.resize_to, mode="bilinear", antialias=True)
        return images

    def describe(self) -> dict[str, Any]:
        return {"kind": type(self).__name__, "n": self.n, "size": list(self.size) if self.size else None}

    def label(self, index: int) -> str:
        """A short name for image ``index`` (its file for folders)."""
        return f"#{index}"


class TensorImages(ImageSet):
    """Images held in a (N, C, H, W) tensor in [0, 1]."""

    def __init__(self, images: Tensor, name: str = "images") -> None:
        if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] not in (1, 3):
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise SplitinvError(f"{name} images must be a (N, 1 or 3, H, W) tensor in [0, 1], got {shape}.")
        if len(images) == 0:
            raise SplitinvError(f"{name} holds no images: pass at least one.")
        low, high = float(images.min()), float(images.max())
        if low < -1e-4 or high > 1 + 1e-4:
            raise SplitinvError(
                f"{name} images range over [{low:.3g}, {high:.3g}], not [0, 1]: map [-1, 1] images with "
                "(x + 1) / 2, uint8 images with x / 255."
            )
        self.images, self.name, self.n = images.detach().float().cpu(), name, len(images)
        self.size = (int(images.shape[-2]), int(images.shape[-1]))

    def _load(self, indices: Sequence[int]) -> Tensor:
        return self.images[list(indices)]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "source": "tensor"}


def image_files(root: str | os.PathLike, name: str = "images") -> list[Path]:
    """Image files under ``root`` (recursive, any extension torchvision knows), sorted; one-line errors."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    path = Path(root).expanduser()
    if not path.exists():
        raise SplitinvError(f"{name} folder {path} does not exist: pass a folder of images.")
    if not path.is_dir():
        raise SplitinvError(f"{name} path {path} is not a folder: pass a folder of images.")
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)
    if not files:
        raise SplitinvError(
            f"{name} folder {path} holds no images ({', '.join(IMG_EXTENSIONS)}, searched recursively)."
        )
    return files


class FolderImages(ImageSet):
    """The image files under a folder (recursive), read with PIL when needed: gray stays 1 channel."""

    def __init__(self, root: str | os.PathLike, name: str = "images") -> None:
        from PIL import Image

        self.root, self.name = Path(root).expanduser(), name
        self.files = image_files(root, name)
        self.n = len(self.files)
        sizes: dict[tuple[int, int], Path] = {}
        for file in self.files:
            try:
                with Image.open(file) as image:  # reads the header only
                    sizes.setdefault((image.height, image.width), file)
            except OSError as err:
                raise SplitinvError(f"cannot read image {file} ({err}): remove or replace it.") from err
        self.sizes = sizes
        self.size = next(iter(sizes)) if len(sizes) == 1 else None

    def _read(self, file: Path) -> Tensor:
        import torchvision.transforms.functional as TF
        from PIL import Image

        with Image.open(file) as image:
            gray = image.mode in ("1", "L", "I", "I;16", "F")
            image = image.convert("L" if gray else "RGB")
            tensor = TF.pil_to_tensor(image).float().div_(255)
        if self.resize_to is not None and tuple(tensor.shape[-2:]) != self.resize_to:
            tensor = F.interpolate(tensor[None], size=self.resize_to, mode="bilinear", antialias=True)[0]
        return tensor

    def _load(self, indices: Sequence[int]) -> Tensor:
        images = [self._read(self.files[i]) for i in indices]
        channels = max(im.shape[0] for im in images)
        return torch.stack([im.expand(channels, -1, -1) for im in images])

    def label(self, index: int) -> str:
        return str(self.files[index].relative_to(self.root))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "source": str(self.root)}


class GeneratedImages(ImageSet):
    """``n`` samples of a generator from seeded latents (all drawn at once: independent of batch size)."""

    def __init__(self, generator: Generator, n: int, seed: int = 0, device: Any = None) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise SplitinvError(f"the number of samples must be an integer >= 1, got {n!r}.")
        self.generator, self.n, self.seed, self.name = generator.eval(), n, seed, "samples"
        self.device = device or next(generator.parameters()).device
        self.latents = generator.sample_latent(n, generator=torch.Generator().manual_seed(seed), device="cpu")
        self.size = (generator.image_size, generator.image_size)

    @torch.no_grad()
    def _load(self, indices: Sequence[int]) -> Tensor:
        return self.generator(self.latents[list(indices)].to(self.device)).float().cpu()

    def describe(self) -> dict[str, Any]:
        info = self.generator.describe() if hasattr(self.generator, "describe") else {}
        return {**super().describe(), "source": "generator", "generator": info, "seed": self.seed}


def as_image_set(images: Any, name: str) -> ImageSet:
    """An :class:`ImageSet` from a folder path, a (N, C, H, W) tensor in [0, 1], or an ImageSet."""
    if isinstance(images, ImageSet):
        return images
    if isinstance(images, Tensor):
        return TensorImages(images, name)
    if isinstance(images, (str, os.PathLike)):
        return FolderImages(images, name)
    raise SplitinvError(
        f"{name} must be a folder of images or a (N, C, H, W) tensor in [0, 1], not {type(images).__name__}."
    )


def _fmt(size: tuple[int, int]) -> str:
    return f"{size[1]}x{size[0]}"


def _check_sizes(sets: Sequence[ImageSet], resize: bool) -> None:
    """All sets at one size (the samples'), or resized to it when ``resize``; otherwise a one-line error."""
    target = sets[0].size
    if target is None:
        raise SplitinvError(
            f"{sets[0].name} images have different sizes ({', '.join(_fmt(s) for s in sets[0].sizes)}): "
            "put one size in the folder."
        )
    for images in sets[1:]:
        if resize:
            images.resize_to = target
            continue
        if images.size is None:
            found = ", ".join(f"{_fmt(s)} ({f.name})" for s, f in list(images.sizes.items())[:3])
            raise SplitinvError(
                f"{images.name} images have different sizes ({found}): resize them to the samples' "
                f"{_fmt(target)}, or pass --resize (resize=True) to resize every image to it."
            )
        if images.size != target:
            raise SplitinvError(
                f"{images.name} images are {_fmt(images.size)} but the samples are {_fmt(target)}: resize "
                f"them to {_fmt(target)}, or pass --resize (resize=True) to resize every image to it."
            )


# ---------------------------------------------------------------------------------------------------------
# Statistics


@dataclass(frozen=True)
class Calibration:
    """The threshold at a target FPR, from the reference (non-member) images' best similarities."""

    threshold: float
    fpr: float  # the target
    fpr_reference: float  # the achieved empirical FPR: reference similarities strictly above the threshold
    n_reference: int
    method: str = QUANTILE_METHOD
    warning: str | None = None


def check_fpr(fpr: float) -> float:
    if isinstance(fpr, bool) or not isinstance(fpr, (int, float)) or not 0 < fpr < 1 or math.isnan(fpr):
        raise SplitinvError(
            f"fpr must be a false-positive rate strictly between 0 and 1 (e.g. 0.01), not {fpr}."
        )
    return float(fpr)


def calibrate_threshold(reference_similarity: Any, fpr: float = 0.01) -> Calibration:
    """Threshold = the (1 - fpr) inverted-CDF quantile of the reference similarities; flag ``> threshold``.

    With n reference values the threshold is the ceil((1 - fpr) n)-th smallest, so at most fpr * n of them
    (fewer with ties) lie strictly above it: the empirical FPR on the reference set never exceeds ``fpr``.
    Fewer than 1 / fpr reference images make the threshold simply their maximum (a warning says so).
    """
    fpr = check_fpr(fpr)
    values = np.asarray(reference_similarity, dtype=np.float64).ravel()
    if values.size == 0:
        raise SplitinvError("no reference images: pass images known NOT to be in the training set.")
    threshold = float(np.quantile(values, 1 - fpr, method=QUANTILE_METHOD))
    achieved = float(np.mean(values > threshold))
    warning = None
    if values.size < 1 / fpr:
        warning = (
            f"only {values.size} reference images for fpr={fpr:g}: the threshold is their maximum and the "
            f"false-positive rate is not estimated; use at least {math.ceil(1 / fpr)} (ideally 10x more)."
        )
    return Calibration(threshold, fpr, achieved, int(values.size), QUANTILE_METHOD, warning)


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion k / n (Wilson 1927).

    Chosen over the Wald interval (which collapses to a point at 0 and n) and over Clopper-Pearson (exact
    but conservative, wider than needed); it is closed-form, so no statsmodels or scipy is needed.
    """
    if n <= 0 or not 0 <= k <= n:
        raise SplitinvError(f"Wilson interval needs 0 <= k <= n and n > 0, got k={k}, n={n}.")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if k == 0 else max(0.0, centre - half)  # exact at the ends (not rounding residue)
    high = 1.0 if k == n else min(1.0, centre + half)
    return low, high


def nearest(queries: Tensor, keys: Tensor, k: int = 3, chunk: int = 4096) -> tuple[Tensor, Tensor]:
    """The ``k`` keys most similar to each query (rows L2-normalised: dot product = cosine similarity).

    Returns ``(similarities, indices)``, each (len(queries), min(k, len(keys))), best first.
    """
    k = min(k, len(keys))
    sims, idx = [], []
    for start in range(0, len(queries), chunk):
        s, i = (queries[start : start + chunk] @ keys.T).topk(k, dim=1)
        sims.append(s)
        idx.append(i)
    return torch.cat(sims), torch.cat(idx)


@dataclass
class Embedded:
    """A set's embeddings (n, D) on the CPU, whether a face was found in each image (all True without face
    detection) and each image's digest (its 8-bit pixels' SHA-1: identical images, whatever the embedder)."""

    embeddings: Tensor
    face: Tensor
    digests: list[str]


def _digest(image: Tensor) -> str:
    return hashlib.sha1((image.clamp(0, 1) * 255).round().byte().cpu().numpy().tobytes()).hexdigest()


def embed_set(
    embedder: Embedder,
    images: ImageSet,
    batch_size: int = 64,
    progress: bool | None = None,
    device: Any = None,
    faces: FaceAligner | None = None,
) -> Embedded:
    """Embeddings of every image of ``images``, batch by batch with a progress bar; with ``faces``, of each
    image's aligned face crop (a zero vector, cosine 0 to everything, where no face is found)."""
    device = device or next(iter(embedder.parameters()), torch.empty(0)).device
    out, found, digests = [], [], []
    starts = range(0, images.n, batch_size)
    for start in track(starts, desc=f"embedding {images.name}", unit="batch", enabled=progress):
        batch = images.load(range(start, min(start + batch_size, images.n)))
        digests += [_digest(image) for image in batch]
        face = torch.ones(len(batch), dtype=torch.bool)
        if faces is not None:
            batch, face, _ = faces(batch)
        emb = embedder(batch.to(device)).float().cpu()
        out.append(emb * face[:, None])
        found.append(face)
    return Embedded(torch.cat(out), torch.cat(found), digests)


# ---------------------------------------------------------------------------------------------------------
# The report


@dataclass
class AuditReport:
    """Result of :func:`audit`. ``table`` has one row per sample; ``files`` is filled when written."""

    match_rate: float
    ci_low: float
    ci_high: float
    n_flagged: int
    n_samples: int
    n_train: int
    n_reference: int
    threshold: float
    fpr: float
    fpr_reference: float
    embedder: dict[str, Any]
    samples: dict[str, Any]
    train: dict[str, Any]
    reference: dict[str, Any]
    table: pd.DataFrame
    reference_similarity: np.ndarray
    seed: int = 0
    confidence: float = 0.95
    quantile_method: str = QUANTILE_METHOD
    k_nearest: int = 3
    mechanics_test: bool = False
    faces: dict[str, Any] = field(default_factory=lambda: {"detector": "none"})
    warnings: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)

    def top(self, k: int = 8) -> pd.DataFrame:
        """The ``k`` flagged samples with the highest similarity (the ``k`` most similar when none is),
        best first, at most one per nearest training image until every matched training image is shown."""
        flagged = self.table[self.table["flagged"]]
        pool = (flagged if len(flagged) else self.table).sort_values(
            "similarity_1", ascending=False, kind="stable"
        )
        first = pool.drop_duplicates("nearest_1")
        return pd.concat([first, pool.drop(first.index)]).head(k)

    def to_dict(self, top_k: int = 8) -> dict[str, Any]:
        """The JSON summary written as ``audit.json``."""
        quantiles = np.quantile(self.reference_similarity, [0.5, 0.9, 0.99]).tolist()
        return {
            "format": AUDIT_FORMAT,
            "match_rate": self.match_rate,
            "ci": {
                "low": self.ci_low,
                "high": self.ci_high,
                "confidence": self.confidence,
                "method": "wilson",
            },
            "n_flagged": self.n_flagged,
            "n_samples": self.n_samples,
            "n_train": self.n_train,
            "n_reference": self.n_reference,
            "threshold": self.threshold,
            "fpr": {"target": self.fpr, "reference": self.fpr_reference},
            "quantile_method": f"{self.quantile_method} (flagged when similarity > threshold)",
            "reference_similarity": dict(zip(("median", "q90", "q99"), quantiles, strict=True)),
            "similarity": "cosine",
            "k_nearest": self.k_nearest,
            "embedder": self.embedder,
            "samples": self.samples,
            "train": self.train,
            "reference": self.reference,
            "seed": self.seed,
            "mechanics_test": self.mechanics_test,
            "faces": self.faces,
            "top": json.loads(self.top(top_k).to_json(orient="records")),
            "warnings": self.warnings,
            "files": self.files,
        }

    def summary(self) -> str:
        """A few lines: match rate with its interval, threshold and FPR, set sizes, the embedder."""
        emb = self.embedder
        name = emb["kind"]
        if emb["kind"] != "pixels":
            layer = f", layer {emb['layer']}" if emb.get("layer") else ""
            name += f" {emb.get('name')} (weights {emb.get('weights')}{layer})"
        faces = self.faces
        if faces.get("detector", "none") == "none":
            crops = "whole images (no face detection)"
        else:
            crops = f"face crops ({faces['detector']}; no face found in {faces['no_face']})"
        lines = [
            f"match rate {self.match_rate:.4f} ({self.n_flagged}/{self.n_samples} flagged), "
            f"{self.confidence:.0%} Wilson CI [{self.ci_low:.4f}, {self.ci_high:.4f}]",
            f"threshold {self.threshold:.4f} (cosine) at target FPR {self.fpr:g}: "
            f"empirical FPR on {self.n_reference} reference images {self.fpr_reference:.4f}",
            f"samples {self.n_samples}, training images {self.n_train}, reference images "
            f"{self.n_reference}; embedder {name}; {crops}",
        ]
        return "\n".join(f"{MECHANICS}: {line}" if self.mechanics_test else line for line in lines)


def _table(
    sims: Tensor,
    idx: Tensor,
    flagged: np.ndarray,
    samples: ImageSet,
    train: ImageSet,
    face: Tensor | None = None,
) -> pd.DataFrame:
    columns: dict[str, Any] = {"sample": np.arange(len(sims))}
    if isinstance(samples, FolderImages):
        columns["sample_file"] = [samples.label(i) for i in range(samples.n)]
    for j in range(sims.shape[1]):
        columns[f"nearest_{j + 1}"] = idx[:, j].numpy()
        columns[f"similarity_{j + 1}"] = sims[:, j].numpy().astype(np.float64)
        if isinstance(train, FolderImages):
            columns[f"nearest_{j + 1}_file"] = [train.label(int(i)) for i in idx[:, j]]
    if face is not None:
        columns["face"] = face.numpy()
    columns["flagged"] = flagged
    return pd.DataFrame(columns)


def audit(
    samples: Generator | ImageSet | Tensor | str | os.PathLike,
    train: ImageSet | Tensor | str | os.PathLike,
    reference: ImageSet | Tensor | str | os.PathLike,
    embedder: Embedder | None = None,
    *,
    n: int = 1000,
    fpr: float = 0.01,
    seed: int = 0,
    batch_size: int = 64,
    k_nearest: int = 3,
    top_k: int = 8,
    resize: bool = False,
    confidence: float = 0.95,
    output_dir: str | os.PathLike | None = None,
    logger: Any = None,
    progress: bool | None = None,
    device: Any = None,
    faces: FaceAligner | None = None,
    mechanics_test: bool = False,
) -> AuditReport:
    """Audit a generator's samples for (near-)copies of its training images (Webster et al. 2021).

    Two uses: "did this GAN train on my images?" (``train`` = one person's or artist's images: a match rate
    well above ``fpr`` says it did) and "is this sample safe to release?" (``samples`` = the images to
    publish, ``train`` = the generator's training set: flagged samples reproduce training images).

    Args:
        samples: a generator (``n`` samples from latents seeded by ``seed``), or a folder / tensor of images.
        train: the training images (or the images whose membership is in question): a folder or a tensor.
        reference: images known NOT to be in the training set, from the same kind of data (calibration).
        embedder: an :class:`~splitinv.audit.embed.Embedder` (default: pixels; see ``build_embedder``).
        fpr: target false-positive rate in (0, 1) of the threshold.
        k_nearest: training images listed per sample; ``top_k``: flagged samples in the figure.
        resize: resize training and reference images to the samples' size instead of refusing a mismatch.
        output_dir: where ``audit.json``, ``samples.csv`` and ``audit.png`` go (atomically; None: nowhere).
        logger: a W&B run or a Lightning ``WandbLogger``: the figure and summary are logged to it.
        progress: False: no progress; True or None: a bar on a terminal, log lines elsewhere.
        device: where the generator and embedder run (default: the embedder's device).
        faces: a face aligner (:func:`splitinv.audit.faces.build_aligner`): every image's aligned face crop
            is embedded; samples without a face are never flagged, such training and reference images are
            left out (counted in ``faces``). None: whole images.
        mechanics_test: allow an embedder with random weights (refused otherwise: its similarities identify
            nobody); every summary line is then labelled a mechanics test.

    Images are tensors (B, C, H, W) in [0, 1]; all three sets must have the samples' size unless ``resize``.
    """
    fpr = check_fpr(fpr)
    if not 0 < confidence < 1:
        raise SplitinvError(f"confidence must be in (0, 1), not {confidence}.")
    for label, value, low in (
        ("batch_size", batch_size, 1),
        ("k_nearest", k_nearest, 1),
        ("top_k", top_k, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise SplitinvError(f"{label} must be an integer >= {low}, got {value!r}.")
    embedder = embedder if embedder is not None else PixelEmbedder()
    embedder.eval()
    if device is not None:
        embedder.to(device)
    if isinstance(samples, Generator):
        sample_set: ImageSet = GeneratedImages(samples.to(device) if device else samples, n, seed, device)
    else:
        sample_set = as_image_set(samples, "samples")
    train_set, ref_set = as_image_set(train, "train"), as_image_set(reference, "reference")
    _check_sizes([sample_set, train_set, ref_set], resize)

    notes: list[str] = []  # recorded in the report; random weights were already warned about when built
    info, generator = embedder.describe(), sample_set.describe().get("generator")
    if info["kind"] != "pixels" and not info.get("pretrained"):
        if not mechanics_test:
            raise SplitinvError(
                f"embedder {info.get('name')} has RANDOM weights, whose similarities identify nobody: give "
                "trained weights (facenet: --embedder-weights FILE), or pass --mechanics-test "
                "(mechanics_test=True) to test the audit's mechanics only."
            )
        notes.append(f"embedder {info.get('name')} has RANDOM weights: a mechanics test, no identity claim")
    if generator and not generator.get("pretrained", True):
        notes.append(f"generator {generator.get('name')} has RANDOM weights")
    n_random = len(notes)
    with torch.no_grad():
        train_emb = embed_set(embedder, train_set, batch_size, progress, device, faces)
        ref_emb = embed_set(embedder, ref_set, batch_size, progress, device, faces)
        sample_emb = embed_set(embedder, sample_set, batch_size, progress, device, faces)
    no_face = {
        name: int((~e.face).sum())
        for name, e in (("samples", sample_emb), ("train", train_emb), ("reference", ref_emb))
    }
    for name, e in (("train", train_emb), ("reference", ref_emb)):
        if faces is not None and not e.face.any():
            raise SplitinvError(
                f"no face found in any of the {e.face.numel()} {name} images: pass face images (or --faces "
                "none to embed whole images)."
            )
    if faces is not None and any(no_face.values()):
        notes.append(
            "no face found in {samples} samples (never flagged), {train} training and {reference} reference "
            "images (left out)".format(**no_face)
        )
    ref_sims = nearest(ref_emb.embeddings[ref_emb.face], train_emb.embeddings, 1)[0][:, 0].double().numpy()
    calibration = calibrate_threshold(ref_sims, fpr)
    if calibration.warning:
        notes.append(calibration.warning)
    train_digests = set(train_emb.digests)
    duplicates = sum(d in train_digests for d in ref_emb.digests)
    if duplicates:
        notes.append(
            f"{duplicates} reference images are identical to training images (the same 8-bit pixels): "
            "reference images must be known NOT to be in the training set"
        )
    sims, idx = nearest(sample_emb.embeddings, train_emb.embeddings, k_nearest)
    flagged = (sims[:, 0].double().numpy() > calibration.threshold) & sample_emb.face.numpy()
    k = int(flagged.sum())
    low, high = wilson_interval(k, sample_set.n, confidence)
    report = AuditReport(
        match_rate=k / sample_set.n,
        ci_low=low,
        ci_high=high,
        n_flagged=k,
        n_samples=sample_set.n,
        n_train=train_set.n,
        n_reference=int(ref_emb.face.sum()),
        threshold=calibration.threshold,
        fpr=fpr,
        fpr_reference=calibration.fpr_reference,
        embedder=embedder.describe(),
        samples=sample_set.describe(),
        train=train_set.describe(),
        reference=ref_set.describe(),
        table=_table(sims, idx, flagged, sample_set, train_set, sample_emb.face if faces else None),
        reference_similarity=ref_sims,
        seed=seed,
        confidence=confidence,
        k_nearest=int(sims.shape[1]),
        mechanics_test=bool(mechanics_test),
        faces={"detector": "none"} if faces is None else {**faces.describe(), "no_face": no_face},
        warnings=notes,
    )
    for note in notes[n_random:]:
        warnings.warn(note, stacklevel=2)
    if output_dir is not None:
        write_audit(report, output_dir, sample_set, train_set, top_k)
    if logger is not None:
        log_audit(report, logger)
    return report


# ---------------------------------------------------------------------------------------------------------
# Figure, files, W&B


def plot_audit(
    report: AuditReport, samples: ImageSet, train: ImageSet, path: str | os.PathLike, top_k: int = 8
) -> Path:
    """The top ``top_k`` flagged samples, one per row, each followed by its nearest training images.

    Webster et al.'s figure. With no flagged sample the most similar ones are shown under a title that says
    so. The PNG is (1 + k_nearest) * 150 pixels wide and 160 per row plus 60 high.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    rows = report.top(max(1, top_k)) if top_k else report.top(1).head(0)
    cols = 1 + report.k_nearest
    n_rows = max(1, len(rows))
    fig, axes = plt.subplots(n_rows, cols, figsize=(1.5 * cols, 1.6 * n_rows + 0.6), dpi=100, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    flagged_any = bool(report.n_flagged)
    title = (
        f"{report.n_flagged}/{report.n_samples} samples flagged (rate {report.match_rate:.3f}), "
        f"threshold {report.threshold:.3f} @ FPR {report.fpr:g}"
        if flagged_any
        else f"no sample above threshold {report.threshold:.3f}: the most similar"
    )
    fig.suptitle(f"{MECHANICS}\n{title}" if report.mechanics_test else title, fontsize=7)
    if len(rows):
        sample_images = samples.load([int(i) for i in rows["sample"]])
        for r, (row, image) in enumerate(zip(rows.itertuples(index=False), sample_images, strict=True)):
            _show(axes[r, 0], image, f"sample {row.sample}" + (" MATCH" if row.flagged else ""), row.flagged)
            neighbours = [int(getattr(row, f"nearest_{j}")) for j in range(1, cols)]
            for j, image_j in enumerate(train.load(neighbours), start=1):
                sim = getattr(row, f"similarity_{j}")
                _show(axes[r, j], image_j, f"train {neighbours[j - 1]}: {sim:.3f}", sim > report.threshold)
    else:
        axes[0, 0].text(0, 0.5, "no samples to show", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _show(ax: Any, image: Tensor, title: str, highlight: bool) -> None:
    array = image.clamp(0, 1).permute(1, 2, 0).numpy()
    if array.shape[2] == 1:
        ax.imshow(array[:, :, 0], cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(array)
    ax.set_title(title, fontsize=6, color="red" if highlight else "black")


def write_audit(
    report: AuditReport, output_dir: str | os.PathLike, samples: ImageSet, train: ImageSet, top_k: int = 8
) -> dict[str, str]:
    """Write ``samples.csv``, ``audit.png`` then ``audit.json`` into ``output_dir``.

    Each file is written in a temporary folder inside ``output_dir`` and moved into place, ``audit.json``
    last: a folder with an ``audit.json`` holds a complete audit.
    """
    out = Path(output_dir).expanduser()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SplitinvError(f"cannot create output folder {out} ({err}): pass a writable --output.") from err
    report.files = {key: str(out / name) for key, name in FILES.items()}
    tmp = Path(tempfile.mkdtemp(prefix=".audit-", dir=out))
    try:
        report.table.to_csv(tmp / FILES["samples"], index=False)
        plot_audit(report, samples, train, tmp / FILES["figure"], top_k)
        (tmp / FILES["summary"]).write_text(json.dumps(report.to_dict(top_k), indent=2) + "\n")
        (out / FILES["summary"]).unlink(missing_ok=True)  # an old summary never describes the new files
        for key in ("samples", "figure", "summary"):
            os.replace(tmp / FILES[key], out / FILES[key])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report.files


def log_audit(report: AuditReport, logger: Any) -> None:
    """Log the summary scalars, the figure and the flagged samples' rows to a W&B run or WandbLogger."""
    import wandb

    run = getattr(logger, "experiment", logger)
    scalars = {
        "audit/match_rate": report.match_rate,
        "audit/ci_low": report.ci_low,
        "audit/ci_high": report.ci_high,
        "audit/n_flagged": report.n_flagged,
        "audit/threshold": report.threshold,
        "audit/fpr": report.fpr,
        "audit/fpr_reference": report.fpr_reference,
    }
    logged: dict[str, Any] = dict(scalars)
    flagged = report.table[report.table["flagged"]].head(10_000)
    logged["audit/flagged"] = wandb.Table(dataframe=flagged.reset_index(drop=True))
    if report.files.get("figure") and Path(report.files["figure"]).is_file():
        logged["audit/figure"] = wandb.Image(report.files["figure"], caption=report.summary().splitlines()[0])
    run.log(logged)
    run.summary.update(
        {**scalars, "audit/n_samples": report.n_samples, "audit/embedder": report.embedder.get("kind")}
    )


def wandb_run(output_dir: str | os.PathLike, config: dict[str, Any]) -> Any:
    """A W&B run for one audit: offline unless WANDB_MODE says otherwise (no account needed; ``wandb sync``
    uploads it later), its files under ``output_dir``/wandb."""
    import wandb

    out = Path(output_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    return wandb.init(
        project="splitinv",
        job_type="audit",
        name=f"audit-{out.resolve().name}",
        mode=os.environ.get("WANDB_MODE", "offline"),
        dir=str(out),
        config=config,
        reinit="finish_previous",
    )
