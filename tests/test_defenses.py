"""The inference-time defenses (splitinv/defenses/): each one's own behaviour, measured on small tensors.

Noise std against the requested scale (Laplace's parameterisation included), quantisation levels and error,
top-k counts, pruned channels, the projection's orthonormality and idempotence, dropout's kept fraction,
seeded draws, straight-through gradients, flags, describe(), payloads, one-line errors, and every defense
inside a real split and from its config.
"""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch

import splitinv
from splitinv.config import compose, config_groups, instantiate
from splitinv.defenses import (
    ActivationDropout,
    ChannelPrune,
    Defense,
    GaussianNoise,
    LaplaceNoise,
    NoDefense,
    Quantize,
    RandomProjection,
    TopK,
)
from splitinv.errors import SplitinvError
from splitinv.victims import build_victim

pytestmark = pytest.mark.usefixtures("one_thread")


def _maps(b: int = 2, c: int = 8, hw: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, c, hw, hw, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------ noise


@pytest.mark.parametrize("scale", [0.05, 2.0])
def test_gaussian_absolute_std_is_the_scale(scale: float) -> None:
    h = torch.full((4, 16, 32, 32), 3.0)
    noise = GaussianNoise(scale=scale)(h) - h
    assert abs(noise.mean().item()) < 0.02 * scale
    assert noise.std().item() == pytest.approx(scale, rel=0.02)
    # Gaussian, not Laplace: E|n| = sigma * sqrt(2 / pi)
    assert noise.abs().mean().item() == pytest.approx(scale * math.sqrt(2 / math.pi), rel=0.02)


def test_laplace_scale_is_b_and_std_is_b_sqrt2() -> None:
    b = 0.5
    h = torch.zeros(4, 16, 32, 32)
    noise = LaplaceNoise(scale=b)(h)
    assert noise.std().item() == pytest.approx(b * math.sqrt(2), rel=0.03)
    assert noise.abs().mean().item() == pytest.approx(b, rel=0.02)  # E|n| = b for Laplace(0, b)
    assert abs(noise.mean().item()) < 0.02


@pytest.mark.parametrize(("cls", "factor"), [(GaussianNoise, 1.0), (LaplaceNoise, math.sqrt(2))])
def test_relative_noise_follows_each_images_own_std(cls: type, factor: float) -> None:
    stds = torch.tensor([0.5, 4.0, 20.0])
    h = torch.randn(3, 16, 24, 24, generator=torch.Generator().manual_seed(1)) * stds.view(3, 1, 1, 1) + 7.0
    defense = cls(scale=0.3, relative=True)
    noise = defense(h) - h
    image_std = h.reshape(3, -1).std(dim=1, correction=0)
    measured = noise.reshape(3, -1).std(dim=1)
    torch.testing.assert_close(measured, 0.3 * factor * image_std, rtol=0.03, atol=0)
    # per image: an image's noise scale does not depend on its batch
    alone = defense.sigma(h[1:2])
    torch.testing.assert_close(defense.sigma(h)[1:2], alone)


def test_zero_scale_noise_is_the_identity_and_gradient_passes() -> None:
    h = _maps().requires_grad_(True)
    assert torch.equal(GaussianNoise(scale=0.0)(h), h)
    for defense in (GaussianNoise(0.5, relative=True), LaplaceNoise(0.5)):
        (grad,) = torch.autograd.grad(defense(h).sum(), h)
        torch.testing.assert_close(grad, torch.ones_like(h))


# ------------------------------------------------------------------------------------------ seeded draws


@pytest.mark.parametrize(
    "make",
    [
        lambda s: GaussianNoise(1.0, seed=s),
        lambda s: LaplaceNoise(1.0, seed=s),
        lambda s: ActivationDropout(0.5, seed=s),
    ],
    ids=["gaussian", "laplace", "dropout"],
)
def test_same_seed_same_draws_other_seed_other_draws(make) -> None:
    h = _maps() + 5.0
    a, b, c = make(0), make(0), make(1)
    a1, a2 = a(h), a(h)
    b1, b2 = b(h), b(h)
    assert torch.equal(a1, b1) and torch.equal(a2, b2)  # the same sequence of draws
    assert not torch.equal(a1, a2)  # fresh draws on every call
    assert not torch.equal(a1, c(h))
    a.reset()
    assert torch.equal(a(h), a1)  # reset restarts the sequence


def test_defenses_do_not_touch_the_global_rng() -> None:
    h = _maps()
    torch.manual_seed(123)
    expected = torch.rand(5)
    torch.manual_seed(123)
    for defense in (
        GaussianNoise(1.0),
        LaplaceNoise(1.0),
        ActivationDropout(0.3),
        ChannelPrune(0.5),
        RandomProjection(0.2),
    ):
        defense(h)
    assert torch.equal(torch.rand(5), expected)
    # and the global stream does not change the defense's draws
    torch.manual_seed(0)
    first = GaussianNoise(1.0)(h)
    torch.manual_seed(99)
    assert torch.equal(GaussianNoise(1.0)(h), first)


# ----------------------------------------------------------------------------------------------- dropout


@pytest.mark.parametrize("p", [0.2, 0.7])
def test_dropout_keeps_1_minus_p_and_rescales(p: float) -> None:
    h = torch.rand(4, 16, 32, 32) + 1.0  # no zeros of its own
    defense = ActivationDropout(p=p).eval()  # kept at inference
    out = defense(h)
    kept = out != 0
    assert kept.float().mean().item() == pytest.approx(1 - p, abs=0.01)
    torch.testing.assert_close(out[kept], h[kept] / (1 - p))
    raw = ActivationDropout(p=p, rescale=False)(h)
    assert torch.equal(raw[raw != 0], h[raw != 0])
    assert torch.equal(ActivationDropout(p=0.0)(h), h)


# ---------------------------------------------------------------------------------------------- quantize


@pytest.mark.parametrize("bits", [1, 2, 3, 5])
def test_quantize_per_tensor_levels_and_error(bits: int) -> None:
    h = _maps(b=3, c=8, hw=8) * torch.tensor([1.0, 10.0, 0.1]).view(3, 1, 1, 1)
    q = Quantize(bits=bits, granularity="tensor")(h)
    for i in range(3):
        lo, hi = h[i].min(), h[i].max()
        step = (hi - lo) / (2**bits - 1)
        assert q[i].unique().numel() <= 2**bits
        assert (q[i] - h[i]).abs().max() <= step / 2 * (1 + 1e-5)
        assert q[i].min() == pytest.approx(lo.item()) and q[i].max() == pytest.approx(hi.item())
    assert q.unique().numel() > 2**bits  # each image has its own range
    torch.testing.assert_close(Quantize(bits=bits)(h[1:2]), q[1:2], rtol=0, atol=0)  # batch-independent


@pytest.mark.parametrize("bits", [1, 3])
def test_quantize_per_channel_levels_and_error(bits: int) -> None:
    ranges = torch.logspace(-2, 2, 8).view(1, 8, 1, 1)
    h = _maps(b=2, c=8, hw=8) * ranges
    q = Quantize(bits=bits, granularity="channel")(h)
    for i in range(2):
        for c in range(8):
            x, y = h[i, c], q[i, c]
            step = (x.max() - x.min()) / (2**bits - 1)
            assert y.unique().numel() <= 2**bits
            assert (y - x).abs().max() <= step / 2 * (1 + 1e-5)
    # per channel resolves the small-range channel that per tensor flattens
    small = (q[:, 0] - h[:, 0]).abs().max()
    coarse = (Quantize(bits=bits, granularity="tensor")(h)[:, 0] - h[:, 0]).abs().max()
    assert small < coarse / 10


def test_quantize_tokens_use_the_last_dim_as_channels() -> None:
    tokens = torch.randn(2, 10, 4) * torch.tensor([0.01, 1.0, 10.0, 100.0])
    q = Quantize(bits=2, granularity="channel")(tokens)
    for c in range(4):
        x, y = tokens[:, :, c], q[:, :, c]
        for i in range(2):
            step = (x[i].max() - x[i].min()) / 3
            assert y[i].unique().numel() <= 4
            assert (y[i] - x[i]).abs().max() <= step / 2 * (1 + 1e-5)
    const = torch.full((2, 5), 3.25)
    assert torch.equal(Quantize(bits=1)(const), const)  # one value: sent exactly


def test_quantize_channel_on_vectors_is_refused() -> None:
    with pytest.raises(SplitinvError, match="granularity=tensor") as err:
        Quantize(bits=4, granularity="channel")(torch.randn(2, 16))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "make",
    [lambda: Quantize(bits=2), lambda: Quantize(3, "channel"), lambda: TopK(5)],
    ids=["quantize-tensor", "quantize-channel", "topk"],
)
def test_straight_through_gradient_is_the_identity(make) -> None:
    h = _maps().requires_grad_(True)
    defense = make()
    out = defense(h)
    assert not torch.equal(out, h)  # the forward value is transformed ...
    (grad,) = torch.autograd.grad(out.sum(), h)
    assert torch.equal(grad, torch.ones_like(h))  # ... the backward pass is not
    with torch.no_grad():
        assert torch.equal(defense(h), out.detach())  # the same value with and without autograd


# -------------------------------------------------------------------------------------------------- topk


@pytest.mark.parametrize(("k", "count"), [(7, 7), (0.1, 29), (1.0, 288)])
def test_topk_keeps_exactly_k_largest_per_image(k: int | float, count: int) -> None:
    h = _maps(b=3)  # 8 * 6 * 6 = 288 per image
    out = TopK(k)(h)
    flat, sent = h.reshape(3, -1), out.reshape(3, -1)
    assert ((sent != 0).sum(dim=1) == count).all()
    for i in range(3):
        kept = sent[i] != 0
        assert torch.equal(sent[i][kept], flat[i][kept])  # values unchanged
        if count < flat.shape[1]:
            assert flat[i][kept].abs().min() >= flat[i][~kept].abs().max()
    assert TopK(k).payload_elements((8, 6, 6)) == 2 * count


def test_topk_on_tokens_and_vectors() -> None:
    for shape in [(2, 10, 6), (2, 30)]:
        out = TopK(4)(torch.randn(shape))
        assert out.shape == shape and ((out.reshape(2, -1) != 0).sum(1) == 4).all()


def test_topk_count_larger_than_the_activation_is_refused_at_first_call() -> None:
    defense = TopK(300)  # fine until it sees 288 activations
    with pytest.raises(SplitinvError, match="larger than the 288") as err:
        defense(_maps())
    assert "\n" not in str(err.value)
    with pytest.raises(SplitinvError, match="larger than"):
        defense.payload_elements((8, 6, 6))


# ------------------------------------------------------------------------------------------------- prune


def test_prune_zeroes_exactly_the_chosen_channels_every_call() -> None:
    defense = ChannelPrune(fraction=0.25, seed=3)
    chosen = defense.pruned_channels(16)
    assert len(chosen) == 4 and len(chosen.unique()) == 4
    for seed in (0, 1):
        h = _maps(b=2, c=16, seed=seed) + 10.0  # no zeros of its own
        out = defense(h)
        zero = (out == 0).all(dim=(0, 2, 3))
        assert torch.equal(zero.nonzero().flatten(), chosen)
        keep = ~zero
        assert torch.equal(out[:, keep], h[:, keep])
    assert torch.equal(ChannelPrune(0.25, seed=3).pruned_channels(16), chosen)  # fixed by seed and C
    assert not torch.equal(ChannelPrune(0.25, seed=4).pruned_channels(16), chosen)
    assert defense.payload_elements((16, 6, 6)) == 12 * 36


def test_prune_channels_of_tokens_and_vectors() -> None:
    defense = ChannelPrune(fraction=0.5)
    tokens = torch.rand(2, 5, 8) + 1
    out = defense(tokens)
    chosen = defense.pruned_channels(8)
    assert (out[:, :, chosen] == 0).all() and (out.count_nonzero(dim=(0, 1)) > 0).sum() == 4
    vectors = torch.rand(3, 8) + 1
    assert torch.equal((defense(vectors) == 0).all(0).nonzero().flatten(), chosen)
    assert defense.payload_elements((5, 8)) == 5 * 4 and defense.payload_elements((8,)) == 4


# -------------------------------------------------------------------------------------------- projection


def test_projection_rows_are_orthonormal_and_restore_is_the_orthogonal_projection() -> None:
    defense = RandomProjection(dims=0.25)
    h = _maps(b=3)  # d = 288, k = 72
    v = defense(h)
    assert v.shape == (3, 72) and defense.payload_elements((8, 6, 6)) == 72
    p = defense.matrix(288)
    assert p.shape == (72, 288)
    torch.testing.assert_close(p @ p.T, torch.eye(72), atol=1e-5, rtol=0)
    r = defense.restore(v)
    assert r.shape == h.shape
    torch.testing.assert_close(r.reshape(3, -1), h.reshape(3, -1) @ p.T @ p)
    torch.testing.assert_close(defense.restore(defense(r)), r, atol=1e-5, rtol=0)  # idempotent
    residual = (h - r).reshape(3, -1)
    torch.testing.assert_close((residual * r.reshape(3, -1)).sum(1), torch.zeros(3), atol=1e-4, rtol=0)
    assert not torch.allclose(r, h, atol=1e-2)  # it removes something


def test_projection_is_seeded_and_counts_dims() -> None:
    h = _maps()
    assert torch.equal(RandomProjection(10, seed=0)(h), RandomProjection(10, seed=0)(h))
    assert not torch.allclose(RandomProjection(10, seed=0)(h), RandomProjection(10, seed=1)(h))
    assert RandomProjection(10)(h).shape == (2, 10)
    tokens = torch.randn(2, 5, 8)
    defense = RandomProjection(0.5)
    assert defense(tokens).shape == (2, 20) and defense.restore(defense(tokens)).shape == (2, 5, 8)


def test_projection_refuses_a_matrix_over_the_memory_limit_and_restore_before_observe() -> None:
    with pytest.raises(SplitinvError, match="later cut") as err:
        RandomProjection(dims=0.5, max_elements=1000)(_maps())
    assert "\n" not in str(err.value)
    with pytest.raises(SplitinvError, match="observe") as err:
        RandomProjection(0.5).restore(torch.zeros(2, 10))
    assert "\n" not in str(err.value)
    with pytest.raises(SplitinvError, match="larger than the 288"):
        RandomProjection(dims=289)(_maps())


# --------------------------------------------------------------------------------- flags, describe, errors


ALL = [
    GaussianNoise(0.1),
    LaplaceNoise(0.1, relative=True),
    ActivationDropout(0.3, rescale=False),
    Quantize(4, "channel"),
    TopK(0.2),
    ChannelPrune(0.5, seed=2),
    RandomProjection(0.3, seed=1),
]


def test_stochastic_flags_and_describe() -> None:
    stochastic = {d.name: d.stochastic for d in ALL}
    assert stochastic == {
        "gaussian": True,
        "laplace": True,
        "dropout": True,
        "quantize": False,
        "topk": False,
        "prune": False,
        "projection": False,
    }
    described = {d.name: d.describe() for d in ALL}
    assert described == {
        "gaussian": {"name": "gaussian", "scale": 0.1, "relative": False, "seed": 0},
        "laplace": {"name": "laplace", "scale": 0.1, "relative": True, "seed": 0},
        "dropout": {"name": "dropout", "p": 0.3, "rescale": False, "seed": 0},
        "quantize": {"name": "quantize", "bits": 4, "granularity": "channel"},
        "topk": {"name": "topk", "k": 0.2},
        "prune": {"name": "prune", "fraction": 0.5, "seed": 2},
        "projection": {"name": "projection", "dims": 0.3, "seed": 1, "max_elements": 2**27},
    }
    json.dumps(described)
    assert not any(d.is_identity for d in ALL)


def test_payload_elements() -> None:
    shape = (8, 6, 6)
    payloads = {d.name: d.payload_elements(shape) for d in ALL}
    assert payloads == {
        "gaussian": 288,
        "laplace": 288,
        "dropout": 288,
        "quantize": 288,
        "topk": 2 * 58,
        "prune": 4 * 36,
        "projection": 86,
    }


BAD = [
    (GaussianNoise, {"scale": -0.1}, "scale must be >= 0"),
    (LaplaceNoise, {"scale": float("nan")}, "scale must be a finite number"),
    (GaussianNoise, {"scale": "big"}, "scale must be a finite number"),
    (GaussianNoise, {"relative": "yes"}, "relative must be true or false"),
    (GaussianNoise, {"seed": 1.5}, "seed must be an integer"),
    (ActivationDropout, {"p": 1.0}, r"p must be in \[0, 1\)"),
    (ActivationDropout, {"p": -0.1}, r"p must be in \[0, 1\)"),
    (ActivationDropout, {"rescale": 1}, "rescale must be true or false"),
    (Quantize, {"bits": 0}, "bits must be an integer from 1"),
    (Quantize, {"bits": 4.0}, "bits must be an integer from 1"),
    (Quantize, {"bits": 33}, "bits must be an integer from 1"),
    (Quantize, {"granularity": "pixel"}, "unknown granularity 'pixel'"),
    (TopK, {"k": 0}, "k must be >= 1"),
    (TopK, {"k": -3}, "k must be >= 1"),
    (TopK, {"k": 0.0}, "neither a count"),
    (TopK, {"k": 1.5}, "neither a count"),
    (TopK, {"k": True}, "must be a count"),
    (ChannelPrune, {"fraction": 0.0}, r"fraction must be in \(0, 1\]"),
    (ChannelPrune, {"fraction": 1.2}, r"fraction must be in \(0, 1\]"),
    (ChannelPrune, {"seed": "0"}, "seed must be an integer"),
    (RandomProjection, {"dims": 0}, "dims must be >= 1"),
    (RandomProjection, {"dims": 2.0}, "neither a count"),
    (RandomProjection, {"max_elements": 0}, "max_elements must be a positive integer"),
]


@pytest.mark.parametrize(("cls", "kwargs", "match"), BAD, ids=[f"{c.__name__}-{k}" for c, k, _ in BAD])
def test_bad_parameters_are_refused_in_one_line(cls: type, kwargs: dict, match: str) -> None:
    with pytest.raises(SplitinvError, match=match) as err:
        cls(**kwargs)
    message = str(err.value)
    assert "\n" not in message and "defense." in message  # says which setting to change


# ----------------------------------------------------------------------------------- splits and configs


@pytest.fixture(scope="module")
def victim() -> torch.nn.Module:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights
        return build_victim("resnet18", image_size=32, num_classes=10).eval()


@pytest.mark.parametrize("defense", ALL, ids=[d.name for d in ALL])
def test_every_defense_in_a_split_gives_logits(victim: torch.nn.Module, defense: Defense) -> None:
    the_split = splitinv.split(victim, "layer2", defense)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        observation = the_split.observe(x)
        logits = the_split.serve(observation)
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    head = the_split.head(x)  # (2, 128, 4, 4)
    expected = (2, defense.count(head[0].numel())) if isinstance(defense, RandomProjection) else head.shape
    assert observation.shape == expected


def test_every_defense_config_composes_and_instantiates() -> None:
    names = config_groups()["defense"]
    assert {"none", "gaussian", "laplace", "dropout", "quantize", "topk", "prune", "projection"} <= set(names)
    for name in names:
        defense = instantiate(compose([f"defense={name}"]).defense)
        assert isinstance(defense, Defense) and defense.name == name
        json.dumps(defense.describe())
        out = defense(_maps())
        assert out.shape[0] == 2
    assert isinstance(instantiate(compose(["defense=none"]).defense), NoDefense)
