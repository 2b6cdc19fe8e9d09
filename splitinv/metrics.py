"""The metric contract: how splitinv scores a reconstruction, and nothing else.

Images are float32 NCHW tensors in [0, 1]. Every metric returns one float32 value per image (a 1-D tensor of
length B); means and stds over images come from :func:`summarize`. The conventions are written down in
:data:`CONTRACT` (stored in every results file) and in ``docs/metrics.md``:

- PSNR: per image ``10*log10(1/MSE)``, data_range 1, MSE over C, H, W (never pooled over the batch), with the
  MSE floored at 1e-10 so identical images score 100 dB instead of inf.
- SSIM: Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03, population covariance, valid window (the 5-px border
  is not averaged); equals ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=1, channel_axis=-1)``.
- LPIPS: the ``lpips`` package, v0.1 linear weights, inputs mapped from [0, 1] to [-1, 1], AlexNet (reported)
  or VGG16 backbone loaded from torchvision's cache, never a silently random backbone.

This module never imports attacks, victims or data.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from splitinv.errors import SplitinvError

__all__ = [
    "CONTRACT",
    "DIRECTION",
    "LPIPS_NETS",
    "RECOGNISABLE_SSIM",
    "LPIPSLoss",
    "LPIPSUnavailable",
    "LPIPSUnavailableWarning",
    "accuracy",
    "clear_lpips_cache",
    "feature_error",
    "label_agreement",
    "lpips",
    "lpips_available",
    "lpips_checkpoint_path",
    "lpips_model",
    "psnr",
    "score",
    "ssim",
    "summarize",
]

# --------------------------------------------------------------------------------------------- constants

RANGE_TOL = 1e-5  # values within this of [0, 1] are accepted (and clamped); beyond it is an error
PSNR_MSE_FLOOR = 1e-10  # caps PSNR at 100 dB for identical images
SSIM_WIN = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
SSIM_PAD = (SSIM_WIN - 1) // 2  # 5-px border excluded from the mean
RECOGNISABLE_SSIM = 0.3  # He et al.: SSIM < 0.3 is treated as unrecognisable

LPIPS_NETS: dict[str, dict[str, Any]] = {
    # torchvision builder name, weights enum name, cache file name, smallest image side the backbone accepts
    "alex": {
        "arch": "alexnet",
        "weights": "AlexNet_Weights",
        "file": "alexnet-owt-7be5be79.pth",
        "min_side": 32,
    },
    "vgg": {"arch": "vgg16", "weights": "VGG16_Weights", "file": "vgg16-397923af.pth", "min_side": 16},
}

CONTRACT: dict[str, Any] = {
    "version": "splitinv-metrics/1",
    "range": "[0,1] float32 NCHW",
    "clamped": True,
    "quantized_8bit": False,
    "range_tolerance": RANGE_TOL,
    "psnr": (
        "per-image 10*log10(1/max(MSE, 1e-10)) (100 dB cap), data_range=1, MSE over C,H,W; "
        "then mean over images (never pooled over the batch)"
    ),
    "ssim": {
        "window": "gaussian",
        "size": SSIM_WIN,
        "sigma": SSIM_SIGMA,
        "k1": SSIM_K1,
        "k2": SSIM_K2,
        "data_range": 1.0,
        "covariance": "population",
        "border": f"valid ({SSIM_PAD} px cropped)",
        "reduction": "mean over channels and pixels per image, then mean over images",
        "grayscale": "one channel",
        "min_side": SSIM_WIN,
        "accumulation": "float64 (float32 E[x^2]-E[x]^2 drifts up to 3e-5 from skimage on real photos)",
        "reference": (
            "skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5, "
            "use_sample_covariance=False, data_range=1.0, channel_axis=-1)"
        ),
    },
    "lpips": {
        "net": "alex",
        "version": "0.1",
        "normalize": True,
        "package": "lpips (linear weights shipped inside it)",
        "backbone": "torchvision IMAGENET1K_V1 from $TORCH_HOME/hub/checkpoints (alexnet-owt-7be5be79.pth)",
        "grayscale": "repeated to 3 channels",
        "min_side": LPIPS_NETS["alex"]["min_side"],
        "unavailable": "null with one warning (lpips='auto') or an error (lpips='required')",
    },
    "feature_error": "per-image ||f_hat - f||_2 / ||f||_2 over all non-batch dims, f = split.observe(x) "
    "(the head's output, after the defense if any) and f_hat = split.observe(x_hat)",
    "label_agreement": "per-image 1.0 where top-1 of split.serve(observe(x_hat)) equals its top-1 on x "
    "(the full victim when there is no defense)",
    "accuracy_hat": "per-image 1.0 where top-1 of the victim on x_hat equals the ground-truth label",
    "evaluator_agreement": "per-image 1.0 where top-1 of an independent evaluation classifier (run.yaml "
    "evaluator: not the victim, so the attack cannot have fitted it) on x_hat equals its top-1 on x",
    "recognisable": f"ssim >= {RECOGNISABLE_SSIM}",
    "state_error": "GAN inversion of generated images: per image ||r_hat - r||^2 / ||r||^2 for each tensor "
    "crossing the generator cut (state_error_h; BigGAN also state_error_cond)",
    "std": "sample (ddof=1), 0.0 for one image",
    "precision": "float32 (autocast off; SSIM statistics accumulated in float64)",
}

# Which way is better, from the attacker's side (a better reconstruction); for arrows in tables.
DIRECTION: dict[str, str] = {
    "psnr": "higher",
    "ssim": "higher",
    "lpips": "lower",
    "recognisable": "higher",
    "feature_error": "lower",
    "label_agreement": "higher",
    "accuracy_hat": "higher",
    "evaluator_agreement": "higher",
    "state_error_h": "lower",
    "state_error_cond": "lower",
}


class LPIPSUnavailable(SplitinvError):
    """The LPIPS backbone weights are not in torchvision's cache and cannot be downloaded."""


class LPIPSTooSmall(SplitinvError):
    """The images are smaller than the LPIPS backbone's minimum side (``lpips='auto'`` reports null)."""


class LPIPSUnavailableWarning(UserWarning):
    """Emitted once per process (per backbone) when ``score(lpips="auto")`` skips LPIPS."""


# --------------------------------------------------------------------------------------------- validation


def _as_float32(t: Tensor) -> Tensor:
    return t if t.dtype == torch.float32 else t.to(torch.float32)


def _check_finite(t: Tensor, name: str) -> None:
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        raise SplitinvError(
            f"{name} contains {int(bad.sum())} NaN/inf value(s); fix the reconstruction or input pipeline "
            "before scoring"
        )


def _check_image(t: Any, name: str, *, check_range: bool) -> Tensor:
    if not isinstance(t, Tensor):
        raise SplitinvError(
            f"{name} must be a torch.Tensor (B, C, H, W), got {type(t).__name__}; "
            "convert it with torch.as_tensor"
        )
    if t.ndim != 4:
        raise SplitinvError(
            f"{name} must be 4-D (B, C, H, W), got shape {tuple(t.shape)}; "
            "add a batch dimension with x.unsqueeze(0) for a single image"
        )
    if not t.is_floating_point():
        raise SplitinvError(
            f"{name} has dtype {t.dtype}; metrics need float images in [0, 1] (for uint8 use x.float() / 255)"
        )
    if t.shape[0] == 0:
        raise SplitinvError(f"{name} is an empty batch (shape {tuple(t.shape)}); pass at least one image")
    t = _as_float32(t)
    _check_finite(t, name)
    if check_range:
        lo, hi = float(t.min()), float(t.max())
        if lo < -RANGE_TOL or hi > 1 + RANGE_TOL:
            raise SplitinvError(
                f"{name} has values in [{lo:.4g}, {hi:.4g}], outside [0, 1]; metrics take images in [0, 1] "
                f"(undo the victim's mean/std normalisation and clamp with {name}.clamp(0, 1))"
            )
    return t.clamp(0.0, 1.0)


def _check_pair(x: Any, y: Any, names: tuple[str, str] = ("x", "y")) -> tuple[Tensor, Tensor]:
    x = _check_image(x, names[0], check_range=True)
    y = _check_image(y, names[1], check_range=True)
    if x.shape != y.shape:
        raise SplitinvError(
            f"{names[0]} has shape {tuple(x.shape)} but {names[1]} has shape {tuple(y.shape)}; "
            "both must be (B, C, H, W) with the same shape"
        )
    if x.device != y.device:
        raise SplitinvError(
            f"{names[0]} is on {x.device} but {names[1]} is on {y.device}; move both to the same device"
        )
    return x, y


# --------------------------------------------------------------------------------------------- PSNR / SSIM


def psnr(x: Tensor, y: Tensor) -> Tensor:
    """Per-image PSNR in dB, data_range 1: ``10*log10(1/MSE)`` with MSE over (C, H, W).

    The MSE is floored at 1e-10, so identical images give 100 dB rather than inf. Returns float32 (B,).
    """
    x, y = _check_pair(x, y)
    mse = (x - y).pow(2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(1.0 / mse.clamp_min(PSNR_MSE_FLOOR))


def _gaussian_taps() -> list[float]:
    """The 11 taps of the Gaussian (sigma 1.5), normalised to sum 1, in float64."""
    r = torch.arange(SSIM_WIN, dtype=torch.float64) - SSIM_PAD
    g = torch.exp(-0.5 * (r / SSIM_SIGMA) ** 2)
    return (g / g.sum()).tolist()


_TAPS = _gaussian_taps()


def _valid_filter(t: Tensor, dim: int) -> Tensor:
    """``t`` filtered along ``dim`` with the 11-tap Gaussian, valid positions only (10 fewer): a weighted sum
    of 11 shifted views. Linear in the image size (a banded matmul is quadratic: at 224 px it made SSIM the
    largest cost of an evaluation), and the same products as a convolution, in float64."""
    n = t.shape[dim] - 2 * SSIM_PAD
    out = t.narrow(dim, 0, n) * _TAPS[0]
    for k in range(1, SSIM_WIN):
        out.add_(t.narrow(dim, k, n), alpha=_TAPS[k])
    return out


def _ssim_plane_means(x: Tensor, y: Tensor) -> Tensor:
    """Mean of the valid SSIM map of each plane; x, y are float64 (N, H, W)."""
    stack = torch.cat([x, y, x * x, y * y, x * y], dim=0)
    # Separable Gaussian filter without padding: the output is exactly the valid region, i.e. skimage's map
    # with the 5-px border cropped.
    ux, uy, uxx, uyy, uxy = _valid_filter(_valid_filter(stack, -2), -1).chunk(5, dim=0)
    vx, vy, vxy = uxx - ux * ux, uyy - uy * uy, uxy - ux * uy  # population (co)variances
    c1, c2 = SSIM_K1**2, SSIM_K2**2  # data_range = 1
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.flatten(1).mean(dim=1)


def ssim(x: Tensor, y: Tensor) -> Tensor:
    """Per-image SSIM (Gaussian 11/1.5, K1 .01, K2 .03, population covariance, valid window).

    Matches skimage's ``structural_similarity(..., gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1.0, channel_axis=-1)`` up to float32 rounding of the result
    (< 1e-7); grayscale is one channel. Images need at least 11 px a side. Returns float32 (B,).

    A direct implementation rather than torchmetrics: torchmetrics 1.9's full-image map cropped by 5 px does
    match skimage to ~1e-14, but only on float64 input; on float32 input its ``E[x^2] - E[x]^2`` variances
    cancel badly and drift up to 3e-5 from skimage on real photos (flat regions), beyond the 1e-5 the
    contract allows, and the crop would depend on torchmetrics' internal padding. So the local statistics
    are accumulated in float64 here (inputs are still float32 values).
    """
    x, y = _check_pair(x, y)
    b, c, h, w = x.shape
    if min(h, w) < SSIM_WIN:
        raise SplitinvError(
            f"SSIM needs images of at least {SSIM_WIN}x{SSIM_WIN} px (its Gaussian window), got "
            f"{h}x{w}; score larger images or leave SSIM out"
        )
    device = x.device
    work = torch.device("cpu") if device.type == "mps" else device  # MPS has no float64
    planes_x = x.to(work, torch.float64).reshape(b * c, h, w)
    planes_y = y.to(work, torch.float64).reshape(b * c, h, w)
    # a few planes at a time: the 5 float64 maps of a 224-px plane (2 MB) stay in the CPU's cache through the
    # 22 passes of the filter (6 x faster per image than 83 planes at once, 300 MB, which went to memory)
    chunk = max(1, (1 << 16) // (h * w))
    means = torch.cat(
        [_ssim_plane_means(planes_x[i : i + chunk], planes_y[i : i + chunk]) for i in range(0, b * c, chunk)]
    )
    # Equal pixel counts per channel: the mean of channel means is the mean over channels and pixels.
    return means.view(b, c).mean(dim=1).to(device=device, dtype=torch.float32)


# --------------------------------------------------------------------------------------------- LPIPS


def _check_net(net: str) -> dict[str, Any]:
    if net not in LPIPS_NETS:
        raise SplitinvError(f"unknown LPIPS net {net!r}; choose one of {sorted(LPIPS_NETS)}")
    return LPIPS_NETS[net]


def lpips_checkpoint_path(net: str = "alex") -> Path:
    """Where torchvision caches the backbone weights: ``torch.hub.get_dir()/checkpoints/<file>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / _check_net(net)["file"]


_LPIPS_CACHE: dict[tuple[str, str], LPIPSLoss] = {}
_DOWNLOAD_FAILED: dict[str, str] = {}  # checkpoint path -> reason; one download attempt per file and process
_WARNED: set[str] = set()


def clear_lpips_cache() -> None:
    """Forget built LPIPS modules, failed download attempts and the once-per-process warning (for tests)."""
    _LPIPS_CACHE.clear()
    _DOWNLOAD_FAILED.clear()
    _WARNED.clear()


def _unavailable(net: str, path: Path, reason: str) -> LPIPSUnavailable:
    return LPIPSUnavailable(
        f"LPIPS-{net} is unavailable: backbone weights {path.name} not found in {path.parent} ({reason}); "
        f"bring a copy of {path.name} and run `splitinv weights import {path.name}` (checksum checked), "
        "or run once with network access"
    )


def _fetch_backbone_state(net: str) -> dict[str, Tensor]:
    """Load the torchvision backbone state_dict from the cache, downloading it once if it is absent."""
    spec = _check_net(net)
    path = lpips_checkpoint_path(net)
    if not path.is_file():
        key = str(path)
        if key in _DOWNLOAD_FAILED:
            raise _unavailable(net, path, _DOWNLOAD_FAILED[key])
        import torchvision.models as tvm

        weights = getattr(tvm, spec["weights"]).IMAGENET1K_V1
        # torch.hub's download into the cache torchvision reads, hash-checked, moved into place when complete;
        # not weights.get_state_dict(), which prints "Downloading: ..." even when the network is down.
        hash_match = torch.hub.HASH_REGEX.search(path.name)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(
                weights.url,
                str(path),
                hash_prefix=hash_match.group(1) if hash_match else None,
                progress=False,
            )
        except Exception as err:  # offline, proxy, hash mismatch...: all mean "not available"
            _DOWNLOAD_FAILED[key] = f"download failed: {type(err).__name__}: {err}".replace("\n", " ")
            raise _unavailable(net, path, _DOWNLOAD_FAILED[key]) from err
        if not path.is_file():
            _DOWNLOAD_FAILED[key] = "download did not write the file"
            raise _unavailable(net, path, _DOWNLOAD_FAILED[key])
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise LPIPSUnavailable(
            f"could not read LPIPS-{net} backbone weights {path} ({type(err).__name__}); "
            "delete the file and copy an intact one there or re-download it"
        ) from err
    if not isinstance(state, Mapping):
        raise LPIPSUnavailable(f"{path} is not a state_dict; replace it with torchvision's {spec['file']}")
    return dict(state)


def _build_lpips(net: str) -> nn.Module:
    """lpips.LPIPS with the package's v0.1 linear weights and the cached torchvision backbone, all checked."""
    import lpips as lpips_pkg

    state = _fetch_backbone_state(net)
    path = lpips_checkpoint_path(net)
    # lpips builds its backbone with torchvision's deprecated ``pretrained=`` flag, which would download the
    # weights itself; pnet_rand=True builds a random backbone (no network) that is overwritten below. The
    # linear layers are loaded by hand too (the package loads them with strict=False).
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*(pretrained|weights).*", category=UserWarning)
        model = lpips_pkg.LPIPS(net=net, version="0.1", pretrained=False, pnet_rand=True, verbose=False)

    lin_path = Path(lpips_pkg.__file__).parent / "weights" / "v0.1" / f"{net}.pth"
    lin_state = torch.load(lin_path, map_location="cpu", weights_only=True)
    expected_lin = {k for k in model.state_dict() if k.startswith("lin") and not k.startswith("lins.")}
    if set(lin_state) != expected_lin:
        raise SplitinvError(
            f"{lin_path} has keys {sorted(lin_state)}, expected {sorted(expected_lin)}; "
            "reinstall the lpips package (pip install --force-reinstall lpips)"
        )
    model.load_state_dict(lin_state, strict=False)

    # lpips slices share torchvision's module indices: net.sliceK.<i>.weight <- features.<i>.weight
    backbone: dict[str, Tensor] = {}
    for name, param in model.net.state_dict().items():
        src = "features." + name.split(".", 1)[1]
        if src not in state:
            raise LPIPSUnavailable(f"{path} lacks {src}; it is not torchvision's {path.name}: replace it")
        if tuple(state[src].shape) != tuple(param.shape):
            raise LPIPSUnavailable(
                f"{path}: {src} has shape {tuple(state[src].shape)}, expected "
                f"{tuple(param.shape)}; replace it with torchvision's {path.name}"
            )
        backbone[name] = state[src]
    model.net.load_state_dict(backbone, strict=True)  # every backbone tensor is loaded, or this raises
    model.eval()
    model.requires_grad_(False)
    return model


class LPIPSLoss(nn.Module):
    """LPIPS on [0, 1] images: ``forward(x, y) -> (B,)``, differentiable with respect to the inputs.

    Maps inputs to [-1, 1] (lpips' ``normalize=True``) and repeats grayscale to 3 channels. No range
    checks (a reconstruction under optimisation may leave [0, 1]) and no dtype cast (follows autocast).
    Parameters are frozen and the module stays in eval mode (``.train()`` is a no-op, so dropout in the
    linear layers never switches on). Obtain it with :func:`lpips_model`; it is shared (cached).
    """

    def __init__(self, model: nn.Module, net: str) -> None:
        super().__init__()
        self.model = model
        self.net = net
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> LPIPSLoss:
        return super().train(False)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        if x.shape[1] == 1:
            x, y = x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1)
        return self.model(x, y, normalize=True).reshape(x.shape[0])


def _device_key(device: torch.device | str) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def lpips_model(net: str, device: torch.device | str = "cpu") -> LPIPSLoss:
    """The cached, frozen :class:`LPIPSLoss` for ``net`` on ``device`` (e.g. LPIPS-vgg as a training loss).

    Raises :class:`LPIPSUnavailable` when the backbone weights are not cached and cannot be downloaded.
    """
    _check_net(net)
    dev = _device_key(device)
    key = (net, str(dev))
    if key not in _LPIPS_CACHE:
        _LPIPS_CACHE[key] = LPIPSLoss(_build_lpips(net), net).to(dev)
    return _LPIPS_CACHE[key]


def lpips_available(net: str = "alex", *, download: bool = True) -> bool:
    """Whether LPIPS-``net`` can be built: its backbone file is cached, or (``download=True``) it could be
    fetched now. At most one download attempt per file and process; never raises for a missing file."""
    _check_net(net)
    if lpips_checkpoint_path(net).is_file():
        return True
    if not download:
        return False
    try:
        _fetch_backbone_state(net)
    except LPIPSUnavailable:
        return False
    return True


def _lpips_values(x: Tensor, y: Tensor, net: str) -> Tensor:
    spec = _check_net(net)
    x, y = _check_pair(x, y)
    _, c, h, w = x.shape
    if c not in (1, 3):
        raise SplitinvError(f"LPIPS needs 1 or 3 channels, got {c}; score RGB or grayscale images")
    if min(h, w) < spec["min_side"]:
        raise LPIPSTooSmall(
            f"LPIPS-{net} needs images of at least {spec['min_side']}x{spec['min_side']} px, "
            f"got {h}x{w}; upsample both images or score with lpips='off'"
        )
    model = lpips_model(net, x.device)
    with torch.autocast(device_type=x.device.type, enabled=False):
        return _as_float32(model(x, y))


def lpips(x: Tensor, y: Tensor, net: str = "alex") -> Tensor:
    """Per-image LPIPS v0.1 (``net`` in {"alex", "vgg"}) on [0, 1] images, float32 with autocast off.

    Raises :class:`LPIPSUnavailable` if the backbone weights are neither cached nor downloadable.
    Returns float32 (B,); differentiable, but use :func:`lpips_model` for losses (no range checks there).
    """
    return _lpips_values(x, y, net)


# --------------------------------------------------------------------------------------------- leakage


def _check_batch_tensor(t: Any, name: str, *, min_ndim: int = 2) -> Tensor:
    if not isinstance(t, Tensor):
        raise SplitinvError(
            f"{name} must be a torch.Tensor, got {type(t).__name__}; convert it with torch.as_tensor"
        )
    if t.ndim < min_ndim or t.shape[0] == 0:
        raise SplitinvError(
            f"{name} must have a non-empty batch dimension and at least {min_ndim} dims, "
            f"got shape {tuple(t.shape)}"
        )
    if t.is_floating_point():
        t = _as_float32(t)
        _check_finite(t, name)
    return t


def feature_error(f_hat: Tensor, f: Tensor) -> Tensor:
    """Per-image relative feature error ``||f_hat - f|| / ||f||`` over all non-batch dims.

    Works for (B, C, H, W) maps and (B, N, C) tokens. Returns float32 (B,). Computed in float64, scaled
    per image, so huge observations do not overflow; 0 where both are all zeros (a defense that sends
    nothing: the reconstruction's observation matches exactly).
    """
    f_hat = _check_batch_tensor(f_hat, "f_hat")
    f = _check_batch_tensor(f, "f")
    if f_hat.shape != f.shape:
        raise SplitinvError(
            f"f_hat has shape {tuple(f_hat.shape)} but f has shape {tuple(f.shape)}; "
            "compute both with the same head at the same cut point"
        )
    if not (f.is_floating_point() and f_hat.is_floating_point()):
        raise SplitinvError("features must be floating-point tensors (the head's output)")
    # float64 over each image's largest magnitude: observations of 1e30 (a huge noise defense) do not overflow
    f64, f_hat64 = f.flatten(1).double(), f_hat.flatten(1).double()
    scale = torch.maximum(f64.abs().amax(1), f_hat64.abs().amax(1)).clamp_min(1e-300)[:, None]
    den = (f64 / scale).norm(dim=1)
    num = ((f_hat64 - f64) / scale).norm(dim=1)
    # both observations all zeros (a defense that sends nothing): they agree exactly, error 0
    both_zero = (f64 == 0).all(1) & (f_hat64 == 0).all(1)
    zero = (den == 0) & ~both_zero
    if bool(zero.any()):
        idx = zero.nonzero().flatten().tolist()[:5]
        raise SplitinvError(
            f"f (the features of x) is all zeros for image(s) {idx} but f_hat is not; the relative error is "
            "undefined there: check the cut point and the input images"
        )
    return torch.where(both_zero, torch.zeros_like(num), num / torch.where(both_zero, 1.0, den)).float()


def _check_logits(t: Any, name: str) -> Tensor:
    t = _check_batch_tensor(t, name)
    if t.ndim != 2 or not t.is_floating_point():
        raise SplitinvError(
            f"{name} must be float logits of shape (B, num_classes), got {tuple(t.shape)} {t.dtype}"
        )
    return t


def label_agreement(logits_hat: Tensor, logits: Tensor) -> Tensor:
    """Per image 1.0 where the victim's top-1 on x_hat equals its top-1 on x, else 0.0 (float32 (B,))."""
    logits_hat = _check_logits(logits_hat, "logits_hat")
    logits = _check_logits(logits, "logits")
    if logits_hat.shape != logits.shape:
        raise SplitinvError(
            f"logits_hat has shape {tuple(logits_hat.shape)} but logits has shape "
            f"{tuple(logits.shape)}; both must come from the same victim on the same batch"
        )
    return (logits_hat.argmax(dim=1) == logits.argmax(dim=1)).to(torch.float32)


def accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    """Per image 1.0 where top-1 of ``logits`` (B, K) equals the integer label (B,), else 0.0 (float32)."""
    logits = _check_logits(logits, "logits")
    if (
        not isinstance(labels, Tensor)
        or labels.is_floating_point()
        or labels.is_complex()
        or labels.dtype == torch.bool
    ):
        raise SplitinvError(
            "labels must be an integer tensor of class indices, shape (B,); "
            "use torch.as_tensor(labels, dtype=torch.long)"
        )
    if labels.shape != logits.shape[:1]:
        raise SplitinvError(
            f"labels has shape {tuple(labels.shape)} but logits has shape {tuple(logits.shape)}; "
            "expected labels of shape (B,)"
        )
    k = logits.shape[1]
    if bool(((labels < 0) | (labels >= k)).any()):
        raise SplitinvError(
            f"labels must lie in [0, {k - 1}] for {k} classes, got "
            f"[{int(labels.min())}, {int(labels.max())}]; check the label mapping"
        )
    return (logits.argmax(dim=1) == labels.to(logits.device)).to(torch.float32)


# --------------------------------------------------------------------------------------------- tables


def _warn_unavailable_once(net: str, err: SplitinvError) -> None:
    if net in _WARNED:
        return
    _WARNED.add(net)
    warnings.warn(f"{err} (reporting lpips as n/a)", LPIPSUnavailableWarning, stacklevel=3)


def score(
    x: Tensor,
    x_hat: Tensor,
    *,
    lpips: Literal["auto", "required", "off"] = "auto",
    lpips_net: str = "alex",
    features: Tensor | None = None,
    features_hat: Tensor | None = None,
    logits: Tensor | None = None,
    logits_hat: Tensor | None = None,
    labels: Tensor | None = None,
) -> dict[str, Tensor | None]:
    """The per-image metric table for one batch (float32 CPU tensors of length B, no gradients).

    ``x`` must be in [0, 1]; ``x_hat`` is clamped to [0, 1] first. Keys: psnr, ssim, recognisable
    (ssim >= 0.3 as 0/1), lpips (unless ``lpips="off"``; ``None`` under ``"auto"`` when the backbone is
    unavailable, with one warning per process; ``"required"`` raises :class:`LPIPSUnavailable`),
    feature_error (given features and features_hat), label_agreement (given logits and logits_hat) and
    accuracy_hat (given logits_hat and labels).
    """
    if lpips not in ("auto", "required", "off"):
        raise SplitinvError(f"lpips must be 'auto', 'required' or 'off', got {lpips!r}")
    _check_net(lpips_net)
    if (features is None) != (features_hat is None):
        raise SplitinvError("pass both features and features_hat (observations of x and x_hat) or neither")
    if logits is not None and logits_hat is None:
        raise SplitinvError(
            "logits need logits_hat (the victim's logits on x_hat) to compute label_agreement"
        )
    if labels is not None and logits_hat is None:
        raise SplitinvError("labels need logits_hat (the victim's logits on x_hat) to compute accuracy_hat")
    if logits_hat is not None and logits is None and labels is None:
        raise SplitinvError("logits_hat needs logits (victim on x) or labels; pass one of them or drop it")

    x = _check_image(x, "x", check_range=True)
    x_hat = _check_image(x_hat, "x_hat", check_range=False)  # clamps; only NaN/inf is an error
    if x.shape != x_hat.shape:
        raise SplitinvError(
            f"x has shape {tuple(x.shape)} but x_hat has shape {tuple(x_hat.shape)}; "
            "the reconstruction must have the input's shape"
        )
    b = x.shape[0]
    for name, t in (
        ("features", features),
        ("features_hat", features_hat),
        ("logits", logits),
        ("logits_hat", logits_hat),
        ("labels", labels),
    ):
        if t is not None and (not isinstance(t, Tensor) or t.ndim == 0 or t.shape[0] != b):
            shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise SplitinvError(f"{name} has shape {shape}, expected batch size {b} to match x")

    out: dict[str, Tensor | None] = {}
    with torch.no_grad():
        out["psnr"] = psnr(x, x_hat)
        out["ssim"] = ssim(x, x_hat)
        out["recognisable"] = (out["ssim"] >= RECOGNISABLE_SSIM).to(torch.float32)
        if lpips != "off":
            try:
                out["lpips"] = _lpips_values(x, x_hat, lpips_net)
            except (LPIPSUnavailable, LPIPSTooSmall) as err:
                if lpips == "required":
                    raise
                _warn_unavailable_once(lpips_net, err)
                out["lpips"] = None
        if features is not None and features_hat is not None:
            out["feature_error"] = feature_error(features_hat, features)
        if logits is not None and logits_hat is not None:
            out["label_agreement"] = label_agreement(logits_hat, logits)
        if labels is not None and logits_hat is not None:
            out["accuracy_hat"] = accuracy(logits_hat, labels)
    return {k: (None if v is None else v.detach().to("cpu", torch.float32)) for k, v in out.items()}


def _flatten_values(name: str, value: Tensor | Sequence[Any]) -> list[float] | None:
    if isinstance(value, Tensor):
        return value.detach().to("cpu", torch.float64).flatten().tolist()
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise SplitinvError(
            f"metric {name!r} must be a tensor or a list of numbers/tensors, got {type(value).__name__}"
        )
    items = list(value)
    if items and all(v is None for v in items):
        return None
    vals: list[float] = []
    for v in items:
        if v is None:
            raise SplitinvError(
                f"metric {name!r} is missing for some batches; score every batch the same way"
            )
        if isinstance(v, Tensor):
            vals.extend(v.detach().to("cpu", torch.float64).flatten().tolist())
        elif isinstance(v, (int, float)):
            vals.append(float(v))
        else:
            raise SplitinvError(f"metric {name!r} holds a {type(v).__name__}; expected numbers or tensors")
    return vals


def summarize(
    per_image: Mapping[str, Tensor | Sequence[Any] | None],
) -> dict[str, dict[str, float | int] | None]:
    """Mean, sample std (ddof=1; 0.0 for one image) and count per metric; ``None`` for an unavailable one.

    Values may be tensors or lists of numbers / per-batch tensors. A NaN or inf raises (a broken
    reconstruction must not be averaged away).
    """
    result: dict[str, dict[str, float | int] | None] = {}
    for name, value in per_image.items():
        vals = None if value is None else _flatten_values(name, value)
        if vals is None:
            result[name] = None
            continue
        n = len(vals)
        if n == 0:
            raise SplitinvError(f"metric {name!r} has no values; score at least one image")
        if not all(math.isfinite(v) for v in vals):
            bad = sum(not math.isfinite(v) for v in vals)
            raise SplitinvError(
                f"metric {name!r} has {bad} NaN/inf value(s) out of {n}; a broken reconstruction "
                "(check the attack's loss and outputs) cannot be averaged"
            )
        mean = math.fsum(vals) / n
        std = math.sqrt(math.fsum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else 0.0
        result[name] = {"mean": mean, "std": std, "n": n}
    return result
