"""Reconstruct the evaluation images with a fitted attack and score them under the metric contract.

Everything goes through the split: the attack inverts ``split.observe(x)``; feature error compares
``split.observe(x_hat)`` with ``split.observe(x)``, label agreement ``split.serve`` (the tail) of both.

Attacks that optimise each image (``attack.per_image``) are run first, through ``trainer.predict`` with
gradients on (:class:`InversionModule`), one reconstruction per evaluation index kept in a
:class:`ReconstructionStore` (``{folder}/{index}.pt``, written atomically); a re-run of the same job loads the
images already done instead of attacking them again. Under DDP, predict gives each rank its own images (no
padding), so every image is attacked once; every rank then scores the whole set from the shared folder.
Scores are computed afterwards in float32, whatever precision the attack ran in.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch
from torch import nn

from splitinv import metrics
from splitinv.attacks.base import Attack
from splitinv.errors import SplitinvError
from splitinv.io import load_file, save_atomic, to_uint8
from splitinv.progress import track
from splitinv.split import Split

log = logging.getLogger(__name__)

RECONSTRUCTION_FORMAT = "splitinv-reconstruction/1"


@dataclass
class Evaluation:
    """Per-image scores (keyed by evaluation index), the first images and their reconstructions, and cost."""

    per_image: dict[str, list[float]]
    originals: torch.Tensor
    reconstructions: torch.Tensor
    seconds: float
    images: int
    extra: dict[str, Any] = field(default_factory=dict)
    attacked: int | None = None  # per-image attacks: images attacked in this run (the rest were loaded)

    @property
    def images_per_s(self) -> float:
        n = self.images if self.attacked is None else self.attacked
        return n / self.seconds if self.seconds > 0 and n > 0 else float("nan")


class ReconstructionStore:
    """Per-image reconstructions keyed by evaluation index: ``{folder}/{index}.pt`` files, or memory.

    Each file holds the image (C, H, W, float32), the per-image loss and a key (a hash of the attack's
    settings, the head's weights and the original image), so a changed job never reuses a stale result.
    """

    def __init__(self, folder: str | Path | None = None) -> None:
        self.folder = Path(folder) if folder is not None else None
        self._memory: dict[int, dict[str, Any]] = {}
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, index: int) -> Path:
        assert self.folder is not None
        return self.folder / f"{int(index)}.pt"

    def _read(self, index: int) -> dict[str, Any] | None:
        if self.folder is None:
            return self._memory.get(int(index))
        path = self.path(index)
        if not path.is_file():
            return None
        try:
            obj = load_file(path, "stored reconstruction")
        except SplitinvError as err:  # a truncated, changed or foreign file: attack the image again
            log.warning("%s; attacking image %d again", err, int(index))
            return None
        return obj if isinstance(obj, dict) and obj.get("format") == RECONSTRUCTION_FORMAT else None

    def get(self, index: int, key: str) -> torch.Tensor | None:
        """The stored reconstruction of image ``index`` when it was made under ``key``, else None."""
        obj = self._read(index)
        return obj["image"] if obj is not None and obj.get("key") == key else None

    def put(self, index: int, key: str, image: torch.Tensor, loss: float | None = None) -> None:
        """Keep one reconstruction (written to a temporary file, then renamed into place)."""
        obj = {
            "format": RECONSTRUCTION_FORMAT,
            "key": key,
            "index": int(index),
            "image": image.detach().to("cpu", torch.float32).contiguous(),
            "loss": None if loss is None else float(loss),
        }
        if self.folder is None:
            self._memory[int(index)] = obj
            return
        save_atomic(obj, self.path(index))


def _fingerprint(attack: Attack, split: Split) -> str:
    """What a stored reconstruction depends on besides its image: the attack's settings, the split (head
    weights, defense and its parameters) and any network the attack holds (the hybrid attack's decoder)."""
    h = hashlib.sha256(json.dumps(attack.describe(), sort_keys=True, default=str).encode())
    h.update(json.dumps(split.defense.describe(), sort_keys=True, default=str).encode())
    device_side = {id(m) for m in split.modules()}
    held = [m for m in vars(attack).values() if isinstance(m, nn.Module) and id(m) not in device_side]
    for module in [split.client, *held]:
        h.update(weights_digest(module).encode())
    return h.hexdigest()


_DIGESTS: dict[tuple[Any, ...], tuple[list[weakref.ref[torch.Tensor]], str]] = {}


def weights_digest(module: nn.Module) -> str:
    """SHA-256 of a module's state (names and bytes), computed once per state: hashing a large head takes
    seconds, so the digest is kept while the very same tensors hold the very same values (each tensor's
    identity, storage and in-place version counter), and a job, or a sweep in one process, hashes a head
    once however many splits wrap it."""
    state = module.state_dict(keep_vars=True)
    try:
        signature: tuple[Any, ...] | None = tuple(
            (name, id(t), t.data_ptr(), t._version, tuple(t.shape), t.dtype, str(t.device))
            for name, t in state.items()
        )
    except RuntimeError:  # inference tensors keep no version counter: hash every time
        signature = None
    cached = _DIGESTS.get(signature) if signature is not None else None
    if cached is not None and all(ref() is t for ref, t in zip(cached[0], state.values(), strict=True)):
        return cached[1]  # the same tensor objects, alive, unchanged
    h = hashlib.sha256()
    for name, t in state.items():
        h.update(name.encode())
        h.update(t.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy())
    digest = h.hexdigest()
    if signature is not None:
        while len(_DIGESTS) >= 32:  # a bounded memo: the oldest goes
            _DIGESTS.pop(next(iter(_DIGESTS)))
        _DIGESTS[signature] = ([weakref.ref(t) for t in state.values()], digest)
    return digest


def _image_keys(prefix: str, x: torch.Tensor) -> list[str]:
    xs = x.detach().to("cpu", torch.float32).contiguous()
    return [hashlib.sha256(prefix.encode() + xi.numpy().tobytes()).hexdigest()[:32] for xi in xs]


def _batch_parts(batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    if isinstance(batch, dict):
        raise SplitinvError("evaluation batches must be (image, label, index) tuples, not cached features.")
    return (batch[0], batch[1], batch[2]) if len(batch) >= 3 else (batch[0], batch[1], None)


def invert_missing(
    attack: Attack,
    split: Split,
    x: torch.Tensor,
    index: torch.Tensor,
    store: ReconstructionStore,
    prefix: str,
) -> int:
    """Attack a batch unless ``store`` holds all of its images; returns how many images were attacked.

    A partly stored batch is attacked whole: batched convolutions differ from smaller batches in the last
    bits, which hundreds of optimiser steps amplify, so only the same batch reproduces an uninterrupted run
    bit for bit. (A batch's files are written together, so an interrupted job leaves few partial batches.)
    """
    keys = _image_keys(prefix, x)
    if all(store.get(i, key) is not None for i, key in zip(index.tolist(), keys, strict=True)):
        return 0
    with torch.no_grad():
        f = split.observe(x)
    x_hat, losses = attack.invert(f, index=index.cpu())
    for j, (i, key) in enumerate(zip(index.tolist(), keys, strict=True)):
        loss = float(losses[j]) if losses is not None and len(losses) == len(keys) else None
        store.put(i, key, x_hat[j].float().clamp(0, 1), loss)
    return len(keys)


class InversionModule(L.LightningModule):
    """``trainer.predict`` over the evaluation images: each batch is attacked with gradients on."""

    def __init__(self, split: Split, attack: Attack, store: ReconstructionStore, prefix: str) -> None:
        super().__init__()
        self.split = split  # a submodule: Lightning moves the device side (and the attack's view of it)
        self.attack, self.store, self.prefix = attack, store, prefix
        self.attacked = 0

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, _labels, index = _batch_parts(batch)
        if index is None:
            raise SplitinvError(
                "per-image attacks need the evaluation index in each batch (image, label, index)."
            )
        # works under Trainer(inference_mode=True) as well: leave inference mode, copy the batch out of it
        with torch.inference_mode(False), torch.enable_grad():
            self.attacked += invert_missing(
                self.attack, self.split, x.clone().float(), index.clone(), self.store, self.prefix
            )
        return index  # the images live in the store; predict keeps nothing (return_predictions=False)


def reconstruct(
    split: Split,
    attack: Attack,
    loader: Any,
    *,
    trainer: L.Trainer | None = None,
    store: ReconstructionStore | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> tuple[ReconstructionStore, str, int]:
    """Attack every evaluation image that ``store`` does not hold: (store, key prefix, images attacked).

    With a trainer, through ``trainer.predict`` (its predict loop runs with inference mode off for this call,
    as ``Trainer(inference_mode=False)`` would); without one, a plain loop on ``device``.
    """
    store = store if store is not None else ReconstructionStore()
    split.eval()
    prefix = _fingerprint(attack, split)
    if trainer is None:
        split.to(device)
        attacked = 0
        for batch in track(loader, desc=attack.name, unit="batch", enabled=progress):
            x, _labels, index = _batch_parts(batch)
            if index is None:
                raise SplitinvError("per-image attacks need the evaluation index in each batch.")
            attacked += invert_missing(attack, split, x.to(device).float(), index, store, prefix)
        return store, prefix, attacked
    if store.folder is None and trainer.world_size > 1:
        raise SplitinvError(
            "a per-image attack under several processes needs a shared reconstructions folder: "
            "pass reconstructions_dir (splitinv-run uses the run folder)."
        )
    module = InversionModule(split, attack, store, prefix)
    loop = trainer.predict_loop
    previous = loop.inference_mode
    loop.inference_mode = False
    try:
        trainer.predict(module, dataloaders=loader, return_predictions=False)
    finally:
        loop.inference_mode = previous
    trainer.strategy.barrier("splitinv-reconstruct")
    split.to(device)  # Lightning moves the module back to the CPU at teardown
    return store, prefix, module.attacked


def evaluate(
    split: Split,
    attack: Attack,
    loader: Any,
    *,
    device: torch.device | str = "cpu",
    lpips: str = "auto",
    keep: int = 8,
    progress: bool = True,
    trainer: L.Trainer | None = None,
    reconstructions_dir: str | Path | None = None,
    evaluator: torch.nn.Module | None = None,
    sink: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
) -> Evaluation:
    """Invert every evaluation batch from its observations and score it (fp32, clamped to [0, 1]).

    Per-image attacks (``attack.per_image``) run first through :func:`reconstruct` (``trainer.predict`` when
    a trainer is given), keeping each image in ``reconstructions_dir`` (memory when None) so a re-run skips
    the images already done; other attacks invert batch by batch. ``evaluator``: an independent classifier
    on [0, 1] images (not the victim): adds ``evaluator_agreement``, its top-1 on x_hat against on x.

    Streams: each batch is scored and let go; what is held is the per-image scores and the first ``keep``
    images (for the sheets, as uint8), whatever the set size. ``sink(index, x_hat)`` receives every batch of
    reconstructions as it is scored (:class:`splitinv.results.ReconstructionWriter`).
    """
    split.eval()
    store: ReconstructionStore | None = None
    prefix = ""
    attacked: int | None = None
    attack_seconds = 0.0
    if attack.per_image:
        start = time.perf_counter()
        store, prefix, attacked = reconstruct(
            split,
            attack,
            loader,
            trainer=trainer,
            store=ReconstructionStore(reconstructions_dir),
            device=device,
            progress=progress,
        )
        attack_seconds = time.perf_counter() - start
        split.to(device)
    columns: dict[str, list[float]] = {}
    kept_x: list[torch.Tensor] = []
    kept_hat: list[torch.Tensor] = []
    n = 0
    for batch in track(loader, desc="attack+score", unit="batch", enabled=progress):
        x, labels, index = _batch_parts(batch)
        x, labels = x.to(device).float(), labels.to(device)
        if index is None:
            index = torch.arange(n, n + x.shape[0])
        with torch.no_grad():
            f = split.observe(x)
        if store is not None:
            x_hat = _load(store, prefix, x, index).to(device)
        else:
            start = time.perf_counter()
            x_hat = attack.invert(f).images.to(device).float().clamp(0, 1)
            attack_seconds += time.perf_counter() - start
        with torch.no_grad():
            f_hat = split.observe(x_hat)
            has_tail = split.tail is not None
            logits = split.serve(f) if has_tail else None
            logits_hat = split.serve(f_hat) if has_tail else None
        has_labels = has_tail and bool((labels >= 0).all())
        scores = metrics.score(
            x,
            x_hat,
            lpips=lpips,
            features=f,
            features_hat=f_hat,
            logits=logits,
            logits_hat=logits_hat,
            labels=labels if has_labels else None,
        )
        if evaluator is not None:
            with torch.no_grad():
                scores["evaluator_agreement"] = metrics.label_agreement(evaluator(x_hat), evaluator(x)).cpu()
        columns.setdefault("index", []).extend(int(i) for i in index)
        columns.setdefault("label", []).extend(int(v) for v in labels.cpu())
        for key, values in scores.items():
            if values is not None:
                columns.setdefault(key, []).extend(float(v) for v in values.detach().cpu())
        if sink is not None:
            sink(index, x_hat)
        n += x.shape[0]
        room = keep - sum(t.shape[0] for t in kept_x)
        if room > 0:
            kept_x.append(to_uint8(x[:room]))
            kept_hat.append(to_uint8(x_hat[:room]))
    if n == 0:
        raise SplitinvError("the evaluation set is empty: set data.n_eval to at least 1.")
    if "lpips" not in columns:
        columns["lpips"] = []  # unavailable under lpips=auto: summarised as null
    extra: dict[str, Any] = {}
    if attacked is not None:
        extra = {"attacked": attacked, "skipped": n - attacked, "reconstructions_dir": reconstructions_dir}
    empty = torch.zeros(0, *x.shape[1:])
    return Evaluation(
        per_image=columns,
        originals=torch.cat(kept_x).float() / 255 if kept_x else empty,
        reconstructions=torch.cat(kept_hat).float() / 255 if kept_hat else empty,
        seconds=attack_seconds,
        images=n,
        extra=extra,
        attacked=attacked,
    )


def _load(
    store: ReconstructionStore, prefix: str, x: torch.Tensor, index: Sequence[int] | torch.Tensor
) -> torch.Tensor:
    """The stored reconstructions of a batch (every one must be there after :func:`reconstruct`)."""
    out = []
    for i, key in zip(torch.as_tensor(index).tolist(), _image_keys(prefix, x), strict=True):
        image = store.get(i, key)
        if image is None:
            raise SplitinvError(
                f"no reconstruction of evaluation image {i} was stored: the attack skipped it."
            )
        out.append(image)
    return torch.stack(out).float().clamp(0, 1)
