"""Where to split: device cost, bandwidth, utility and leakage per cut point, with the Pareto-optimal cuts.

``advise(sweep, victim)`` returns one row per cut point (and per defense a sweep ran there) with

- **device side**, what runs before the cut (the victim's normalisation, the head, then the defense), at the
  victim's image size, batch 1:

  - ``device_flops``: FLOPs counted by :class:`torch.utils.flop_counter.FlopCounterMode`, which counts
    convolutions, matrix multiplies and attention at 2 FLOPs per multiply-accumulate and nothing else
    (BatchNorm, activations, pooling and additions are free to it); ``device_macs`` = FLOPs / 2.
  - ``device_params``: parameters the device must hold. FX heads (``torch.fx.GraphModule``) keep only the
    submodules their graph uses, so all of their parameters count; forward-hook heads wrap the whole body, so
    only the own parameters (``recurse=False``) of modules whose forward ran before the cut count (a
    parameter owned directly by a container that ran, e.g. a ViT's class token, counts even if it is used
    only after the cut).
  - ``device_peak_bytes``: peak activation memory, the largest total size of the tensor storages alive at
    any point of the forward pass (the input image included; parameters and buffers excluded; a view or an
    in-place result shares its storage and counts once; scratch space inside a kernel is not seen). Measured
    with a ``TorchDispatchMode`` that sees every op's outputs and a weak reference that notices when each
    is freed, under ``torch.no_grad``.
  - ``device_latency_ms``: median wall time of ``latency_runs`` forward passes on THIS machine (batch 1,
    after ``warmup`` passes, ``torch.no_grad``, ``torch.get_num_threads()`` threads: see ``table.attrs``).

- **the link**: ``elements`` crossing the cut per image and their size at fp32, fp16 and int8
  (``bytes_fp32``, ``bytes_fp16``, ``bytes_int8``); ``payload_bytes``: what the split's defense sends
  (:meth:`~splitinv.defenses.Defense.payload_elements`, a projection or sparsification sends fewer numbers)
  at the ``wire`` precision (fp32 by default).

- **end to end** (with a :class:`DeviceProfile`): ``e2e_ms`` = device FLOPs / device GFLOP/s (or the
  measured latency when the profile has no device speed) + payload bits / uplink + tail FLOPs / server
  GFLOP/s (omitted when the profile has no server speed).

- **leakage**, from the sweep's finished runs at that (cut, defense): ``ssim`` is the highest SSIM of any
  single run (attack x seed: the strongest attacker, a conservative reading), named in ``ssim_attack``;
  ``lpips`` the lowest LPIPS (n/a when LPIPS was not computed) in ``lpips_attack``; ``attacks`` the number
  of distinct attacks tried there. A cut attacked by fewer attacks than the most-attacked cut is
  ``flagged``: one weak attack may understate its leakage.
- **utility**, from the same runs: ``accuracy`` and ``agreement`` (with the undefended network) of the
  defended split, on the data's whole test split where the runs measured it (``utility_test``), else on
  their evaluation images; ``utility`` is accuracy when every attacked row has it, else agreement.

``pareto`` is True for a cut that no other attacked cut matches or beats in all of (device FLOPs ↓,
payload bytes ↓, SSIM ↓, utility ↑, the last only when known everywhere) while beating it in one; cuts
without a leakage row are listed as not attacked and take no part in the ranking (None).

:func:`constrain` keeps the rows meeting budgets (``max_ssim``, ``max_device_mflops``, ``max_payload_kb``
in KiB, ``min_utility``, ...), best first: lowest SSIM, then fewest device FLOPs, then fewest payload
bytes, then highest utility; when none qualifies it names the binding constraint(s).
"""

from __future__ import annotations

import json
import math
import platform
import shutil
import statistics
import subprocess
import sys
import time
import warnings
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import yaml
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

from splitinv.baselines import LEAKS, UNSCORED
from splitinv.defenses.base import Defense, NoDefense
from splitinv.errors import SplitinvError

WIRE_BYTES = {"fp32": 4, "fp16": 2, "int8": 1}
PROFILES_FILE = Path(__file__).parent / "assets" / "device_profiles.yaml"

# constraint name -> (table column, "<=" or ">=", scale from the constraint's unit to the column's, unit)
CONSTRAINTS: dict[str, tuple[str, str, float, str]] = {
    "max_ssim": ("ssim", "<=", 1.0, ""),
    "min_lpips": ("lpips", ">=", 1.0, ""),
    "max_device_mflops": ("device_flops", "<=", 1e6, " MFLOPs"),
    "max_payload_kb": ("payload_bytes", "<=", 1024.0, " KiB"),
    "min_utility": ("utility", ">=", 1.0, ""),
    "max_latency_ms": ("device_latency_ms", "<=", 1.0, " ms"),
    "max_e2e_ms": ("e2e_ms", "<=", 1.0, " ms"),
    "max_dfil": ("dfil", "<=", 1.0, ""),  # the Fisher-information bound; rows without one do not meet it
}


# ---------------------------------------------------------------------------------------------------------
# Device cost of one module


def count_flops(module: nn.Module, *inputs: torch.Tensor) -> int:
    """FLOPs of ``module(*inputs)`` as torch.utils.flop_counter counts them (2 per multiply-accumulate of
    convolutions, matrix multiplies and attention; other ops count 0)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(*inputs)
    return int(counter.get_total_flops())


class _LiveStorages(TorchDispatchMode):
    """Tracks the total bytes of op-output storages alive, and its peak, while active."""

    def __init__(self, exclude: set[int]) -> None:
        super().__init__()
        self.exclude, self.sizes, self.refs = exclude, {}, {}
        self.current = self.peak = 0

    def track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key, size = storage.data_ptr(), storage.nbytes()
        if size == 0 or key in self.exclude:
            return
        if key not in self.sizes:
            self.sizes[key], self.refs[key] = size, 0
            self.current += size
            self.peak = max(self.peak, self.current)
        self.refs[key] += 1
        weakref.finalize(t, self._release, key)

    def _release(self, key: int) -> None:
        self.refs[key] -= 1
        if self.refs[key] == 0:
            self.current -= self.sizes.pop(key)
            del self.refs[key]

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.track(t)
        return out


def peak_activation_bytes(module: nn.Module, x: torch.Tensor) -> int:
    """The largest total size in bytes of tensor storages alive during ``module(x)`` (see the module doc)."""
    exclude = {t.untyped_storage().data_ptr() for t in (*module.parameters(), *module.buffers())}
    mode = _LiveStorages(exclude)
    with torch.no_grad():
        mode.track(x)
        with mode:
            out = module(x)
        peak = mode.peak
    del out
    return int(peak)


def _is_fx(module: nn.Module) -> bool:
    return any(isinstance(m, torch.fx.GraphModule) for m in module.modules())


def device_params(module: nn.Module, x: torch.Tensor) -> int:
    """Parameters ``module(x)`` uses: all of an FX module's; for forward-hook heads, the own parameters of
    the modules whose forward ran (see the module doc)."""
    if _is_fx(module) and not any(type(m).__name__ == "HookHead" for m in module.modules()):
        return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())
    ran: list[nn.Module] = []
    handles = [m.register_forward_pre_hook(lambda m, _i: ran.append(m)) for m in module.modules()]
    try:
        with torch.no_grad():
            module(x)
    finally:
        for h in handles:
            h.remove()
    params = {id(p): p for m in ran for p in m.parameters(recurse=False)}
    return sum(p.numel() for p in params.values())


def median_latency_ms(module: nn.Module, x: torch.Tensor, runs: int = 20, warmup: int = 3) -> float:
    """Median wall time in ms of ``module(x)`` over ``runs`` timed passes after ``warmup`` untimed ones."""
    if runs < 1 or warmup < 0:
        raise SplitinvError(f"latency needs runs >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}.")
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    times = []
    with torch.no_grad():
        for i in range(warmup + runs):
            start = time.perf_counter()
            module(x)
            sync()
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1e3)
    return float(statistics.median(times))


def payload(shape: Sequence[int], defense: Defense | None = None, wire: str = "fp32") -> dict[str, int]:
    """Numbers and bytes crossing the cut per image for head activations of per-image ``shape``."""
    if wire not in WIRE_BYTES:
        raise SplitinvError(f"unknown wire precision {wire!r}: use one of {', '.join(WIRE_BYTES)}.")
    elements = math.prod(int(s) for s in shape)
    sent = int((defense or NoDefense()).payload_elements(tuple(int(s) for s in shape)))
    row = {"elements": elements, **{f"bytes_{k}": elements * b for k, b in WIRE_BYTES.items()}}
    row.update(payload_elements=sent, payload_bytes=sent * WIRE_BYTES[wire])
    return row


def machine() -> str:
    """What the latencies were measured on: CPU architecture or GPU, torch version and threads."""
    return (
        f"{platform.machine() or 'cpu'} ({platform.processor() or platform.system()}), torch "
        f"{torch.__version__}, {torch.get_num_threads()} thread(s)"
    )


# ---------------------------------------------------------------------------------------------------------
# Costs of every cut point


def _defense_label(value: Any) -> str:
    """A defense as one short label: ``none``, ``topk`` or ``topk k=0.1`` (its describe() parameters)."""
    if value is None:
        return "none"
    if isinstance(value, Mapping):
        name = str(value.get("name", "defense"))
        params = ", ".join(f"{k}={v}" for k, v in sorted(value.items()) if k != "name")
        return f"{name} {params}" if params else name
    return str(value)


def _image(victim: nn.Module) -> torch.Tensor:
    """One seeded [0, 1] image at the victim's size, channels and device."""
    size = int(getattr(victim, "image_size", 224))
    mean = getattr(getattr(victim, "normalize", None), "mean", None)
    channels = int(mean.shape[1]) if isinstance(mean, torch.Tensor) else 3
    device = next(iter(victim.parameters()), torch.empty(0)).device
    return torch.rand(1, channels, size, size, generator=torch.Generator().manual_seed(0)).to(device)


def cut_costs(
    victim: nn.Module,
    points: Sequence[str] | None = None,
    defenses: Mapping[str, Defense] | None = None,
    pairs: Iterable[tuple[str, str]] | None = None,
    *,
    wire: str = "fp32",
    latency_runs: int = 20,
    warmup: int = 3,
    method: str = "auto",
) -> pd.DataFrame:
    """Device and link costs per cut point: every point in ``points`` (default: all) undefended, plus each
    (point, defense label) in ``pairs`` with the defense from ``defenses`` (label -> Defense)."""
    from splitinv.cut import describe_cut_points
    from splitinv.split import split

    listed = describe_cut_points(victim, method=method, with_shapes=False)
    by_name = {n: p for p in listed for n in (p.name, *p.aliases)}
    points = list(points) if points is not None else [p.name for p in listed]
    todo = [(p, "none") for p in points] + [tuple(p) for p in (pairs or []) if tuple(p)[1] != "none"]
    todo = list(dict.fromkeys(todo))
    defenses = {"none": NoDefense(), **dict(defenses or {})}
    was_training = victim.training
    victim.eval()
    x = _image(victim)
    rows = []
    try:
        for point, label in todo:
            s = split(victim, point, defense=defenses.get(label, NoDefense()), method=method)
            s.eval()
            with torch.no_grad():
                h = s.head(x)
                v = s.observe(x)
            info = by_name.get(point)
            flops = count_flops(s.client, x)
            rows.append(
                {
                    "cut": info.name if info else point,
                    "index": info.index if info else math.nan,
                    "depth": info.index / max(1, len(listed) - 1) if info else math.nan,
                    "defense": label,
                    "shape": "x".join(str(d) for d in h.shape[1:]),
                    "device_flops": flops,
                    "device_macs": flops // 2,
                    "device_params": device_params(s.client, x),
                    "device_peak_bytes": peak_activation_bytes(s.client, x),
                    "device_latency_ms": median_latency_ms(s.client, x, latency_runs, warmup),
                    "tail_flops": count_flops(s.tail, s.defense.restore(v)),  # what the server runs
                    **payload(tuple(h.shape[1:]), s.defense, wire),
                }
            )
    finally:
        victim.train(was_training)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------------------
# Device profiles and end-to-end latency


@dataclass(frozen=True)
class DeviceProfile:
    """Rates for the end-to-end estimate; a missing device speed means "the measured latency here"."""

    name: str = "custom"
    device_gflops: float | None = None
    uplink_mbps: float | None = None
    server_gflops: float | None = None
    note: str = ""

    def __post_init__(self) -> None:
        for key in ("device_gflops", "uplink_mbps", "server_gflops"):
            value = getattr(self, key)
            if value is not None and not (
                isinstance(value, (int, float)) and math.isfinite(value) and value > 0
            ):
                raise SplitinvError(
                    f"device profile {self.name!r}: {key} must be a positive number, got {value!r}."
                )
        if self.uplink_mbps is None:
            raise SplitinvError(
                f"device profile {self.name!r} has no uplink: an end-to-end estimate needs --uplink-mbps."
            )

    def describe(self) -> str:
        parts = [
            f"device {self.device_gflops:g} GFLOP/s" if self.device_gflops else "device: measured here",
            f"uplink {self.uplink_mbps:g} Mbit/s",
            f"server {self.server_gflops:g} GFLOP/s" if self.server_gflops else "server time omitted",
        ]
        return f"{self.name} ({', '.join(parts)}{'; ' + self.note if self.note else ''})"


def profile_names(path: str | Path | None = None) -> list[str]:
    return sorted(_read_profiles(path))


def _read_profiles(path: str | Path | None) -> dict[str, Any]:
    file = Path(path) if path is not None else PROFILES_FILE
    if not file.is_file():
        raise SplitinvError(f"device profiles file {file} does not exist.")
    try:
        data = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as err:
        raise SplitinvError(f"{file} is not valid YAML: {str(err).splitlines()[0]}") from None
    profiles = data.get("profiles") if isinstance(data, dict) else None
    if not isinstance(profiles, dict) or not all(isinstance(v, dict) for v in profiles.values()):
        raise SplitinvError(
            f"{file} needs a 'profiles:' mapping of name -> {{device_gflops, uplink_mbps, ...}}."
        )
    return profiles


def load_profile(name: str, path: str | Path | None = None, **overrides: float | None) -> DeviceProfile:
    """A named profile from ``path`` (default: splitinv's own rough ones), with explicit values overriding."""
    profiles = _read_profiles(path)
    if name not in profiles:
        raise SplitinvError(f"unknown device profile {name!r}: choose one of {', '.join(sorted(profiles))}.")
    known = {"device_gflops", "uplink_mbps", "server_gflops", "note"}
    unknown = set(profiles[name]) - known
    if unknown:
        raise SplitinvError(
            f"device profile {name!r} has unknown keys {sorted(unknown)}: use {sorted(known)}."
        )
    values = {**profiles[name], **{k: v for k, v in overrides.items() if v is not None}}
    return DeviceProfile(name=name, **values)


def estimate_latency(table: pd.DataFrame, profile: DeviceProfile) -> pd.DataFrame:
    """Adds device_ms, link_ms, server_ms and e2e_ms (estimated) for ``profile``."""
    out = table.copy()
    if profile.device_gflops:
        out["device_ms"] = out["device_flops"] / (profile.device_gflops * 1e9) * 1e3
    else:
        out["device_ms"] = out["device_latency_ms"]
    out["link_ms"] = out["payload_bytes"] * 8 / (profile.uplink_mbps * 1e6) * 1e3
    out["server_ms"] = (
        out["tail_flops"] / (profile.server_gflops * 1e9) * 1e3 if profile.server_gflops else 0.0
    )
    out["e2e_ms"] = out["device_ms"] + out["link_ms"] + out["server_ms"]
    return out


# ---------------------------------------------------------------------------------------------------------
# The two rows every split-computing comparison reports: send the image, or run everything on the device

JPEG_QUALITY = 90  # the image row's JPEG size (splitinv advise --jpeg-quality)


def jpeg_bytes(images: torch.Tensor, quality: int = JPEG_QUALITY) -> list[int]:
    """Bytes of each (C, H, W) image in [0, 1] of ``images`` as a JPEG at ``quality``, encoded by PIL from
    its uint8 pixels (one channel as greyscale, three as RGB)."""
    import io

    from splitinv.io import to_pil, to_uint8

    if not 1 <= int(quality) <= 95:
        raise SplitinvError(f"JPEG quality {quality} is out of range: use 1-95 (PIL's useful range).")
    sizes = []
    for image in to_uint8(images):
        buffer = io.BytesIO()
        to_pil(image).save(buffer, format="JPEG", quality=int(quality))
        sizes.append(buffer.tell())
    return sizes


def _evaluation_images(sweep: Path | None, rows: pd.DataFrame) -> tuple[torch.Tensor | None, str | None]:
    """The original evaluation images a sweep's first readable images.pt keeps, and its job folder."""
    from splitinv.results import IMAGES_FILE, load_images

    if sweep is None or rows.empty:
        return None, None
    for job in rows["job"].astype(str):
        path = sweep / job / IMAGES_FILE
        if path.is_file():
            try:
                return load_images(path)[0], job
            except SplitinvError as err:
                warnings.warn(f"{err}: the image row's JPEG size is taken from another job", stacklevel=2)
    return None, None


def baseline_rows(
    victim: nn.Module,
    images: torch.Tensor | None = None,
    *,
    quality: int = JPEG_QUALITY,
    latency_runs: int = 20,
    warmup: int = 3,
) -> pd.DataFrame:
    """Two reference rows for the advisor's table: ``image`` (send the image: nothing runs on the device,
    everything leaks: SSIM 1, PSNR inf; the bytes are the image's as uint8, ``jpeg_bytes`` the mean JPEG size
    at ``quality`` of ``images`` when given) and ``device`` (the whole network on the device: nothing but the
    label leaves it, ``ceil(log2(classes) / 8)`` bytes; no leakage of the input)."""
    x = _image(victim)
    was_training = victim.training
    victim.eval()
    try:
        flops = count_flops(victim, x)
        with torch.no_grad():
            classes = int(victim(x).shape[-1])
        params = sum(p.numel() for p in {id(p): p for p in victim.parameters()}.values())
        peak = peak_activation_bytes(victim, x)
        latency = median_latency_ms(victim, x, latency_runs, warmup)
    finally:
        victim.train(was_training)
    pixels = math.prod(x.shape[1:])
    label = max(1, math.ceil(math.log2(max(classes, 2)) / 8))
    jpeg = (
        float(statistics.mean(jpeg_bytes(images, quality)))
        if images is not None and len(images)
        else math.nan
    )
    common = {"defense": "none", "attacked": False, "attacks": 0, "runs": 0, "ssim_n": "", "verdict": None}
    image = {
        **common,
        "cut": "image",
        "baseline": "image",
        "index": -1,
        "depth": 0.0,
        "shape": "x".join(str(d) for d in x.shape[1:]),
        "device_flops": 0,
        "device_macs": 0,
        "device_params": 0,
        "device_peak_bytes": 0,
        "device_latency_ms": 0.0,
        "tail_flops": flops,
        "elements": pixels,
        **{f"bytes_{k}": pixels * b for k, b in WIRE_BYTES.items()},
        "payload_elements": pixels,
        "payload_bytes": pixels,  # uint8 pixels
        "jpeg_bytes": jpeg,
        "ssim": 1.0,
        "ssim_hi": 1.0,
        "psnr": math.inf,
    }
    device = {
        **common,
        "cut": "device",
        "baseline": "device",
        "index": math.inf,
        "depth": 1.0,
        "shape": f"label ({classes} classes)",
        "device_flops": flops,
        "device_macs": flops // 2,
        "device_params": params,
        "device_peak_bytes": peak,
        "device_latency_ms": latency,
        "tail_flops": 0,
        "elements": 1,
        **{f"bytes_{k}": label for k in WIRE_BYTES},
        "payload_elements": 1,
        "payload_bytes": label,
        "jpeg_bytes": math.nan,
        "ssim": math.nan,
        "ssim_hi": math.nan,
    }
    return pd.DataFrame([image, device])


# ---------------------------------------------------------------------------------------------------------
# Leakage and utility from a sweep


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def sweep_rows(sweep_dir: str | Path, *, trust_edited: bool = False) -> tuple[pd.DataFrame, dict[str, int]]:
    """The finished runs below ``sweep_dir`` (report.collect's rows) with what the advisor needs besides:
    defense label and config, utility, image size and classes; and the count of runs per status."""
    from splitinv.report import collect

    root = Path(sweep_dir)
    frame = collect(root, trust_edited=trust_edited)
    counts = frame["status"].value_counts().to_dict()
    ok = frame[frame["status"] == "ok"].copy()
    extra = []
    for job in ok["job"]:
        rec = json.loads((root / job / "metrics.json").read_text())
        details = rec.get("details") or {}
        defense = (
            details.get("defense") if isinstance(details.get("defense"), Mapping) else rec.get("defense")
        )
        # utility on the data's whole test split where the run measured it, else on its evaluation images
        held_out = isinstance(rec.get("utility_test"), Mapping)
        utility = rec["utility_test"] if held_out else rec.get("utility")
        utility = utility if isinstance(utility, Mapping) else {}
        victim = details.get("victim") or {}
        cut_info = details.get("cut") or {}
        extra.append(
            {
                "defense": _defense_label(defense),
                "defense_config": _job_config(root / job).get("defense"),
                "utility_on": "test split" if held_out else "evaluation images",
                "accuracy": _number(utility.get("accuracy")),
                "agreement": _number(utility.get("agreement")),
                "image_size": victim.get("image_size"),
                "num_classes": victim.get("num_classes"),
                "canonical": cut_info.get("canonical") or rec.get("cut"),
            }
        )
    extra_frame = pd.DataFrame(extra, index=ok.index)
    ok = pd.concat([ok.drop(columns=[c for c in extra_frame.columns if c in ok]), extra_frame], axis=1)
    return ok, {str(k): int(v) for k, v in counts.items()}


def _job_config(job: Path) -> dict[str, Any]:
    for path in (job / "config.yaml", job / ".hydra" / "config.yaml"):
        if path.is_file():
            try:
                return yaml.safe_load(path.read_text()) or {}
            except yaml.YAMLError:
                return {}
    return {}


LEAKAGE_COLUMNS = [
    *("cut", "defense", "ssim", "ssim_half", "ssim_hi", "ssim_over", "ssim_n", "ssim_attack", "verdict"),
    *("lpips", "lpips_lo", "lpips_attack", "attacks", "attack_names", "runs", "accuracy", "agreement"),
    "dfil",
]


def _dfil(group: pd.DataFrame) -> float:
    """The largest mean dFIL the runs of one (cut, defense) recorded (NaN without a noisy defense)."""
    if "dfil_mean" not in group or not group["dfil_mean"].notna().any():
        return math.nan
    return float(group["dfil_mean"].astype(float).max())


def _attack_stats(runs: pd.DataFrame) -> dict[str, Any]:
    """One attack's runs at one (cut, defense): SSIM and LPIPS over seeds (report.cell_stats) and the verdict
    of its fractions beating grey and the 4x4 low-pass, averaged over seeds."""
    from splitinv.report import cell_stats, seed_verdict

    empty = {"mean": math.nan, "half": math.nan, "count": 0}
    return {
        "ssim": cell_stats(runs, "ssim") if "ssim" in runs else empty,
        "lpips": cell_stats(runs, "lpips") if "lpips" in runs else empty,
        "verdict": seed_verdict(runs)[2],
    }


def _bound(stats: Mapping[str, Any], sign: int) -> float:
    """The interval's upper (sign 1) or lower (-1) end; the mean itself where there is no interval."""
    half = stats["half"]
    return stats["mean"] + sign * (half if half == half else 0.0)


def leakage(rows: pd.DataFrame) -> pd.DataFrame:
    """Per (cut, defense): the strongest attack (highest SSIM mean over seeds) with its 95 % interval, n and
    verdict; the lowest LPIPS; the attacks scored against the baselines there; runs and utility."""
    out = []
    for (cut, defense), group in rows.groupby(["cut", "defense"], sort=False):
        per = {str(a): _attack_stats(runs) for a, runs in group.groupby("attack", sort=True)}
        measured = {a: p for a, p in per.items() if p["ssim"]["count"]}
        strongest = max(measured, key=lambda a: measured[a]["ssim"]["mean"]) if measured else None
        with_lpips = {a: p for a, p in per.items() if p["lpips"]["count"]}
        closest = min(with_lpips, key=lambda a: with_lpips[a]["lpips"]["mean"]) if with_lpips else None
        scored = sorted(a for a, p in measured.items() if p["verdict"] != UNSCORED)
        best = measured[strongest]["ssim"] if strongest else None
        images = best["images"] if best else None
        out.append(
            {
                "cut": cut,
                "defense": defense,
                "ssim": best["mean"] if best else math.nan,
                "ssim_half": best["half"] if best else math.nan,
                "ssim_hi": _bound(best, 1) if best else math.nan,
                "ssim_over": best["over"] if best else "",
                "ssim_n": (f"{best['seeds']} × {images}" if images else f"{best['seeds']}") if best else "",
                "ssim_attack": strongest,
                "verdict": measured[strongest]["verdict"] if strongest else None,
                "lpips": with_lpips[closest]["lpips"]["mean"] if closest else math.nan,
                "lpips_lo": _bound(with_lpips[closest]["lpips"], -1) if closest else math.nan,
                "lpips_attack": closest,
                "attacks": len(scored),
                "attack_names": ";".join(scored),
                "runs": len(group),
                "accuracy": group["accuracy"].mean() if group["accuracy"].notna().any() else math.nan,
                "agreement": group["agreement"].mean() if group["agreement"].notna().any() else math.nan,
                "dfil": _dfil(group),
            }
        )
    return pd.DataFrame(out, columns=LEAKAGE_COLUMNS)


# ---------------------------------------------------------------------------------------------------------
# Pareto and constraints


def _utility_metric(table: pd.DataFrame) -> str | None:
    attacked = table[table["attacked"]] if "attacked" in table else table
    for metric in ("accuracy", "agreement"):
        if metric in attacked and len(attacked) and attacked[metric].notna().all():
            return metric
    return None


def _ranked(table: pd.DataFrame) -> pd.Series:
    """Rows that take part in the Pareto ranking: attacked cuts whose strongest attack beats the 4x4
    low-pass (not ``weak``); the ``image`` and ``device`` baseline rows are shown beside them, unranked."""
    ranked = table["ssim"].notna()
    if "weak" in table:
        ranked &= ~table["weak"].fillna(False).astype(bool)
    if "baseline" in table:
        ranked &= table["baseline"].isna()
    return ranked


def pareto(table: pd.DataFrame) -> pd.Series:
    """True for Pareto-optimal attacked rows, False for dominated ones, None for rows not attacked.

    Objectives: device_flops ↓, payload_bytes ↓, ssim ↓, and utility ↑ when every attacked row has it.
    A cut whose strongest attack does not beat the low-pass (``weak``) and the baseline rows are None too.
    """
    attacked = _ranked(table)
    objectives = [("device_flops", 1.0), ("payload_bytes", 1.0), ("ssim", 1.0)]
    if "utility" in table and len(table[attacked]) and table.loc[attacked, "utility"].notna().all():
        objectives.append(("utility", -1.0))
    values = [[sign * float(r[col]) for col, sign in objectives] for _, r in table[attacked].iterrows()]
    result = pd.Series([None] * len(table), index=table.index, dtype=object)
    for i, idx in enumerate(table.index[attacked]):
        mine = values[i]
        dominated = any(
            all(o <= m for o, m in zip(other, mine, strict=True))
            and any(o < m for o, m in zip(other, mine, strict=True))
            for j, other in enumerate(values)
            if j != i
        )
        result[idx] = not dominated
    return result


def check_constraints(constraints: Mapping[str, float | None]) -> dict[str, float]:
    """The given constraints (None dropped), validated: known names, finite, non-negative budgets."""
    out: dict[str, float] = {}
    for name, value in constraints.items():
        if value is None:
            continue
        if name not in CONSTRAINTS:
            raise SplitinvError(f"unknown constraint {name!r}: use some of {', '.join(CONSTRAINTS)}.")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise SplitinvError(f"constraint {name} needs a finite number, got {value!r}.")
        if value < 0:
            raise SplitinvError(
                f"constraint {name} = {value:g} is negative: budgets and thresholds are >= 0."
            )
        if name == "min_utility" and value > 1:
            raise SplitinvError(f"min_utility = {value:g}: utility is a fraction in [0, 1].")
        out[name] = float(value)
    return out


def _label(row: pd.Series) -> str:
    return row["cut"] if row.get("defense", "none") == "none" else f"{row['cut']} [{row['defense']}]"


def _describe_constraint(name: str, value: float) -> str:
    _, op, _, unit = CONSTRAINTS[name]
    return f"{name} {op} {value:g}{unit}"


def _meets(table: pd.DataFrame, name: str, value: float) -> pd.Series:
    """Rows meeting one constraint. Leakage constraints compare the end of the strongest attack's 95 %
    interval (SSIM's upper, LPIPS's lower end); a cut whose strongest attack does not beat the low-pass
    (``weak``) meets none of them, the ``device`` row (nothing but the label sent) all of them and
    ``max_dfil``."""
    column, op, scale, _ = CONSTRAINTS[name]
    leak = column in ("ssim", "lpips")
    column = {"ssim": "ssim_hi", "lpips": "lpips_lo"}.get(column, column) if leak else column
    column = column if column in table else CONSTRAINTS[name][0]
    if column not in table:
        return pd.Series(False, index=table.index)
    values = table[column].astype(float)
    ok = (values <= value * scale if op == "<=" else values >= value * scale) & values.notna()
    if leak and "weak" in table:
        ok &= ~table["weak"].fillna(False).astype(bool)
    if (leak or column == "dfil") and "baseline" in table:  # the device row sends no features: dFIL 0
        ok |= table["baseline"] == "device"
    return ok


def best_first(table: pd.DataFrame) -> pd.DataFrame:
    """With an end-to-end estimate (a profile): fastest end to end first; else lowest SSIM (upper interval
    end; the ``device`` row leaks none; not attacked last). Then fewest device FLOPs, fewest payload bytes,
    most utility."""
    ssim = (table["ssim_hi"] if "ssim_hi" in table else table["ssim"]).astype(float)
    if "baseline" in table:
        ssim = ssim.where(table["baseline"] != "device", 0.0)
    keys = table.assign(
        _ssim=ssim.fillna(math.inf),
        _utility=-(table["utility"].fillna(-math.inf)) if "utility" in table else 0.0,
    )
    order = ["_ssim", "device_flops", "payload_bytes", "_utility"]
    if "e2e_ms" in table:
        order.insert(0, "e2e_ms")
    return table.loc[keys.sort_values(order, kind="stable").index]


@dataclass
class Verdict:
    """The rows meeting every constraint (best first) and, when there are none, what binds."""

    constraints: dict[str, float]
    rows: pd.DataFrame
    total: int
    met_alone: dict[str, int] = field(default_factory=dict)
    without: dict[str, list[str]] = field(default_factory=dict)  # constraint -> rows admitted when dropped

    @property
    def binding(self) -> list[str]:
        """Constraints whose removal alone would admit some row (when nothing meets all of them)."""
        return [name for name, rows in self.without.items() if rows] if self.rows.empty else []

    def summary(self) -> str:
        wanted = ", ".join(_describe_constraint(n, v) for n, v in self.constraints.items())
        if not self.rows.empty:
            verb = "meets" if len(self.rows) == 1 else "meet"
            rank = "fastest end to end first" if "e2e_ms" in self.rows else "best first"
            lines = [f"{len(self.rows)} of {self.total} rows {verb} {wanted} ({rank}):"]
            for i, (_, r) in enumerate(self.rows.iterrows(), 1):
                lines.append(f"  {i}. {_short(r)}")
            return "\n".join(lines)
        lines = [f"no row meets all of {wanted}."]
        if self.binding:
            for name in self.binding:
                admitted = ", ".join(self.without[name])
                lines.append(
                    f"  {_describe_constraint(name, self.constraints[name])} binds: without it, {admitted}."
                )
        else:
            alone = ", ".join(f"{n} {self.met_alone[n]}/{self.total}" for n in self.constraints)
            lines.append(f"  no single constraint binds alone; met by each on its own: {alone}.")
        if any(CONSTRAINTS[n][0] in ("ssim", "lpips") for n in self.constraints):
            lines.append(
                "  (cut points that were not attacked, or whose strongest attack does not beat the 4x4 "
                "low-pass, never meet a leakage constraint.)"
            )
        return "\n".join(lines)


def _short(r: pd.Series) -> str:
    if r.get("baseline") == "device":
        ssim = "no leakage (only the label is sent)"
    elif r.get("baseline") == "image":
        ssim = "SSIM 1 (the image itself is sent)"
    elif pd.notna(r.get("ssim")):
        ssim = f"SSIM {r['ssim']:.3f}{_half(r)} ({r['ssim_attack']})"
        if pd.notna(r.get("ssim_hi")) and r.get("ssim_half") == r.get("ssim_half"):
            ssim += f", upper bound {r['ssim_hi']:.3f}"
    else:
        ssim = "not attacked"
    text = f"{_label(r)}: {ssim}, {r['device_flops'] / 1e6:.2f} MFLOPs, " + (
        f"{r['payload_bytes']:.0f} B sent"
        if r["payload_bytes"] < 1024
        else f"{r['payload_bytes'] / 1024:.2f} KiB sent"
    )
    if pd.notna(r.get("utility")):
        text += f", utility {r['utility']:.3f}"
    if "e2e_ms" in r and pd.notna(r["e2e_ms"]):
        text += f", ~{r['e2e_ms']:.1f} ms end to end"
    return text


def constrain(table: pd.DataFrame, constraints: Mapping[str, float | None]) -> Verdict:
    """The rows of an :func:`advise` table meeting every one of ``constraints`` (:data:`CONSTRAINTS`)."""
    wanted = check_constraints(constraints)
    if not wanted:
        raise SplitinvError(f"no constraint given: use some of {', '.join(CONSTRAINTS)}.")
    if "max_e2e_ms" in wanted and "e2e_ms" not in table:
        raise SplitinvError("max_e2e_ms needs a device profile (--profile, or --uplink-mbps and friends).")
    masks = {n: _meets(table, n, v) for n, v in wanted.items()}
    every = pd.Series(True, index=table.index)
    for mask in masks.values():
        every &= mask
    verdict = Verdict(wanted, best_first(table[every]), len(table))
    verdict.met_alone = {n: int(m.sum()) for n, m in masks.items()}
    if not every.any():
        for name in wanted:
            others = pd.Series(True, index=table.index)
            for other, mask in masks.items():
                if other != name:
                    others &= mask
            verdict.without[name] = [_label(r) for _, r in best_first(table[others]).iterrows()]
    return verdict


# ---------------------------------------------------------------------------------------------------------
# The advisor


def _points(victim: nn.Module, cuts: str | Sequence[str] | None) -> list[str]:
    from splitinv.cut import cut_points, resolve_point, stage_points

    if cuts is None or cuts == "all":
        return cut_points(victim)
    if isinstance(cuts, str):
        if cuts == "stages":
            return stage_points(victim)
        kind, _, k = cuts.partition(":")
        if kind == "every":
            if not k.isdigit() or int(k) < 1:
                raise SplitinvError(f"cuts={cuts!r}: every:K takes a positive K.")
            return stage_points(victim, every=int(k))
        cuts = [c.strip() for c in cuts.split(",") if c.strip()]
    return [resolve_point(victim, c) for c in cuts]


def _build_victim(name: str, image_size: int | None, num_classes: int | None) -> nn.Module:
    from splitinv.victims import build_victim

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # costs do not depend on the weights: random ones are fine
        return build_victim(name, weights=None, num_classes=num_classes, image_size=image_size)


def _one(values: Iterable[Any], what: str, sweep: Path) -> Any:
    found = sorted(
        {v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))}, key=str
    )
    if len(found) > 1:
        raise SplitinvError(
            f"the sweep {sweep} mixes {what}s {', '.join(map(str, found))}: advise one at a time."
        )
    return found[0] if found else None


def advise(
    sweep: str | Path | None = None,
    victim: str | nn.Module | None = None,
    *,
    image_size: int | None = None,
    num_classes: int | None = None,
    cuts: str | Sequence[str] | None = None,
    profile: DeviceProfile | None = None,
    wire: str = "fp32",
    latency_runs: int = 20,
    warmup: int = 3,
    method: str = "auto",
    attacked_only: bool = False,
    trust_edited: bool = False,
    jpeg_quality: int = JPEG_QUALITY,
) -> pd.DataFrame:
    """The advisor's table: one row per cut point (x defense a sweep ran there), see the module doc.

    ``sweep``: a folder written by ``splitinv-run -m`` (its finished runs give leakage and utility; its
    victim, image size and classes are used when ``victim`` / ``image_size`` are not given; a different
    victim or size is refused). ``victim``: a name or a built Victim; without a sweep every row is "not
    attacked". ``cuts``: all (default), stages, every:K, or names / specs. ``trust_edited``: read edited
    metrics.json files (else they are left out, warned about). ``table.attrs`` holds the
    victim, image size, machine, profile, wire precision, utility metric and the attack count that flags.
    """
    if wire not in WIRE_BYTES:
        raise SplitinvError(f"unknown wire precision {wire!r}: use one of {', '.join(WIRE_BYTES)}.")
    if sweep is None and victim is None:
        raise SplitinvError("pass a sweep folder, a victim, or both.")
    rows = pd.DataFrame()
    counts: dict[str, int] = {}
    name = victim if isinstance(victim, str) else getattr(victim, "name", None)
    if sweep is not None:
        sweep = Path(sweep)
        rows, counts = sweep_rows(sweep, trust_edited=trust_edited)
        if rows.empty:
            detail = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none"
            fix = "run the sweep first (splitinv advise --run ...)"
            if counts.get("edited"):  # the warning before names each file
                fix = "rerun the edited jobs, or pass --trust-edited to accept the edits"
            raise SplitinvError(f"no finished runs below {sweep} ({detail}): {fix}.")
        victims = sorted(set(rows["victim"].astype(str)))
        if name is None:
            if len(victims) > 1:
                raise SplitinvError(
                    f"the sweep {sweep} holds victims {', '.join(victims)}: pass --victim NAME."
                )
            name = victims[0]
        elif name not in victims:
            raise SplitinvError(
                f"the sweep {sweep} attacked {', '.join(victims)}, not {name}: pass the sweep of {name}, or "
                "leave the victim out to advise on the sweep's own."
            )
        rows = rows[rows["victim"].astype(str) == name]
        size = _one(rows["image_size"], "image size", sweep)
        if image_size is not None and size is not None and int(size) != int(image_size):
            raise SplitinvError(f"the sweep {sweep} ran {name} at {size} px, not {image_size} px.")
        image_size = image_size or size
        num_classes = num_classes or _one(rows["num_classes"], "class count", sweep)
    if isinstance(victim, nn.Module):
        model = victim
        if image_size is not None and getattr(model, "image_size", image_size) != image_size:
            raise SplitinvError(
                f"victim {name} takes {model.image_size} px images, the sweep ran {image_size} px."
            )
    else:
        model = _build_victim(str(name), image_size, num_classes)
    from splitinv.cut import describe_cut_points
    from splitinv.victims import check_input_cost

    check_input_cost(model, int(getattr(model, "image_size", image_size or 224)))  # before any timing

    listed = describe_cut_points(model, method=method, with_shapes=False)
    canonical = {n: p.name for p in listed for n in (p.name, *p.aliases)}
    points = _points(model, cuts)
    pairs: list[tuple[str, str]] = []
    defenses: dict[str, Defense] = {}
    most = 0
    if not rows.empty:
        rows = rows.assign(
            cut=[
                canonical.get(str(c), canonical.get(str(r), str(r)))
                for c, r in zip(rows["canonical"], rows["cut"], strict=True)
            ]
        )
        # the flag compares with the most-attacked cut of the whole sweep, listed here or not
        most = int(leakage(rows)["attacks"].max())
        if cuts is None:  # every swept point is listed, even one the listing names otherwise
            points += [c for c in dict.fromkeys(rows["cut"]) if c not in points]
        else:
            rows = rows[rows["cut"].isin(points)]
        for (cut, label), group in rows.groupby(["cut", "defense"], sort=False):
            pairs.append((cut, label))
            if label != "none" and label not in defenses:
                defenses[label] = _rebuild_defense(label, group["defense_config"].iloc[0])
    costs = cut_costs(
        model, points, defenses, pairs, wire=wire, latency_runs=latency_runs, warmup=warmup, method=method
    )
    leak = leakage(rows) if not rows.empty else pd.DataFrame(columns=LEAKAGE_COLUMNS)
    table = costs.merge(leak, on=["cut", "defense"], how="left")
    table["attacks"] = table["attacks"].fillna(0).astype(int)
    table["runs"] = table["runs"].fillna(0).astype(int)
    table["attacked"] = table["ssim"].notna()
    if attacked_only:
        table = table[table["attacked"]].reset_index(drop=True)
    table["flagged"] = table["attacked"] & (table["attacks"] < most)
    # the strongest attack does not beat the 4x4 low-pass: its SSIM does not measure leakage
    table["weak"] = table["attacked"] & (table["verdict"] != LEAKS)
    metric = _utility_metric(table)
    table["utility"] = table[metric] if metric else math.nan
    images, images_job = _evaluation_images(Path(sweep) if sweep is not None else None, rows)
    extra = baseline_rows(model, images, quality=jpeg_quality, latency_runs=latency_runs, warmup=warmup)
    undefended = table[(table["defense"] == "none") & table["attacked"]]["utility"]
    extra["utility"] = undefended.mean() if undefended.notna().any() else math.nan  # the whole victim
    extra[["flagged", "weak"]] = False
    table = pd.concat([table.assign(baseline=None), extra], ignore_index=True)
    if profile is not None:
        table = estimate_latency(table, profile)
    table["pareto"] = pareto(table)
    table = table.sort_values(
        ["index", "defense"], key=lambda s: s if s.name == "index" else s.ne("none"), kind="stable"
    )
    table = table.reset_index(drop=True)
    table.attrs.update(
        victim=str(name),
        image_size=int(getattr(model, "image_size", image_size or 0)),
        sweep=str(sweep) if sweep is not None else None,
        runs=counts,
        machine=machine(),
        latency_runs=latency_runs,
        wire=wire,
        profile=profile.describe() if profile else None,
        utility_metric=metric,
        utility_on=(
            "the test split"
            if len(rows) and "utility_on" in rows and (rows["utility_on"] == "test split").all()
            else "the evaluation images"
        ),
        max_attacks=most,
        jpeg_quality=int(jpeg_quality),
        jpeg_images=0 if images is None else len(images),
        jpeg_job=images_job,
    )
    return table


def _rebuild_defense(label: str, node: Any) -> Defense:
    """The defense a sweep's job ran, from its saved config (for its payload and device cost)."""
    if isinstance(node, Mapping) and node.get("_target_"):
        from hydra.utils import instantiate

        try:
            defense = instantiate(node)
        except Exception as err:  # a defense this checkout cannot build: say so, count it undefended
            warnings.warn(
                f"cannot rebuild defense {label!r} ({type(err).__name__}: {err}): its payload and device "
                "cost are shown as the undefended cut's",
                stacklevel=2,
            )
            return NoDefense()
        if isinstance(defense, Defense):
            if getattr(defense, "target_dfil", None) is not None:  # sigma chosen in the run: costs ignore it
                defense.scale = 0.0
            return defense
    warnings.warn(
        f"the sweep's config does not say how to build defense {label!r}: its payload and device cost are "
        "shown as the undefended cut's",
        stacklevel=2,
    )
    return NoDefense()


# ---------------------------------------------------------------------------------------------------------
# Rendering


def _f(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


WEAK_MARK = "⚠"  # the strongest attack does not beat the 4x4 low-pass (its verdict)
IMAGES_MARK = "§"  # one seed: the interval is over its images


def _half(r: pd.Series) -> str:
    """`` ± half-width`` of the strongest attack's 95 % interval (``§`` when over one seed's images)."""
    half = r.get("ssim_half")
    if half is None or not isinstance(half, float) or math.isnan(half):
        return ""
    return f" ± {half:.3f}" + (IMAGES_MARK if r.get("ssim_over") == "images" else "")


def _leak_cell(r: pd.Series) -> str:
    if r.get("baseline") == "image":
        return "1 (image)"
    if r.get("baseline") == "device":
        return "none"
    return _f(r["ssim"], 3) + (_half(r) if r["attacked"] else "") + (WEAK_MARK if r.get("weak") else "")


def _pareto_cell(r: pd.Series) -> str:
    if r.get("baseline") in ("image", "device"):
        return "baseline"
    if r.get("weak"):
        return "attack too weak"
    return "yes" if r["pareto"] is True else ("" if r["pareto"] is False else "not attacked")


def _columns(table: pd.DataFrame) -> list[tuple[str, str, Any]]:
    """(header, LaTeX header, cell function) for the rendered table."""
    several = table["defense"].nunique() > 1 or (table["defense"] != "none").any()
    wire = table.attrs.get("wire", "fp32")
    cols: list[tuple[str, str, Any]] = [("cut", "cut", lambda r: r["cut"])]
    if several:
        cols.append(("defense", "defense", lambda r: r["defense"]))
    cols += [
        ("shape", "shape", lambda r: r["shape"]),
        ("MFLOPs ↓", r"MFLOPs $\downarrow$", lambda r: _f(r["device_flops"] / 1e6)),
        ("params (k)", "params (k)", lambda r: _f(r["device_params"] / 1e3, 1)),
        ("peak act. KiB", "peak act.\\ KiB", lambda r: _f(r["device_peak_bytes"] / 1024, 1)),
        ("latency ms", "latency ms", lambda r: _f(r["device_latency_ms"])),
        ("fp32 KiB", "fp32 KiB", lambda r: _f(r["bytes_fp32"] / 1024)),
        ("fp16 KiB", "fp16 KiB", lambda r: _f(r["bytes_fp16"] / 1024)),
        ("int8 KiB", "int8 KiB", lambda r: _f(r["bytes_int8"] / 1024)),
    ]
    if several:
        cols.append(
            (
                f"sent KiB ({wire}) ↓",
                rf"sent KiB ({wire}) $\downarrow$",
                lambda r: _f(r["payload_bytes"] / 1024),
            )
        )
    if "jpeg_bytes" in table:
        q = table.attrs.get("jpeg_quality", JPEG_QUALITY)
        cols.append(
            (
                f"JPEG q{q} KiB",
                f"JPEG q{q} KiB",
                lambda r: _f(r["jpeg_bytes"] / 1024) if r.get("baseline") == "image" else "—",
            )
        )
    if "e2e_ms" in table:
        cols.append(("e2e ms (est.) ↓", r"e2e ms (est.) $\downarrow$", lambda r: _f(r["e2e_ms"], 1)))
    cols += [
        ("SSIM ↓", r"SSIM $\downarrow$", _leak_cell),
        ("n", "n", lambda r: r["ssim_n"] if r["attacked"] and isinstance(r.get("ssim_n"), str) else "—"),
        ("LPIPS ↑", r"LPIPS $\uparrow$", lambda r: "—" if r.get("baseline") else _f(r["lpips"], 3)),
        *_dfil_column(table),
        ("strongest attack", "strongest attack", lambda r: r["ssim_attack"] if r["attacked"] else "—"),
        ("verdict", "verdict", lambda r: r["verdict"] if r["attacked"] else "—"),
        ("attacks", "attacks", lambda r: _attacks(r)),
    ]
    if table.attrs.get("utility_metric"):
        label = "acc." if table.attrs["utility_metric"] == "accuracy" else "agr."
        cols.append((f"{label} ↑", rf"{label} $\uparrow$", lambda r: _f(r["utility"], 3)))
    cols.append(("Pareto", "Pareto", _pareto_cell))
    return cols


def _dfil_column(table: pd.DataFrame) -> list[tuple[str, str, Any]]:
    """The dFIL column (the Fisher-information bound of a noisy defense), where some row has one."""
    if "dfil" not in table or not table["dfil"].notna().any():
        return []
    return [("dFIL ↓", r"dFIL $\downarrow$", lambda r: _f(r["dfil"], 3))]


def _attacks(r: pd.Series) -> str:
    if r.get("baseline"):
        return "—"
    if not r["attacked"]:
        return "0"
    text = f"{r['attacks']} attack{'s' if r['attacks'] != 1 else ''}"
    return text + "†" if r["flagged"] else text


def notes(table: pd.DataFrame) -> list[str]:
    """The footnotes that say what each number is."""
    a = table.attrs
    size = a.get("image_size")
    lines = [
        f"{a.get('victim')} at {size}x{size} px, batch 1. Device = normalisation + head + defense. FLOPs by "
        "torch.utils.flop_counter (convolutions, matrix multiplies, attention; 2 per multiply-accumulate; "
        "element-wise ops not counted). Peak act.: largest total of live tensor storages in the forward "
        "pass, input included, weights excluded.",
        f"Latency: median of {a.get('latency_runs')} runs on this machine: {a.get('machine')}.",
        "KiB = 1024 bytes crossing the cut per image.",
    ]
    if a.get("profile"):
        lines.append(f"e2e (estimated) = device + uplink + server time for profile {a['profile']}.")
    lines.append(
        "Arrows: which way is better for the one deploying the split (less device cost, fewer bytes, "
        "less leakage: SSIM ↓, LPIPS ↑, more utility); the attacker's view is the opposite."
    )
    if table["attacked"].any():
        lines.append(
            "SSIM: the strongest attack at that cut (highest mean over seeds) ± the half-width of its 95 % "
            "Student-t interval over the per-seed means (§: one seed, over its images); n = seeds × images; "
            "--max-ssim compares the interval's upper end. LPIPS: the lowest mean. Higher SSIM and lower "
            "LPIPS mean more of the input leaks."
        )
        lines.append(
            "verdict: the strongest attack's, from its fractions of images beating a grey image and a 4x4 "
            "low-pass of the original (averaged over seeds); attacks: distinct attacks scored against "
            "those baselines there (verdict not unscored)."
        )
    if table["weak"].any() if "weak" in table else False:
        lines.append(
            f"{WEAK_MARK} the strongest attack does not beat the 4x4 low-pass: its SSIM says little about "
            "what leaks, so the cut is not counted as private (it meets no leakage constraint and is not "
            "ranked); give the attack more budget."
        )
    if "baseline" in table and (table["baseline"] == "image").any():
        image = table[table["baseline"] == "image"].iloc[0]
        if a.get("jpeg_images"):
            jpeg = (
                f"as JPEG at quality {a.get('jpeg_quality')}: {image['jpeg_bytes'] / 1024:.2f} KiB, the mean "
                f"of the {a['jpeg_images']} evaluation images in job {a.get('jpeg_job')}'s images.pt (PIL)"
            )
        else:
            jpeg = "JPEG n/a (no evaluation images: pass a sweep)"
        device = table[table["baseline"] == "device"].iloc[0]
        lines.append(
            f"image: the input sent as it is (no device compute; everything leaks: SSIM 1, PSNR inf); as "
            f"uint8 {image['payload_bytes'] / 1024:.2f} KiB (the int8 column, used for e2e), {jpeg}. "
            f"device: the whole network on the device (no input leaks); only the label is sent, "
            f"{int(device['payload_bytes'])} byte(s) ({device['shape']})."
        )
    if table["flagged"].any():
        lines.append(
            f"† attacked by fewer attacks than the most-attacked cut ({a.get('max_attacks')}): its leakage "
            "may be understated."
        )
    if a.get("utility_metric"):
        on = a.get("utility_on", "the evaluation images")
        lines.append(f"Utility: {a['utility_metric']} of the (defended) split on {on}.")
    if not table["attacked"].any():
        return lines
    objectives = "device FLOPs ↓, bytes sent ↓, SSIM ↓" + (", utility ↑" if a.get("utility_metric") else "")
    lines.append(
        f"Pareto: no other attacked cut is at least as good in all of ({objectives}) and better in one; "
        "cut points without a leakage run are shown as not attacked and not ranked."
    )
    return lines


def render(table: pd.DataFrame, fmt: str = "md") -> str:
    """The table as Markdown (Pareto rows in bold), LaTeX (booktabs) or CSV (every column, plain numbers)."""
    if fmt not in ("md", "latex", "csv"):
        raise SplitinvError(f"unknown table format {fmt!r}: use md, latex or csv.")
    if fmt == "csv":
        return table.drop(columns=["index"]).to_csv(index=False)
    cols = _columns(table)
    body = [[str(fn(r)) for _, _, fn in cols] for _, r in table.iterrows()]
    if fmt == "md":
        for line, (_, r) in zip(body, table.iterrows(), strict=True):
            if r["pareto"] is True:
                line[0], line[-1] = f"**{line[0]}**", f"**{line[-1]}**"
        out = ["| " + " | ".join(h for h, _, _ in cols) + " |", "|" + "---|" * len(cols)]
        out += ["| " + " | ".join(line) + " |" for line in body]
        return "\n".join(out) + "\n\n" + "\n".join(f"- {n}" for n in notes(table)) + "\n"
    esc = str.maketrans(
        {
            "_": r"\_",
            "%": r"\%",
            "&": r"\&",
            "†": r"$^\dagger$",
            "⚠": r"$^{!}$",
            "§": r"$^\S$",
            "×": r"$\times$",
            "—": "--",
            "↓": r"$\downarrow$",
            "↑": r"$\uparrow$",
            "±": r"$\pm$",
        }
    )
    out = [r"\begin{tabular}{l" + "c" * (len(cols) - 1) + "}", r"\toprule"]
    out.append(" & ".join(h for _, h, _ in cols) + r" \\")
    out.append(r"\midrule")
    for line, (_, r) in zip(body, table.iterrows(), strict=True):
        cells = [c.translate(esc) for c in line]
        if r["pareto"] is True:
            cells[0], cells[-1] = rf"\textbf{{{cells[0]}}}", rf"\textbf{{{cells[-1]}}}"
        out.append(" & ".join(cells) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}"]
    out += ["", r"\smallskip\footnotesize"] + [n.translate(esc) + r"\par" for n in notes(table)]
    return "\n".join(out) + "\n"


def plot(table: pd.DataFrame, out_dir: str | Path, stem: str = "advise_pareto") -> list[Path]:
    """Leakage (best SSIM) against device cost (MFLOPs), marker area by bytes sent, Pareto cuts filled,
    one marker shape per defense; He et al.'s SSIM 0.3 as a dashed line. Writes ``stem``.png and .pdf."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    attacked = table[table["attacked"]].copy()
    if attacked.empty:
        raise SplitinvError("nothing to plot: no cut point has a leakage run (pass a sweep folder).")
    attacked["best"] = attacked["pareto"].map(lambda v: v is True)
    kib = attacked["payload_bytes"] / 1024
    biggest = max(float(kib.max()), 1e-9)

    def area(value: float) -> float:
        return 30 + 470 * value / biggest

    markers = dict(zip(dict.fromkeys(attacked["defense"]), "osD^vP*X", strict=False))
    styles = {True: ("tab:red", "black", "Pareto-optimal"), False: ("none", "tab:gray", "dominated")}
    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    handles, labels = [], []
    for (label, best), part in attacked.groupby(["defense", "best"], sort=False):
        face, edge, name = styles[bool(best)]
        ax.scatter(
            part["device_flops"] / 1e6,
            part["ssim"],
            s=[area(v) for v in part["payload_bytes"] / 1024],
            marker=markers[label],
            facecolors=face,
            edgecolors=edge,
            linewidths=1.0,
            alpha=0.85,
            zorder=3,
        )
        handles.append(Line2D([], [], marker=markers[label], ls="", mfc=face, mec=edge, markersize=7))
        labels.append(name + (f" ({label})" if len(markers) > 1 else ""))
    for value in sorted({float(kib.min()), float(kib.max())}):
        handles.append(
            Line2D([], [], marker="o", ls="", mfc="none", mec="tab:gray", markersize=area(value) ** 0.5)
        )
        labels.append(f"{value:.2f} KiB sent")
    for _, r in attacked.iterrows():
        tag = r["cut"] + ("†" if r["flagged"] else "") + (WEAK_MARK if r.get("weak") else "")
        xy = (r["device_flops"] / 1e6, r["ssim"])
        gap = area(r["payload_bytes"] / 1024) ** 0.5 / 2  # clear of the marker's edge
        ax.annotate(tag, xy, textcoords="offset points", xytext=(gap + 2, gap * 0.5 + 2), fontsize=7)
    ax.axhline(0.3, color="tab:gray", linestyle="--", linewidth=0.8, zorder=1)
    ax.annotate(
        "SSIM 0.3",
        (1.0, 0.3),
        xycoords=("axes fraction", "data"),
        xytext=(-4, 3),
        textcoords="offset points",
        ha="right",
        fontsize=6,
        color="tab:gray",
    )
    mflops = attacked["device_flops"] / 1e6
    if mflops.max() / max(mflops.min(), 1e-9) > 30:
        ax.set_xscale("log")
    ax.set_xlabel("device cost (MFLOPs per image, head + defense)")
    ax.set_ylabel("leakage: best attack SSIM ↓")
    ax.grid(alpha=0.3)
    ax.legend(handles, labels, fontsize=7, frameon=False, loc="best", labelspacing=1.2)
    hidden = int(
        (~table["attacked"] & table.get("baseline", pd.Series(None, index=table.index)).isna()).sum()
    )
    title = f"{table.attrs.get('victim')} at {table.attrs.get('image_size')} px"
    if hidden:
        title += f" ({hidden} cut points not attacked, not shown)"
    if table["flagged"].any():
        title += "; † fewer attacks"
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.png", out / f"{stem}.pdf"]
    for path in paths:
        fig.savefig(path, dpi=200, bbox_inches="tight")
    plt.close(fig)
    return paths


# ---------------------------------------------------------------------------------------------------------
# Running the sweep the advisor needs


def sweep_command(
    sweep_dir: str | Path,
    *,
    victim: str | None = None,
    image_size: int | None = None,
    weights: str | None = None,
    cuts: str | Sequence[str] | None = None,
    attacks: Sequence[str] | None = None,
    experiment: str | None = None,
    launcher: str | None = None,
    overrides: Sequence[str] = (),
) -> list[str]:
    """The ``splitinv-run -m`` command line that runs the advisor's sweep into ``sweep_dir``."""
    import importlib.resources

    from splitinv.task import check_grammar, hydra_quote

    if not experiment and not attacks:
        raise SplitinvError("--run needs --attacks (e.g. decoder,rmle) or --experiment NAME.")
    if not experiment and not victim:
        raise SplitinvError("--run needs a victim (or --experiment NAME).")
    victim_configs = {p.name for p in (importlib.resources.files("splitinv.conf") / "victim").iterdir()}
    args = ["-m"]
    if experiment:
        args.append(f"experiment={experiment}")
    if victim:
        args.append(f"victim={victim}" if f"{victim}.yaml" in victim_configs else f"victim.name={victim}")
    if image_size:
        args.append(f"victim.image_size={int(image_size)}")
    if weights:
        args.append(f"victim.weights={hydra_quote(str(weights))}")
    if cuts is None and not experiment:
        cuts = "stages"
    if isinstance(cuts, str):  # splitinv-run expands cut=@stages / @all / @every:K for the victim
        special = cuts in ("stages", "all") or cuts.startswith("every:")
        cuts = [f"@{cuts}"] if special else cuts.split(",")
    if cuts:
        args.append("cut=" + ",".join(c.strip() for c in cuts if c.strip()))
    if attacks:
        args.append("attack=" + ",".join(attacks))
    if launcher:
        args.append(f"hydra/launcher={launcher}")
    args += list(overrides)
    args.append(f"hydra.sweep.dir={hydra_quote(str(Path(sweep_dir).resolve()))}")
    for arg in args[1:]:  # a bad --set fails here in one line, not in the sweep's log
        check_grammar(arg)
    script = shutil.which("splitinv-run")
    command = [script] if script else [sys.executable, "-c", "from splitinv.run import main; main()"]
    return [*command, *args]


def run_sweep(command: Sequence[str], log_file: str | Path) -> None:
    """Run the sweep (the same Hydra app and launchers as ``splitinv-run -m``); its output goes to
    ``log_file``. A failed command ends in one line naming the log."""
    log = Path(log_file)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as handle:
        proc = subprocess.run(list(command), stdout=handle, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
        errors = [ln for ln in lines if "error" in ln.lower()]
        last = (errors or lines or ["no output"])[-1]
        raise SplitinvError(f"the sweep failed (exit {proc.returncode}): {last} (full log: {log}).")
