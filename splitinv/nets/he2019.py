"""He, Zhang, Lee (ACSAC 2019)'s networks, with the paper's layer names as cut points, and their inverse
networks.

- ``he2019_mnist``: LeNet on 28x28 MNIST (conv1 8@5x5, ReLU1, pool1, conv2 16@5x5, ReLU2, pool2,
  fc 120-84-10), normalised with mean = std = 0.5 as the public code does. The paper cuts
  at ``conv1`` and ``ReLU2``.
- ``he2019_cifar``: the 6-conv + 2-FC CIFAR-10 network (conv11..conv32 at 64-128-128 channels, 3x3, three 2x2
  max-pools, fc1 512 with a sigmoid, fc2 10), normalised with ImageNet's mean and std as the public code does.
  The paper cuts at ``conv11``, ``ReLU22`` and ``ReLU32``.

Parameter names are the public code's (``conv1.weight``, ``fc3.bias``...), so a state_dict of the authors'
models loads as is. The ReLUs are not in-place (the code's LeNet uses ``ReLU(True)``): an in-place ReLU would
overwrite ``conv1``'s output when several cut points are read in one forward pass.

:data:`PAPER_CUTS` says which cut the paper calls shallow and deep (its rMLE schedule), and
:func:`he2019_decoder` builds the paper's per-layer inverse network for a cut.
"""

from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

from torch import nn

from splitinv.errors import SplitinvError

MNIST_NORM = ((0.5,), (0.5,))
CIFAR_NORM = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

# the cut points the paper evaluates, and whether its rMLE schedule treats them as shallow or deep
PAPER_CUTS: dict[str, dict[str, str]] = {
    "he2019_mnist": {"conv1": "shallow", "ReLU2": "deep"},
    "he2019_cifar": {"conv11": "shallow", "ReLU22": "deep", "ReLU32": "deep"},
}


def lenet(num_classes: int = 10, channels: int = 1) -> nn.Module:
    """The paper's LeNet for 28x28 images (16 x 4 x 4 features before the classifier)."""
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(channels, 8, 5),
            ReLU1=nn.ReLU(),
            pool1=nn.MaxPool2d(2, 2),
            conv2=nn.Conv2d(8, 16, 5),
            ReLU2=nn.ReLU(),
            pool2=nn.MaxPool2d(2, 2),
            flatten=nn.Flatten(),
            fc1=nn.Linear(16 * 4 * 4, 120),
            fc1act=nn.ReLU(),
            fc2=nn.Linear(120, 84),
            fc2act=nn.ReLU(),
            fc3=nn.Linear(84, num_classes),
        )
    )


def cifar10_cnn(num_classes: int = 10, channels: int = 3) -> nn.Module:
    """The paper's CIFAR-10 network for 32x32 images (128 x 4 x 4 features before the classifier)."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    cin = channels
    for stage, cout in ((1, 64), (2, 128), (3, 128)):
        for j in (1, 2):
            layers[f"conv{stage}{j}"] = nn.Conv2d(cin, cout, 3, padding=1)
            layers[f"ReLU{stage}{j}"] = nn.ReLU()
            cin = cout
        layers[f"pool{stage}"] = nn.MaxPool2d(2, 2)
    layers["flatten"] = nn.Flatten()
    layers["fc1"] = nn.Linear(4 * 4 * 128, 512)
    layers["fc1act"] = nn.Sigmoid()
    layers["fc2"] = nn.Linear(512, num_classes)
    return nn.Sequential(layers)


_NETWORKS = {
    "he2019_mnist": (lenet, 28, 1, MNIST_NORM),
    "he2019_cifar": (cifar10_cnn, 32, 3, CIFAR_NORM),
}


def build_he2019(
    name: str,
    weights: str | os.PathLike | None = None,
    num_classes: int | None = None,
    image_size: int | None = None,
    **kwargs: Any,
) -> Any:
    """``victim=he2019_mnist`` / ``victim=he2019_cifar``: the paper's network as a Victim on [0, 1] images.

    ``weights``: None (random, warned about), a ``splitinv-train-victim`` checkpoint, or a state_dict with the
    paper code's parameter names. The networks take one image size only (28 and 32 px).
    """
    from splitinv.victims import Victim, _load_state, _read_weights, is_random_weights

    if kwargs:
        raise SplitinvError(f"victim {name} takes no extra settings, got {sorted(kwargs)}.")
    factory, size, channels, (mean, std) = _NETWORKS[name]
    if image_size not in (None, size):
        raise SplitinvError(f"victim {name} takes {size} px images (the paper's), not {image_size}.")
    desc = "random"
    if is_random_weights(weights):
        model = factory(num_classes or 10, channels)
        warnings.warn(f"victim {name} has RANDOM weights (weights=None): train it first.", stacklevel=3)
    else:
        path = Path(weights).expanduser()
        state, checkpoint = _read_weights(path, name)
        if checkpoint is not None:
            num_classes = num_classes or int(checkpoint["num_classes"])
        model = factory(num_classes or 10, channels)
        _load_state(model, state, path, name)
        desc = str(path)
    victim = Victim(
        model,
        name=name,
        family="he2019",
        weights=desc,
        image_size=size,
        num_classes=num_classes or 10,
        mean=mean,
        std=std,
    )
    victim.paper_cuts = dict(PAPER_CUTS[name])  # splitinv-run records it; rMLE's schedule reads it
    return victim.eval()


def build_he2019_mnist(weights: Any = None, num_classes: int | None = None, **kwargs: Any) -> Any:
    """The registered ``he2019_mnist`` victim (see :func:`build_he2019`)."""
    return build_he2019("he2019_mnist", weights, num_classes, **kwargs)


def build_he2019_cifar(weights: Any = None, num_classes: int | None = None, **kwargs: Any) -> Any:
    """The registered ``he2019_cifar`` victim (see :func:`build_he2019`)."""
    return build_he2019("he2019_cifar", weights, num_classes, **kwargs)


# ------------------------------------------------------------------------------------- inverse networks


def _deconv(cin: int, cout: int, **kw: Any) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(cin, cout, **kw)


def he2019_decoder(victim: str, cut: str) -> nn.Module:
    """The public code's inverse network for ``victim`` cut at ``cut``; outputs a normalised image.

    LeNet: conv1 -> one 5x5 convolution (padding 4); ReLU2 -> deconv 5x5, ReLU, deconv 5x5 stride 2.
    CIFAR: conv11 -> one 3x3 deconvolution; ReLU22 -> deconv stride 2, ReLU, deconv; ReLU32 -> two stride-2
    deconvolutions with ReLUs, then one 3x3 deconvolution.
    """
    layers: dict[tuple[str, str], list[tuple[str, nn.Module]]] = {
        ("he2019_mnist", "conv1"): [("conv1", nn.Conv2d(8, 1, 5, padding=4))],
        ("he2019_mnist", "ReLU2"): [
            ("deconv1", _deconv(16, 8, kernel_size=5)),
            ("ReLU1", nn.ReLU()),
            ("deconv2", _deconv(8, 1, kernel_size=5, stride=2, output_padding=1)),
        ],
        ("he2019_cifar", "conv11"): [("deconv11", _deconv(64, 3, kernel_size=3, padding=1))],
        ("he2019_cifar", "ReLU22"): [
            ("deconv11", _deconv(128, 64, kernel_size=3, stride=2, padding=1, output_padding=1)),
            ("ReLU11", nn.ReLU()),
            ("deconv21", _deconv(64, 3, kernel_size=3, padding=1)),
        ],
        ("he2019_cifar", "ReLU32"): [
            ("deconv11", _deconv(128, 128, kernel_size=3, stride=2, padding=1, output_padding=1)),
            ("ReLU11", nn.ReLU()),
            ("deconv21", _deconv(128, 64, kernel_size=3, stride=2, padding=1, output_padding=1)),
            ("ReLU21", nn.ReLU()),
            ("deconv31", _deconv(64, 3, kernel_size=3, padding=1)),
        ],
    }
    key = (str(victim), str(cut))
    if key not in layers:
        known = ", ".join(f"{v} at {c}" for v, c in layers)
        raise SplitinvError(
            f"He et al. published no inverse network for {victim} at {cut} (they did for {known}): "
            "use attack.preset=null for splitinv's decoder."
        )
    return nn.Sequential(OrderedDict(layers[key]))
