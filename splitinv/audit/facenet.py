"""FaceNet's Inception-ResNet-v1 face recogniser, written to facenet-pytorch's parameter names.

facenet-pytorch cannot be a dependency (it pins torch < 2.3), but its pretrained weights are plain
state_dicts (``20180402-114759-vggface2.pt``, ``20180408-102900-casia-webface.pt``): this architecture uses
the same module names, so such a file loads here with strict key checking. The network takes 160x160 RGB face
crops after ``fixed_image_standardization`` ((x * 255 - 127.5) / 128) and returns 512-d L2-normalised
embeddings; two crops of one person have a high cosine similarity.

Only the structure is reproduced (Szegedy et al. 2017, as ported from David Sandberg's TensorFlow FaceNet):
the stem, 5 x Block35 (scale 0.17), Mixed_6a, 10 x Block17 (0.10), Mixed_7a, 5 x Block8 (0.20), a last
Block8 without ReLU, average pooling, a bias-free 1792 -> 512 linear layer and BatchNorm1d. BatchNorm uses
eps=0.001 as in the TensorFlow original.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from splitinv.errors import SplitinvError
from splitinv.io import load_weights

EMBEDDING_DIM = 512
INPUT_SIZE = 160
# identities of the two released training sets (the size of the optional ``logits`` layer)
PRETRAINED_CLASSES = {"vggface2": 8631, "casia-webface": 10575}


class BasicConv2d(nn.Module):
    """Bias-free convolution, BatchNorm (eps 1e-3) and ReLU; parameters ``conv.*`` and ``bn.*``."""

    def __init__(
        self,
        in_planes: int,
        out_planes: int,
        kernel_size: int | tuple[int, int],
        stride: int = 1,
        padding: int | tuple[int, int] = 0,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_planes, out_planes, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_planes, eps=0.001, momentum=0.1)
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(self.conv(x)))


class _Residual(nn.Module):
    """An Inception-ResNet block: concatenated branches, a 1x1 ``conv2d`` back to the input width, a scaled
    residual sum, then ReLU (unless ``relu=False``)."""

    def __init__(self, scale: float, relu: bool = True) -> None:
        super().__init__()
        self.scale = scale
        self.use_relu = relu
        self.relu = nn.ReLU(inplace=False)

    def branches(self, x: Tensor) -> list[Tensor]:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv2d(torch.cat(self.branches(x), 1)) * self.scale + x
        return self.relu(out) if self.use_relu else out


class Block35(_Residual):
    """35x35 block (Inception-ResNet-A) on 256 channels: three branches of 32 channels."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__(scale)
        self.branch0 = BasicConv2d(256, 32, 1)
        self.branch1 = nn.Sequential(BasicConv2d(256, 32, 1), BasicConv2d(32, 32, 3, padding=1))
        self.branch2 = nn.Sequential(
            BasicConv2d(256, 32, 1), BasicConv2d(32, 32, 3, padding=1), BasicConv2d(32, 32, 3, padding=1)
        )
        self.conv2d = nn.Conv2d(96, 256, 1)

    def branches(self, x: Tensor) -> list[Tensor]:
        return [self.branch0(x), self.branch1(x), self.branch2(x)]


class Block17(_Residual):
    """17x17 block (Inception-ResNet-B) on 896 channels: a 1x1 branch and a factorised 7x7 branch."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__(scale)
        self.branch0 = BasicConv2d(896, 128, 1)
        self.branch1 = nn.Sequential(
            BasicConv2d(896, 128, 1),
            BasicConv2d(128, 128, (1, 7), padding=(0, 3)),
            BasicConv2d(128, 128, (7, 1), padding=(3, 0)),
        )
        self.conv2d = nn.Conv2d(256, 896, 1)

    def branches(self, x: Tensor) -> list[Tensor]:
        return [self.branch0(x), self.branch1(x)]


class Block8(_Residual):
    """8x8 block (Inception-ResNet-C) on 1792 channels: a 1x1 branch and a factorised 3x3 branch."""

    def __init__(self, scale: float = 1.0, noReLU: bool = False) -> None:
        super().__init__(scale, relu=not noReLU)
        self.branch0 = BasicConv2d(1792, 192, 1)
        self.branch1 = nn.Sequential(
            BasicConv2d(1792, 192, 1),
            BasicConv2d(192, 192, (1, 3), padding=(0, 1)),
            BasicConv2d(192, 192, (3, 1), padding=(1, 0)),
        )
        self.conv2d = nn.Conv2d(384, 1792, 1)

    def branches(self, x: Tensor) -> list[Tensor]:
        return [self.branch0(x), self.branch1(x)]


class Mixed_6a(nn.Module):
    """Reduction 256 -> 896 channels: a strided 3x3, a strided 3x3 tower and a max pool, concatenated."""

    def __init__(self) -> None:
        super().__init__()
        self.branch0 = BasicConv2d(256, 384, 3, stride=2)
        self.branch1 = nn.Sequential(
            BasicConv2d(256, 192, 1), BasicConv2d(192, 192, 3, padding=1), BasicConv2d(192, 256, 3, stride=2)
        )
        self.branch2 = nn.MaxPool2d(3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x)], 1)


class Mixed_7a(nn.Module):
    """Reduction 896 -> 1792 channels: three strided towers and a max pool, concatenated."""

    def __init__(self) -> None:
        super().__init__()
        self.branch0 = nn.Sequential(BasicConv2d(896, 256, 1), BasicConv2d(256, 384, 3, stride=2))
        self.branch1 = nn.Sequential(BasicConv2d(896, 256, 1), BasicConv2d(256, 256, 3, stride=2))
        self.branch2 = nn.Sequential(
            BasicConv2d(896, 256, 1), BasicConv2d(256, 256, 3, padding=1), BasicConv2d(256, 256, 3, stride=2)
        )
        self.branch3 = nn.MaxPool2d(3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)], 1)


class InceptionResnetV1(nn.Module):
    """Inception-ResNet-v1 returning L2-normalised 512-d embeddings of standardised 160x160 face crops.

    ``num_classes`` adds facenet-pytorch's ``logits`` layer (present in its released weight files: 8631
    classes for vggface2, 10575 for casia-webface) so that those files load strictly; it is never used for the
    embedding. Inputs are already standardised (see :func:`fixed_image_standardization`).
    """

    def __init__(self, num_classes: int | None = None, dropout_prob: float = 0.6) -> None:
        super().__init__()
        self.conv2d_1a = BasicConv2d(3, 32, 3, stride=2)
        self.conv2d_2a = BasicConv2d(32, 32, 3)
        self.conv2d_2b = BasicConv2d(32, 64, 3, padding=1)
        self.maxpool_3a = nn.MaxPool2d(3, stride=2)
        self.conv2d_3b = BasicConv2d(64, 80, 1)
        self.conv2d_4a = BasicConv2d(80, 192, 3)
        self.conv2d_4b = BasicConv2d(192, 256, 3, stride=2)
        self.repeat_1 = nn.Sequential(*(Block35(scale=0.17) for _ in range(5)))
        self.mixed_6a = Mixed_6a()
        self.repeat_2 = nn.Sequential(*(Block17(scale=0.10) for _ in range(10)))
        self.mixed_7a = Mixed_7a()
        self.repeat_3 = nn.Sequential(*(Block8(scale=0.20) for _ in range(5)))
        self.block8 = Block8(noReLU=True)
        self.avgpool_1a = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout_prob)
        self.last_linear = nn.Linear(1792, EMBEDDING_DIM, bias=False)
        self.last_bn = nn.BatchNorm1d(EMBEDDING_DIM, eps=0.001, momentum=0.1)
        self.num_classes = num_classes
        if num_classes is not None:
            self.logits = nn.Linear(EMBEDDING_DIM, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        for name in ("conv2d_1a", "conv2d_2a", "conv2d_2b", "maxpool_3a", "conv2d_3b", "conv2d_4a"):
            x = getattr(self, name)(x)
        x = self.conv2d_4b(x)
        x = self.mixed_7a(self.repeat_2(self.mixed_6a(self.repeat_1(x))))
        x = self.block8(self.repeat_3(x))
        x = self.dropout(self.avgpool_1a(x)).flatten(1)
        return F.normalize(self.last_bn(self.last_linear(x)), p=2, dim=1)


def fixed_image_standardization(images01: Tensor) -> Tensor:
    """facenet-pytorch's input standardisation for images in [0, 1]: (x * 255 - 127.5) / 128."""
    return (images01 * 255.0 - 127.5) / 128.0


def load_facenet(weights: str | os.PathLike | None) -> InceptionResnetV1:
    """An :class:`InceptionResnetV1` in eval mode with weights from a local facenet-pytorch state_dict.

    Keys are checked strictly: every parameter and buffer must be present with the right shape and nothing
    else may be there, except that the ``logits`` layer is optional (its class count is read from the file),
    BatchNorm's ``num_batches_tracked`` counters may be absent, and a ``module.`` prefix (DataParallel) is
    dropped. ``weights=None`` gives random weights (for tests only: its embeddings identify nobody).
    """
    if weights is None:
        return InceptionResnetV1().eval()
    path = Path(weights).expanduser()
    state = load_weights(
        path,
        "face recogniser",
        "pass facenet-pytorch's InceptionResnetV1 state_dict (20180402-114759-vggface2.pt or "
        "20180408-102900-casia-webface.pt) as a local file.",
    )
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise SplitinvError(f"face recogniser weights {path} are not a state_dict of tensors.")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    logits = state.get("logits.weight")
    model = InceptionResnetV1(num_classes=int(logits.shape[0]) if logits is not None else None)
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k, v in state.items() if k in own and v.shape != own[k].shape]
    if missing or unexpected or wrong:
        first = [*wrong, *missing, *unexpected][:3]
        raise SplitinvError(
            f"weights {path} do not fit facenet-pytorch's InceptionResnetV1 (missing {len(missing)}, "
            f"unexpected {len(unexpected)}, wrong shape {len(wrong)}; first: {first}): pass its plain "
            "state_dict (vggface2 or casia-webface)."
        )
    model.load_state_dict(state, strict=False)  # only num_batches_tracked may be left out (checked above)
    return model.eval()
