"""Reconstruct the evaluation images with a fitted attack and score them under the metric contract."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from splitinv import metrics
from splitinv.attacks.base import Attack


@dataclass
class Evaluation:
    """Per-image scores (keyed by evaluation index), the first images and their reconstructions, and cost."""

    per_image: dict[str, list[float]]
    originals: torch.Tensor
    reconstructions: torch.Tensor
    seconds: float
    images: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")


def evaluate(
    victim: nn.Module,
    head: nn.Module,
    attack: Attack,
    loader: Any,
    *,
    device: torch.device | str = "cpu",
    lpips: str = "auto",
    keep: int = 8,
    progress: bool = True,
) -> Evaluation:
    """Invert every evaluation batch from the head's activations and score it (fp32, clamped to [0, 1])."""
    victim.eval()
    head.eval()
    columns: dict[str, list[float]] = {}
    kept_x: list[torch.Tensor] = []
    kept_hat: list[torch.Tensor] = []
    attack_seconds = 0.0
    n = 0
    for batch in tqdm(loader, desc="attack+score", disable=not progress, leave=False):
        x, labels, index = (batch[0], batch[1], batch[2]) if len(batch) >= 3 else (batch[0], batch[1], None)
        x, labels = x.to(device).float(), labels.to(device)
        with torch.no_grad():
            f = head(x)
        start = time.perf_counter()
        x_hat = attack.invert(f).to(device).float().clamp(0, 1)
        attack_seconds += time.perf_counter() - start
        with torch.no_grad():
            f_hat = head(x_hat)
            logits, logits_hat = victim(x), victim(x_hat)
        has_labels = bool((labels >= 0).all())
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
        if index is None:
            index = torch.arange(n, n + x.shape[0])
        columns.setdefault("index", []).extend(int(i) for i in index)
        columns.setdefault("label", []).extend(int(v) for v in labels.cpu())
        for key, values in scores.items():
            if values is not None:
                columns.setdefault(key, []).extend(float(v) for v in values.detach().cpu())
        n += x.shape[0]
        if sum(t.shape[0] for t in kept_x) < keep:
            kept_x.append(x.detach().cpu())
            kept_hat.append(x_hat.detach().cpu())
    if n == 0:
        from splitinv.errors import SplitinvError

        raise SplitinvError("the evaluation set is empty: set data.n_eval to at least 1.")
    if "lpips" not in columns:
        columns["lpips"] = []  # unavailable under lpips=auto: summarised as null
    return Evaluation(
        per_image=columns,
        originals=torch.cat(kept_x)[:keep],
        reconstructions=torch.cat(kept_hat)[:keep],
        seconds=attack_seconds,
        images=n,
    )
