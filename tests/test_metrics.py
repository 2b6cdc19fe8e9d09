"""Tests for splitinv.metrics: each metric against a reference implementation, and every documented trap.

LPIPS runs without network: backbones are seeded random torchvision state_dicts written into a temporary
TORCH_HOME, and torch.hub's downloader is patched to fail (or to "download" a local file).
"""

from __future__ import annotations

import json
import urllib.error
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from skimage import data
from skimage.color import rgb2gray
from skimage.filters import gaussian
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from splitinv import metrics as M
from splitinv.errors import SplitinvError

ALEX_FILE = "alexnet-owt-7be5be79.pth"
VGG_FILE = "vgg16-397923af.pth"


# ------------------------------------------------------------------------------------------- helpers


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _pair(b: int = 3, c: int = 3, h: int = 32, w: int = 32, noise: float = 0.1, seed: int = 0):
    g = _gen(seed)
    x = torch.rand(b, c, h, w, generator=g)
    y = (x + noise * torch.randn(b, c, h, w, generator=g)).clamp(0, 1)
    return x, y


def _sk_ssim(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """skimage reference per image, on the very float32 values splitinv sees (as float64)."""
    out = []
    for i in range(a.shape[0]):
        ai = a[i].double().permute(1, 2, 0).numpy()
        bi = b[i].double().permute(1, 2, 0).numpy()
        out.append(
            structural_similarity(
                ai,
                bi,
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=False,
                data_range=1.0,
                channel_axis=-1,
            )
        )
    return np.array(out)


def _nchw(*images: np.ndarray) -> torch.Tensor:
    arr = np.stack([im if im.ndim == 3 else im[..., None] for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().contiguous()


def _photo_case(name: str, h: int, w: int, gray: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """A crop of a real photo against degraded versions of it (noise, blur, noise+blur)."""
    img = getattr(data, name)().astype(np.float64) / 255.0
    crop = img[60 : 60 + h, 80 : 80 + w]
    if gray:
        crop = rgb2gray(crop)
    ch = None if gray else -1
    rng = np.random.default_rng(1)
    noisy = np.clip(crop + 0.05 * rng.standard_normal(crop.shape), 0, 1)
    blur = gaussian(crop, sigma=1.0, channel_axis=ch)
    both = np.clip(gaussian(crop, sigma=0.7, channel_axis=ch) + 0.02 * rng.standard_normal(crop.shape), 0, 1)
    return _nchw(crop, crop, crop), _nchw(noisy, blur, both)


# ------------------------------------------------------------------------------------------- PSNR


def test_psnr_matches_numpy_and_skimage_per_image():
    x, y = _pair(b=4, noise=0.05)
    y[1] = (x[1] + 0.3 * torch.randn(x[1].shape, generator=_gen(5))).clamp(0, 1)
    got = M.psnr(x, y)
    assert got.dtype == torch.float32 and got.shape == (4,)
    xn, yn = x.double().numpy(), y.double().numpy()
    ref_np = 10 * np.log10(1.0 / ((xn - yn) ** 2).reshape(4, -1).mean(1))
    ref_sk = np.array([peak_signal_noise_ratio(xn[i], yn[i], data_range=1.0) for i in range(4)])
    np.testing.assert_allclose(got.numpy(), ref_np, atol=1e-4)
    np.testing.assert_allclose(got.numpy(), ref_sk, atol=1e-4)
    assert got[1] < got[0] - 10  # the very different error really is per image


def test_psnr_mean_of_images_is_not_batch_pooled():
    """The torchmetrics trap: PSNR of the pooled MSE is not the mean of per-image PSNRs."""
    from torchmetrics.functional.image import peak_signal_noise_ratio as tm_psnr

    x = torch.rand(2, 3, 32, 32, generator=_gen(0))
    y = x.clone()
    y[0] = (x[0] + 0.01 * torch.randn(x[0].shape, generator=_gen(1))).clamp(0, 1)  # ~40 dB
    y[1] = (x[1] + 0.3 * torch.randn(x[1].shape, generator=_gen(2))).clamp(0, 1)  # ~11 dB
    per_image_mean = M.psnr(x, y).mean().item()
    pooled = 10 * np.log10(1.0 / ((x - y) ** 2).mean().item())
    tm_pooled = tm_psnr(y, x, data_range=1.0).item()  # dim=None pools over the batch
    assert tm_pooled == pytest.approx(pooled, abs=1e-3)
    assert per_image_mean - pooled > 10.0
    tm_per_image = tm_psnr(y, x, data_range=1.0, dim=(1, 2, 3), reduction="none")
    torch.testing.assert_close(M.psnr(x, y), tm_per_image, atol=1e-4, rtol=0)


def test_psnr_identical_images_are_capped_at_100_db():
    x = torch.rand(2, 1, 16, 16, generator=_gen(0))
    got = M.psnr(x, x)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, torch.full((2,), 100.0))


def test_half_precision_inputs_are_scored_in_float32():
    x, y = _pair(b=2, h=24, w=24)
    xb, yb = x.bfloat16(), y.bfloat16()
    for fn in (M.psnr, M.ssim):
        got = fn(xb, yb)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, fn(xb.float(), yb.float()), atol=0, rtol=0)
    assert M.psnr(x.half(), y.half()).dtype == torch.float32


# ------------------------------------------------------------------------------------------- SSIM


@pytest.mark.parametrize(
    ("c", "h", "w", "noise"),
    [
        (3, 11, 11, 0.2),
        (3, 32, 32, 0.1),
        (3, 64, 64, 0.3),
        (3, 40, 57, 0.05),
        (1, 23, 64, 0.1),
        (1, 32, 32, 1.0),
    ],
)
def test_ssim_matches_skimage_on_random_pairs(c, h, w, noise):
    x, y = _pair(b=3, c=c, h=h, w=w, noise=noise, seed=h * w)
    got = M.ssim(x, y)
    assert got.dtype == torch.float32 and got.shape == (3,)
    np.testing.assert_allclose(got.double().numpy(), _sk_ssim(x, y), rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("name", "h", "w", "gray"),
    [
        ("astronaut", 32, 32, False),
        ("astronaut", 64, 64, True),
        ("chelsea", 64, 64, False),
        ("chelsea", 48, 80, True),
        ("coffee", 32, 32, True),
        ("coffee", 96, 64, False),
    ],
)
def test_ssim_matches_skimage_on_real_photos(name, h, w, gray):
    x, y = _photo_case(name, h, w, gray)
    assert x.shape == (3, 1 if gray else 3, h, w)
    got = M.ssim(x, y)
    ref = _sk_ssim(x, y)
    np.testing.assert_allclose(got.double().numpy(), ref, rtol=0, atol=1e-5)
    assert len(np.unique(ref.round(3))) == 3  # the three degradations really differ


def test_ssim_identical_is_one_and_symmetric():
    x, y = _pair(b=2, h=20, w=30)
    torch.testing.assert_close(M.ssim(x, x), torch.ones(2))
    torch.testing.assert_close(M.ssim(x, y), M.ssim(y, x))


def test_ssim_torchmetrics_needs_the_crop():
    """Documents the note: torchmetrics averages its padded map; cropping 5 px matches skimage (float64)."""
    from torchmetrics.functional.image import structural_similarity_index_measure as tm_ssim

    x, y = _photo_case("astronaut", 64, 64, gray=False)
    ref = _sk_ssim(x, y)
    whole, full = tm_ssim(
        y.double(),
        x.double(),
        sigma=1.5,
        kernel_size=11,
        data_range=1.0,
        reduction="none",
        return_full_image=True,
    )
    cropped = full[..., 5:-5, 5:-5].flatten(1).mean(1)
    np.testing.assert_allclose(cropped.numpy(), ref, rtol=0, atol=1e-10)
    assert np.abs(whole.numpy() - ref).max() > 1e-3


def test_ssim_minimum_size():
    x, y = _pair(b=1, h=11, w=11)
    assert M.ssim(x, y).shape == (1,)
    for h, w in [(10, 10), (10, 32), (32, 10)]:
        x, y = _pair(b=1, h=h, w=w)
        with pytest.raises(SplitinvError, match="at least 11x11"):
            M.ssim(x, y)


# ------------------------------------------------------------------------------------------- input checks


@pytest.mark.parametrize("fn", [M.psnr, M.ssim])
def test_image_validation(fn):
    x, y = _pair(b=2, h=16, w=16)
    with pytest.raises(SplitinvError, match="same shape"):
        fn(x, y[:, :, :, :15])
    with pytest.raises(SplitinvError, match="4-D"):
        fn(x[0], y[0])
    bad = y.clone()
    bad[1, 0, 3, 3] = float("nan")
    with pytest.raises(SplitinvError, match=r"^y contains 1 NaN/inf"):
        fn(x, bad)
    bad = x.clone()
    bad[0, 0, 0, 0] = float("inf")
    with pytest.raises(SplitinvError, match=r"^x contains 1 NaN/inf"):
        fn(bad, y)
    with pytest.raises(SplitinvError, match=r"outside \[0, 1\].*clamp"):
        fn(x * 2 - 1, y)
    with pytest.raises(SplitinvError, match="uint8"):
        fn((x * 255).to(torch.uint8), (y * 255).to(torch.uint8))
    with pytest.raises(SplitinvError, match=r"torch\.Tensor"):
        fn(x.numpy(), y)
    # rounding noise within the tolerance is accepted
    assert torch.isfinite(fn(x * (1 + 1e-6), y)).all()


def test_errors_are_one_line():
    x, y = _pair(b=1, h=16, w=16)
    with pytest.raises(SplitinvError) as info:
        M.psnr(x + 1, y)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------- leakage metrics


def test_feature_error_maps_and_tokens():
    g = _gen(3)
    for shape in [(3, 8, 4, 4), (3, 17, 12)]:
        f = torch.randn(shape, generator=g)
        f_hat = f + 0.1 * torch.randn(shape, generator=g)
        got = M.feature_error(f_hat, f)
        fn, fh = f.double().numpy().reshape(3, -1), f_hat.double().numpy().reshape(3, -1)
        ref = np.linalg.norm(fh - fn, axis=1) / np.linalg.norm(fn, axis=1)
        assert got.dtype == torch.float32 and got.shape == (3,)
        np.testing.assert_allclose(got.numpy(), ref, rtol=1e-5)
    torch.testing.assert_close(M.feature_error(f, f), torch.zeros(3))


def test_feature_error_validation():
    f = torch.randn(2, 4, 3, 3, generator=_gen(0))
    with pytest.raises(SplitinvError, match="same head"):
        M.feature_error(f[:, :3], f)
    zero = f.clone()
    zero[1] = 0
    with pytest.raises(SplitinvError, match=r"all zeros for image\(s\) \[1\]"):
        M.feature_error(f, zero)
    nan = f.clone()
    nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(SplitinvError, match=r"^f_hat contains"):
        M.feature_error(nan, f)


def test_label_agreement_and_accuracy():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 0.0, 1.0], [5.0, 0.0, 0.0]])
    logits_hat = torch.tensor([[1.0, 0.5, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 9.0], [0.0, 1.0, 0.0]])
    torch.testing.assert_close(M.label_agreement(logits_hat, logits), torch.tensor([1.0, 0.0, 1.0, 0.0]))
    labels = torch.tensor([0, 0, 1, 1])
    torch.testing.assert_close(M.accuracy(logits_hat, labels), torch.tensor([1.0, 1.0, 0.0, 1.0]))
    with pytest.raises(SplitinvError, match="same victim"):
        M.label_agreement(logits_hat[:, :2], logits)
    with pytest.raises(SplitinvError, match="integer"):
        M.accuracy(logits, labels.float())
    with pytest.raises(SplitinvError, match=r"labels must lie in \[0, 2\]"):
        M.accuracy(logits, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(SplitinvError, match="shape"):
        M.accuracy(logits, labels[:3])


# ------------------------------------------------------------------------------------------- summarize


def test_summarize_mean_sample_std_and_count():
    vals = torch.tensor([20.0, 22.0, 27.0, 31.0])
    s = M.summarize({"psnr": vals, "ssim": [torch.tensor([0.5, 0.7]), torch.tensor([0.9])], "lpips": None})
    assert s["psnr"]["n"] == 4
    assert s["psnr"]["mean"] == pytest.approx(25.0)
    assert s["psnr"]["std"] == pytest.approx(np.std(vals.numpy(), ddof=1))
    assert s["ssim"] == {"mean": pytest.approx(0.7), "std": pytest.approx(0.2), "n": 3}
    assert s["lpips"] is None
    one = M.summarize({"psnr": [31.5], "lpips": [None, None]})
    assert one["psnr"] == {"mean": 31.5, "std": 0.0, "n": 1}
    assert one["lpips"] is None
    json.dumps(s)  # plain floats and ints


def test_summarize_errors():
    with pytest.raises(SplitinvError, match="'ssim' has 1 NaN"):
        M.summarize({"psnr": torch.tensor([1.0, 2.0]), "ssim": torch.tensor([0.5, float("nan")])})
    with pytest.raises(SplitinvError, match="no values"):
        M.summarize({"psnr": []})
    with pytest.raises(SplitinvError, match="missing for some batches"):
        M.summarize({"lpips": [torch.tensor([0.1]), None]})


# ------------------------------------------------------------------------------------------- score (no LPIPS)


def test_score_table_without_lpips():
    x, x_hat = _pair(b=4, h=32, w=32, noise=0.3)
    x_hat = x_hat * 1.2 - 0.1  # out of range on purpose: score clamps reconstructions
    g = _gen(7)
    feats, feats_hat = torch.randn(4, 6, 4, 4, generator=g), torch.randn(4, 6, 4, 4, generator=g)
    logits, logits_hat = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    labels = torch.tensor([0, 1, 2, 3])
    t = M.score(
        x,
        x_hat,
        lpips="off",
        features=feats,
        features_hat=feats_hat,
        logits=logits,
        logits_hat=logits_hat,
        labels=labels,
    )
    assert set(t) == {"psnr", "ssim", "recognisable", "feature_error", "label_agreement", "accuracy_hat"}
    assert set(t) <= set(M.DIRECTION)
    clamped = x_hat.clamp(0, 1)
    torch.testing.assert_close(t["psnr"], M.psnr(x, clamped))
    torch.testing.assert_close(t["ssim"], M.ssim(x, clamped))
    torch.testing.assert_close(t["recognisable"], (t["ssim"] >= 0.3).float())
    torch.testing.assert_close(t["feature_error"], M.feature_error(feats_hat, feats))
    torch.testing.assert_close(t["label_agreement"], M.label_agreement(logits_hat, logits))
    torch.testing.assert_close(t["accuracy_hat"], M.accuracy(logits_hat, labels))
    for v in t.values():
        assert v.dtype == torch.float32 and v.shape == (4,) and v.device.type == "cpu"
    summary = M.summarize(t)
    assert summary["psnr"]["n"] == 4


def test_score_recognisable_threshold():
    x = torch.rand(2, 1, 32, 32, generator=_gen(0))
    x_hat = torch.stack([x[0], torch.rand(1, 32, 32, generator=_gen(1))])
    t = M.score(x, x_hat, lpips="off")
    assert t["ssim"][0] > 0.99 and t["ssim"][1] < 0.3
    assert t["recognisable"].tolist() == [1.0, 0.0]


def test_score_validation():
    x, x_hat = _pair(b=2, h=16, w=16)
    with pytest.raises(SplitinvError, match="outside"):
        M.score(x * 2, x_hat, lpips="off")
    nan = x_hat.clone()
    nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(SplitinvError, match=r"^x_hat contains"):
        M.score(x, nan, lpips="off")
    with pytest.raises(SplitinvError, match="'auto', 'required' or 'off'"):
        M.score(x, x_hat, lpips="yes")
    with pytest.raises(SplitinvError, match="features_hat"):
        M.score(x, x_hat, lpips="off", features=torch.randn(2, 3))
    with pytest.raises(SplitinvError, match="batch size 2"):
        M.score(x, x_hat, lpips="off", logits=torch.randn(3, 4), logits_hat=torch.randn(3, 4))
    with pytest.raises(SplitinvError, match="logits_hat"):
        M.score(x, x_hat, lpips="off", labels=torch.tensor([0, 1]))


def test_contract_and_direction():
    text = json.dumps(M.CONTRACT)
    assert json.loads(text)["ssim"]["size"] == 11
    assert M.CONTRACT["lpips"] == {**M.CONTRACT["lpips"], "net": "alex", "version": "0.1", "normalize": True}
    assert M.CONTRACT["clamped"] is True and M.CONTRACT["quantized_8bit"] is False
    assert M.DIRECTION["lpips"] == "lower" and M.DIRECTION["psnr"] == "higher"


# ------------------------------------------------------------------------------------------- LPIPS


def _seeded_model(arch: str, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return getattr(torchvision.models, arch)().eval()


def _state(model: torch.nn.Module, features_only: bool = False) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    return {k: v for k, v in state.items() if k.startswith("features.")} if features_only else state


@pytest.fixture(scope="module")
def alex_tv() -> torch.nn.Module:
    """A seeded random-init torchvision AlexNet."""
    return _seeded_model("alexnet", 0)


@pytest.fixture(scope="module")
def alex_state(alex_tv) -> dict[str, torch.Tensor]:
    """Its full state_dict (classifier included), as torchvision's cache file holds it."""
    return _state(alex_tv)


@pytest.fixture(scope="module")
def alex_home(tmp_path_factory, alex_state) -> Path:
    home = tmp_path_factory.mktemp("torch_home_alex")
    (home / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(alex_state, home / "hub" / "checkpoints" / ALEX_FILE)
    return home


class _Downloads:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.state: dict[str, torch.Tensor] | None = None  # None: the network is down

    def __call__(self, url, dst, hash_prefix=None, progress=True):
        self.calls.append((url, str(dst)))
        if self.state is None:
            raise urllib.error.URLError("network unavailable (test)")
        torch.save(self.state, dst)


@pytest.fixture
def downloads(monkeypatch) -> _Downloads:
    """No network: torch.hub's downloader (used by torchvision's weights API) is replaced by a recorder."""
    fake = _Downloads()
    monkeypatch.setattr(torch.hub, "download_url_to_file", fake)
    return fake


@pytest.fixture
def use_home(monkeypatch, downloads):
    """Point TORCH_HOME at a folder and start from a clean LPIPS cache; returns a setter."""
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    M.clear_lpips_cache()

    def use(home: Path) -> Path:
        monkeypatch.setenv("TORCH_HOME", str(home))
        M.clear_lpips_cache()
        return home

    yield use
    M.clear_lpips_cache()


def _reference_lpips(net: str, arch: str, tv_model: torch.nn.Module):
    """lpips.LPIPS (package v0.1 linear weights) whose trunk is built from ``tv_model`` by lpips itself."""
    import lpips as lpips_pkg

    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mp.setattr(torchvision.models, arch, lambda *args, **kwargs: tv_model)
        ref = lpips_pkg.LPIPS(net=net, verbose=False)  # pretrained trunk requested, but it gets tv_model
    assert ref.net.slice1[0] is tv_model.features[0]
    return ref.eval()


def test_lpips_alex_equals_reference_from_cache(use_home, alex_home, alex_tv, alex_state, downloads):
    use_home(alex_home)
    x, y = _pair(b=3, h=32, w=48, noise=0.2)
    got = M.lpips(x, y)
    ref = _reference_lpips("alex", "alexnet", alex_tv)
    with torch.no_grad():
        expected = ref(x, y, normalize=True).flatten()
        expected_mapped = ref(2 * x - 1, 2 * y - 1).flatten()
        unmapped = ref(x, y).flatten()  # the trap: [0, 1] fed as if it were [-1, 1]
    assert got.dtype == torch.float32 and got.shape == (3,)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(got, expected_mapped, atol=1e-6, rtol=0)
    assert ((unmapped - got).abs() / got).min() > 0.05
    assert not downloads.calls
    # every backbone tensor came from the checkpoint, none is left random
    model = M.lpips_model("alex", "cpu")
    for name, p in model.model.net.named_parameters():
        torch.testing.assert_close(p, alex_state["features." + name.split(".", 1)[1]], atol=0, rtol=0)
    assert M.lpips_available("alex")


def test_lpips_model_is_a_cached_frozen_differentiable_loss(use_home, alex_home):
    use_home(alex_home)
    model = M.lpips_model("alex", "cpu")
    assert M.lpips_model("alex", torch.device("cpu")) is model
    assert not any(p.requires_grad for p in model.parameters())
    model.train()
    assert not model.training and not any(m.training for m in model.modules())
    x, _ = _pair(b=2, h=32, w=32)
    x_hat = torch.rand(2, 3, 32, 32, generator=_gen(9)).requires_grad_(True)
    loss = model(x_hat, x).sum()
    loss.backward()
    assert x_hat.grad is not None and torch.isfinite(x_hat.grad).all() and x_hat.grad.abs().sum() > 0
    torch.testing.assert_close(model(x_hat, x).detach(), model(x_hat, x).detach(), atol=0, rtol=0)


def test_lpips_grayscale_half_precision_and_sizes(use_home, alex_home):
    use_home(alex_home)
    x, y = _pair(b=2, c=1, h=32, w=32)
    torch.testing.assert_close(M.lpips(x, y), M.lpips(x.repeat(1, 3, 1, 1), y.repeat(1, 3, 1, 1)))
    x3, y3 = _pair(b=2, h=32, w=32)
    xb, yb = x3.bfloat16(), y3.bfloat16()
    exact = M.lpips(xb.float(), yb.float())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = M.lpips(xb, yb)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, exact, atol=1e-6, rtol=0)
    with pytest.raises(SplitinvError, match="at least 32x32"):
        M.lpips(*_pair(b=1, h=31, w=64))
    with pytest.raises(SplitinvError, match="1 or 3 channels"):
        M.lpips(*_pair(b=1, c=2, h=32, w=32))
    with pytest.raises(SplitinvError, match=r"\['alex', 'vgg'\]"):
        M.lpips(x3, y3, net="squeeze")
    with pytest.raises(SplitinvError, match=r"\['alex', 'vgg'\]"):
        M.lpips_model("resnet")


def test_score_with_lpips(use_home, alex_home):
    use_home(alex_home)
    x, x_hat = _pair(b=2, h=32, w=32, noise=0.2)
    t = M.score(x, x_hat)
    torch.testing.assert_close(t["lpips"], M.lpips(x, x_hat))
    assert M.summarize(t)["lpips"]["n"] == 2
    assert M.score(x, x_hat, lpips="required")["lpips"] is not None


def test_lpips_offline_without_weights(use_home, tmp_path, downloads, capfd):
    use_home(tmp_path)
    path = tmp_path / "hub" / "checkpoints" / ALEX_FILE
    x, x_hat = _pair(b=2, h=32, w=32)
    with pytest.raises(M.LPIPSUnavailable) as info:
        M.lpips(x, x_hat)
    msg = str(info.value)
    assert str(path.parent) in msg and ALEX_FILE in msg and "copy" in msg and "\n" not in msg
    assert isinstance(info.value, SplitinvError)
    assert len(downloads.calls) == 1 and downloads.calls[0][1] == str(path)
    assert "Downloading" not in "".join(capfd.readouterr())  # the failed attempt prints nothing itself
    assert not M.lpips_available("alex")
    assert not M.lpips_available("alex", download=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t1 = M.score(x, x_hat)
        t2 = M.score(x, x_hat, lpips="auto")
    lp_warnings = [w for w in caught if issubclass(w.category, M.LPIPSUnavailableWarning)]
    assert len(lp_warnings) == 1
    assert ALEX_FILE in str(lp_warnings[0].message) and str(path.parent) in str(lp_warnings[0].message)
    assert "lpips" in t1 and t1["lpips"] is None and t2["lpips"] is None
    assert M.summarize(t1)["lpips"] is None
    with pytest.raises(M.LPIPSUnavailable, match=ALEX_FILE):
        M.score(x, x_hat, lpips="required")
    assert "lpips" not in M.score(x, x_hat, lpips="off")
    assert len(downloads.calls) == 1  # one download attempt per process, not one per batch
    assert not path.exists()


def test_lpips_downloads_into_the_cache_once(use_home, tmp_path, alex_state, alex_home, downloads):
    use_home(alex_home)
    expected = M.lpips(*_pair(b=2, h=32, w=32))
    use_home(tmp_path)
    downloads.state = alex_state  # the network is "up"
    got = M.lpips(*_pair(b=2, h=32, w=32))
    torch.testing.assert_close(got, expected, atol=0, rtol=0)
    assert (tmp_path / "hub" / "checkpoints" / ALEX_FILE).is_file()
    assert [u for u, _ in downloads.calls] == [torchvision.models.AlexNet_Weights.IMAGENET1K_V1.url]


def test_lpips_rejects_wrong_or_corrupt_checkpoints(use_home, tmp_path, alex_state):
    ckpt = tmp_path / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    use_home(tmp_path)
    partial = {k: v for k, v in alex_state.items() if k != "features.10.weight"}
    torch.save(partial, ckpt / ALEX_FILE)
    with pytest.raises(M.LPIPSUnavailable, match=r"lacks features\.10\.weight"):
        M.lpips(*_pair(b=1, h=32, w=32))
    use_home(tmp_path)
    (ckpt / ALEX_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(M.LPIPSUnavailable, match="could not read"):
        M.lpips(*_pair(b=1, h=32, w=32))


def test_lpips_vgg_features_checkpoint(use_home, tmp_path):
    """VGG path on a features-only random checkpoint (59 MB instead of torchvision's 528 MB file)."""
    tv_model = _seeded_model("vgg16", 1)
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(_state(tv_model, features_only=True), tmp_path / "hub" / "checkpoints" / VGG_FILE)
    use_home(tmp_path)
    x, y = _pair(b=2, h=32, w=32, noise=0.2)
    ref = _reference_lpips("vgg", "vgg16", tv_model)
    with torch.no_grad():
        expected = ref(x, y, normalize=True).flatten()
    torch.testing.assert_close(M.lpips(x, y, net="vgg"), expected, atol=1e-6, rtol=0)
    assert M.lpips(*_pair(b=1, h=16, w=16), net="vgg").shape == (1,)
    assert not M.lpips_available("alex", download=False)


@pytest.mark.slow
def test_lpips_vgg_full_torchvision_checkpoint(use_home, tmp_path):
    tv_model = _seeded_model("vgg16", 2)
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(_state(tv_model), tmp_path / "hub" / "checkpoints" / VGG_FILE)
    use_home(tmp_path)
    x, y = _pair(b=2, h=32, w=32, noise=0.2)
    ref = _reference_lpips("vgg", "vgg16", tv_model)
    with torch.no_grad():
        expected = ref(x, y, normalize=True).flatten()
    torch.testing.assert_close(M.lpips(x, y, net="vgg"), expected, atol=1e-6, rtol=0)
