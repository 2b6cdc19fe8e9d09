"""``splitinv doctor``: the environment splitinv runs in, the torch build, whether torchvision's compiled
operators load beside that torch, which LPIPS backbones and pretrained weights are cached, and what is
missing, each with what to do about it."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from pathlib import Path

PACKAGES = ("timm", "lightning", "hydra-core", "wandb", "lpips", "torchmetrics", "numpy")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def diagnose() -> tuple[list[tuple[str, str]], list[str], list[str]]:
    """(rows of (what, value), problems that stop splitinv, missing optional pieces), each with its fix."""
    import splitinv

    rows: list[tuple[str, str]] = []
    broken: list[str] = []
    missing: list[str] = []
    where = Path(splitinv.__file__).parent
    rows.append(("splitinv", f"{splitinv.__version__} ({where})"))
    rows.append(("python", f"{platform.python_version()} ({sys.executable})"))
    rows.append(("platform", f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU(s)"))
    try:
        import torch
    except Exception as err:
        broken.append(f"torch does not import ({type(err).__name__}: {err}); reinstall it (README: Install)")
        return rows, broken, missing
    build = (
        f"CUDA {torch.version.cuda}"
        if torch.version.cuda
        else (f"ROCm {torch.version.hip}" if getattr(torch.version, "hip", None) else "CPU only")
    )
    rows.append(("torch", f"{torch.__version__} ({build} build)"))
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        rows.append(("GPU", names))
    else:
        rows.append(("GPU", "none visible (runs on the CPU)"))
    try:
        import torchvision
        from torchvision.ops import nms

        nms(
            torch.zeros(1, 4), torch.ones(1), 0.5
        )  # a compiled operator: fails beside a torch of another build
        rows.append(("torchvision", f"{torchvision.__version__} (compiled operators load)"))
    except Exception as err:
        line = str(err).splitlines()[0] if str(err) else type(err).__name__
        broken.append(
            f"torchvision {_version('torchvision')} does not work with torch {torch.__version__} ({line}): "
            "install both from the same index in one command (README: Install)"
        )
    for dist in PACKAGES:
        version = _version(dist)
        rows.append((dist, version or "not installed"))
        if version is None:
            broken.append(f"{dist} is not installed: pip install splitinv (or pip install {dist})")
    biggan = _version("pytorch-pretrained-biggan")
    rows.append(("pytorch-pretrained-biggan", biggan or "not installed (optional: generator=biggan)"))
    if biggan is None:
        missing.append("BigGAN-deep (generator=biggan) needs the extra: pip install 'splitinv[biggan]'")

    from splitinv.weights import LPIPS_FILES, torch_checkpoint_dir

    cache = torch_checkpoint_dir()
    rows.append(("torch weights cache", str(cache)))
    for name, net in LPIPS_FILES.items():
        present = (cache / name).is_file()
        rows.append((f"LPIPS-{net} backbone", f"{name} {'present' if present else 'missing'}"))
        if not present:
            purpose = (
                "LPIPS is reported as n/a" if net == "alex" else "GAN inversion drops its perceptual term"
            )
            missing.append(
                f"LPIPS-{net}: {name} is not in {cache} ({purpose}); online it downloads on first use, "
                f"offline, copy it to this machine and run: splitinv weights import {name}"
            )
    cached = (
        sorted(p.name for p in cache.glob("*.pth") if p.name not in LPIPS_FILES) if cache.is_dir() else []
    )
    rows.append(("torchvision weights", ", ".join(cached) if cached else "none cached"))
    try:
        from huggingface_hub import constants

        hub = Path(constants.HF_HUB_CACHE)
        timm_repos = sorted(p.name[len("models--timm--") :] for p in hub.glob("models--timm--*"))
        rows.append(("Hugging Face cache", str(hub)))
        rows.append(("timm weights", ", ".join(timm_repos) if timm_repos else "none cached"))
    except ImportError:
        rows.append(("timm weights", "huggingface_hub not installed"))
    if not cached:
        missing.append(
            "no pretrained victim weights cached (victim.weights=imagenet needs them): online they download "
            "on first use; offline: splitinv weights import FILE (torchvision's), splitinv weights import "
            "--timm MODEL FILE (timm's)"
        )
    return rows, broken, missing


def main() -> int:
    """Print the report; 1 when something splitinv needs is broken, else 0."""
    rows, broken, missing = diagnose()
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    for line in broken:
        print(f"problem: {line}")
    for line in missing:
        print(f"missing: {line}")
    if not broken and not missing:
        print("nothing missing")
    return 1 if broken else 0
