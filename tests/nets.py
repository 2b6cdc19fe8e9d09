"""Small networks for the custom-victim tests, importable as ``nets:FUNCTION`` (``victim.factory=``) with the
tests folder on PYTHONPATH: one that works, and one for each thing a run needs that a network can lack."""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

NOT_A_FUNCTION = 42


def tiny_cnn(num_classes: int = 10, channels: int = 3, width: int = 8) -> nn.Module:
    """Three conv blocks (full, 1/2 and 1/4 resolution) and a linear classifier, for any input size."""
    return nn.Sequential(
        OrderedDict(
            block1=nn.Sequential(nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()),
            block2=nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU()),
            block3=nn.Sequential(nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1), nn.ReLU()),
            pool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(),
            fc=nn.Linear(4 * width, num_classes),
        )
    )


def not_a_module() -> dict:
    """Returns the layers, not a network."""
    return {"fc": nn.Linear(3, 10)}


def broken() -> nn.Module:
    raise RuntimeError("no GPU here")


def fixed_size_mlp(num_classes: int = 10) -> nn.Module:
    """Takes 3x16x16 images only."""
    return nn.Sequential(OrderedDict(flatten=nn.Flatten(), fc=nn.Linear(3 * 16 * 16, num_classes)))


def feature_extractor() -> nn.Module:
    """Returns feature maps, not logits."""
    return nn.Sequential(OrderedDict(conv=nn.Conv2d(3, 4, 3, padding=1), relu=nn.ReLU()))


class _Opaque(nn.Module):
    """No submodules, and data-dependent control flow (torch.fx cannot trace it): nothing to cut at."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_classes, 3) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.mean((2, 3))
        if bool(pooled.sum() > -1e9):  # always true, but a tensor's value decides it
            pooled = F.relu(pooled)
        return F.linear(pooled, self.weight)


def opaque(num_classes: int = 10) -> nn.Module:
    return _Opaque(num_classes)
