"""Tests for splitinv.cut: every configured victim cuts exactly, heads and tails share the victim's
parameters, one-line errors name the nearest valid points, and the forward-hook fallback works."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from torch import fx, nn

from splitinv import build_victim, cut, cut_points, describe_cut_points, stage_points
from splitinv.config import compose
from splitinv.errors import SplitinvError

CONF = Path(__file__).resolve().parents[1] / "conf" / "victim"
# custom.yaml wraps the user's own module (victim.factory): tests/test_custom_victim.py covers it
CONFIG_NAMES = sorted(p.stem for p in CONF.glob("*.yaml") if p.stem != "custom")
SIZE = 64
ATOL = 1e-5


def _images(size: int, batch: int = 2, seed: int = 0, channels: int = 3) -> torch.Tensor:
    return torch.rand(batch, channels, size, size, generator=torch.Generator().manual_seed(seed))


def _random_victim(name: str, size: int, **kwargs):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "victim .* has RANDOM weights", UserWarning)
        return build_victim(name, image_size=size, **kwargs)


def _assert_round_trip(model: nn.Module, point: str, x: torch.Tensor, method: str = "auto") -> torch.Tensor:
    """tail(head(x)) == model(x); the tail leaves its input alone. Returns the head's output."""
    head, tail = cut(model, point, method=method)
    assert not head.training and not tail.training
    with torch.no_grad():
        ref = model(x)
        z = head(x)
        z_before = z.clone()
        out = tail(z)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=0, msg=lambda m: f"cut at {point}: {m}")
    assert torch.equal(z, z_before), f"the tail at {point} modified its input in place"
    return z


def _one_line(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert isinstance(excinfo.value, SplitinvError)
    assert message and "\n" not in message, message
    return message


def _shape_of(points, name: str) -> tuple[int, ...]:
    """The listed shape of a cut point, looked up by its name or one of its aliases."""
    for p in points:
        if name == p.name or name in p.aliases:
            return p.shape
    raise AssertionError(f"{name} is not a listed cut point nor an alias: {[p.name for p in points]}")


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def resnet18():
    return _random_victim("resnet18", SIZE)


# -------------------------------------------------------------------------------------------------- configs


@pytest.mark.filterwarnings("ignore:victim .* has RANDOM weights:UserWarning")
@pytest.mark.parametrize("stem", CONFIG_NAMES)
def test_every_victim_config_cuts_exactly(stem):
    """Each conf/victim/*.yaml, built at 64 px (or its own size, for the fixed-size networks of papers that
    are smaller), cuts at its configured point and at each stage boundary."""
    size = min(SIZE, int(compose([f"victim={stem}"]).victim.image_size))
    cfg = compose([f"victim={stem}", f"victim.image_size={size}", "victim.weights=null"])
    assert cfg.victim.name and cfg.cut, f"conf/victim/{stem}.yaml must set victim.name and cut"
    with pytest.warns(UserWarning, match="RANDOM weights"):
        victim = instantiate(cfg.victim)
    assert victim.image_size == size and not victim.training
    channels = len(victim.mean)

    points = describe_cut_points(victim, image_size=size)
    assert [p.index for p in points] == list(range(len(points)))
    stages = stage_points(victim)
    index = {n: p.index for p in points for n in (p.name, *p.aliases)}  # stages may be aliases: blocks.11
    assert all(s in index for s in stages) and stages == sorted(stages, key=index.get)
    tokens = any(len(p.shape) == 2 for p in points)  # (N, C): a transformer
    if tokens:
        stages += stage_points(victim, every=4)
    else:
        assert len(stages) >= 4, f"{stem}: a CNN has several resolutions: {stages}"

    x = _images(size, channels=channels)
    for point in [cfg.cut, *stages]:
        z = _assert_round_trip(victim, point, x)
        assert tuple(z.shape) == (2, *_shape_of(points, point)), point
    if tokens:
        assert len(_shape_of(points, cfg.cut)) == 2, f"{stem}: the configured ViT cut should give tokens"


# ---------------------------------------------------------------------------------------------- all points


def test_every_resnet18_point_round_trips(resnet18):
    points = describe_cut_points(resnet18, image_size=SIZE)
    names = [p.name for p in points]
    assert names == cut_points(resnet18)
    assert {"conv1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool", "fc"} <= set(names)
    assert not any(".conv" in n or ".bn" in n for n in names), "points inside residual blocks are listed"
    x = _images(SIZE)
    for point in points:
        z = _assert_round_trip(resnet18, point.name, x)
        assert tuple(z.shape) == (2, *point.shape), point.name
        for alias in point.aliases:  # an alias names the very same activation
            head, _ = cut(resnet18, alias)
            with torch.no_grad():
                assert torch.equal(head(x), z), f"{alias} is listed as an alias of {point.name}"
    assert _shape_of(points, "layer2") == (128, SIZE // 8, SIZE // 8)


def test_every_deit_point_round_trips_and_blocks_give_tokens():
    deit = _random_victim("deit_small_patch16_224", 32)
    points = describe_cut_points(deit, image_size=32)
    names = [p.name for p in points]
    assert [f"blocks.{i}" for i in range(11)] == [n for n in names if n.startswith("blocks.")]
    assert _shape_of(points, "blocks.11") == _shape_of(points, "blocks")
    x = _images(32)
    tokens = 1 + (32 // 16) ** 2
    for point in points:
        z = _assert_round_trip(deit, point.name, x)
        assert tuple(z.shape) == (2, *point.shape), point.name
        if point.name.startswith("blocks") or point.name in ("norm_pre", "pos_drop", "norm"):
            assert z.shape == (2, tokens, 384), point.name  # (B, N, C) tokens, class token included


# -------------------------------------------------------------------------------------------------- structure


def test_head_and_tail_share_the_victims_parameters(resnet18):
    head, tail = cut(resnet18, "layer2")
    params = dict(resnet18.model.named_parameters())
    head_params = dict(head.named_parameters())
    tail_params = dict(tail.named_parameters())
    assert head_params and tail_params
    for name, p in head_params.items():
        assert name.startswith("body.")
        assert p is params[name[len("body.") :]] and p.data_ptr() == params[name[len("body.") :]].data_ptr()
    for name, p in tail_params.items():
        assert p is params[name]
    head_ids, tail_ids = {id(p) for p in head_params.values()}, {id(p) for p in tail_params.values()}
    assert head_ids | tail_ids == {id(p) for p in params.values()} and not head_ids & tail_ids
    # the head holds nothing after the cut, the tail nothing before it
    assert {n.split(".")[1] for n in head_params} == {"conv1", "bn1", "layer1", "layer2"}
    assert {n.split(".")[0] for n in tail_params} == {"layer3", "layer4", "fc"}
    assert not any(n.startswith(("layer3", "layer4", "fc")) for n, _ in head.body.named_modules())
    assert head.body.bn1 is resnet18.model.bn1  # buffers (running stats) are shared too
    assert head.normalize is resnet18.normalize
    # a change to the victim's weights shows in the head: nothing was copied
    x = _images(SIZE)
    with torch.no_grad():
        before = head(x).clone()
        resnet18.model.layer2[1].bn2.bias += 1.0
        try:
            assert not torch.allclose(head(x), before)
        finally:
            resnet18.model.layer2[1].bn2.bias -= 1.0


@pytest.mark.parametrize("method", ["fx", "hooks"])
def test_head_normalises_its_input(resnet18, method):
    head, _ = cut(resnet18, "layer2", method=method)
    x = _images(SIZE)
    m = resnet18.model
    mean = torch.tensor(resnet18.mean).view(1, 3, 1, 1)
    std = torch.tensor(resnet18.std).view(1, 3, 1, 1)
    with torch.no_grad():
        xn = (x - mean) / std
        expected = m.layer2(m.layer1(m.maxpool(m.relu(m.bn1(m.conv1(xn))))))
        torch.testing.assert_close(head(x), expected, atol=1e-6, rtol=0)
        plain_head, _ = cut(m, "layer2", method=method)  # the bare classifier: no normalisation
        torch.testing.assert_close(plain_head(xn), expected, atol=1e-6, rtol=0)
        assert not torch.allclose(plain_head(x), expected)


def test_cutting_leaves_batchnorm_statistics_alone(resnet18):
    bn = [m for m in resnet18.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bn
    before = {k: v.clone() for k, v in resnet18.state_dict().items()}
    x = _images(SIZE)
    resnet18.train()
    try:  # listing and cutting a model in training mode runs it in eval mode, and gives the mode back
        describe_cut_points(resnet18)
        head, tail = cut(resnet18, "layer2")
        assert resnet18.training and head.training and tail.training
    finally:
        resnet18.eval()
    for method in ("fx", "hooks"):
        head, tail = cut(resnet18, "layer2", method=method)
        assert not any(m.training for m in resnet18.modules())
        tail(head(x))  # with autograd on
        with torch.no_grad():
            tail(head(x))
    after = resnet18.state_dict()
    for k, v in before.items():
        assert torch.equal(after[k], v), f"{k} changed"


def test_tail_takes_a_leaf_that_requires_grad():
    """Feature-space attacks optimise z: an in-place ReLU right after the cut (resnet's bn1) must not fail."""
    victim = _random_victim("resnet18", 32)
    x = _images(32)
    for method in ("fx", "hooks"):
        head, tail = cut(victim, "bn1", method=method)
        with torch.no_grad():
            z = head(x)
        z = z.clone().requires_grad_()
        tail(z).square().sum().backward()
        assert z.grad is not None and z.grad.abs().sum() > 0, method
        with torch.no_grad():
            torch.testing.assert_close(tail(z), victim(x), atol=ATOL, rtol=0)


# -------------------------------------------------------------------------------------------------- errors


def test_bad_points_give_one_line_errors_naming_the_nearest_points(resnet18):
    with pytest.raises(SplitinvError) as excinfo:
        cut(resnet18, "layr2")
    message = _one_line(excinfo)
    assert "no cut point 'layr2'" in message and "nearest valid points: layer2" in message

    for point, near in [("layer1.0.conv1", "maxpool, layer1.0"), ("layer2.0.bn2", "layer1, layer2.0")]:
        with pytest.raises(SplitinvError) as excinfo:
            cut(resnet18, point)
        message = _one_line(excinfo)
        assert f"'{point}'" in message and "skip connection" in message and "crossing" in message
        assert message.endswith(f"nearest valid points: {near}."), message

    with pytest.raises(SplitinvError) as excinfo:
        cut(resnet18, "layer9")
    message = _one_line(excinfo)
    assert "no cut point 'layer9'" in message and "splitinv layers resnet18" in message

    with pytest.raises(SplitinvError) as excinfo:
        cut(resnet18, "layer2", method="magic")
    assert "unknown cut method 'magic'" in _one_line(excinfo)


def test_stage_points_of_resnet18(resnet18):
    stages = stage_points(resnet18)
    assert stages == ["relu", "layer1", "layer2", "layer3", "layer4", "avgpool"]
    # the last point at each feature-map resolution, in forward order
    points = [p for p in describe_cut_points(resnet18) if len(p.shape) == 3]
    last_at = {p.shape[1:]: p.name for p in points}
    assert stages == list(last_at.values())
    assert stage_points(resnet18, every=5) == [p.name for p in describe_cut_points(resnet18)][4::5]


# -------------------------------------------------------------------------------------------------- hooks


class Branchy(nn.Module):
    """Data-dependent Python control flow (FX cannot trace it) and a skip connection around ``block``."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True)
        )
        self.block = nn.Conv2d(8, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        if h.mean() > 0.08:  # data-dependent branch
            h = h + self.block(h)
        else:
            h = h - self.block(h)
        return self.fc(torch.flatten(self.pool(h), 1))


@pytest.fixture
def branchy():
    torch.manual_seed(0)
    model = Branchy().eval()
    with torch.no_grad():  # non-trivial BN statistics
        model.stem[1].running_mean.uniform_(-0.2, 0.2)
        model.stem[1].running_var.uniform_(0.5, 1.5)
    return model


def test_untraceable_model_is_cut_with_hooks(branchy):
    with pytest.raises(fx.proxy.TraceError):
        cut_points(branchy, method="fx")
    points = describe_cut_points(branchy, image_size=32)
    names = [p.name for p in points]
    assert names == cut_points(branchy) == cut_points(branchy, method="hooks")
    # the BN before an in-place ReLU is a point of its own (its output is not the ReLU's)
    assert names == ["stem.0", "stem.1", "stem", "pool", "fc"]
    assert "block" not in names  # the skip connection crosses it
    batches = [_images(32), -_images(32)]
    with torch.no_grad():
        assert {bool(branchy.stem(x).mean() > 0.08) for x in batches} == {True, False}  # both branches
    for x in batches:
        for point in points:
            z = _assert_round_trip(branchy, point.name, x)
            assert tuple(z.shape) == (2, *point.shape), point.name
            for alias in point.aliases:
                head, _ = cut(branchy, alias)
                with torch.no_grad():
                    assert torch.equal(head(x), z), f"{alias} is listed as an alias of {point.name}"
    with pytest.raises(SplitinvError) as excinfo:
        cut(branchy, "block")
    assert "skip connection" in _one_line(excinfo)
    with pytest.raises(SplitinvError) as excinfo:
        cut(branchy, "stme")
    assert "nearest valid points: stem" in _one_line(excinfo)


def test_hooks_on_resnet18():
    victim = _random_victim("resnet18", 32)
    x = _images(32)
    z = _assert_round_trip(victim, "layer2", x, method="hooks")
    head, _ = cut(victim, "layer2", method="fx")
    with torch.no_grad():
        assert torch.equal(head(x), z)
    with pytest.raises(SplitinvError) as excinfo:
        cut(victim, "layer1.0.conv1", method="hooks")
    assert "skip connection" in _one_line(excinfo)
    with pytest.raises(SplitinvError) as excinfo:
        cut(victim, "layer1.0.relu", method="hooks")  # called twice in the block
    assert "not called exactly once" in _one_line(excinfo)
    with pytest.raises(SplitinvError) as excinfo:
        cut(victim, "layr2", method="hooks")
    assert "nearest valid points: layer2" in _one_line(excinfo)
