"""The activation cache: building it streams (memory of one batch, whatever the set size), and a 4-cut-point
decoder sweep with it against without it.

1. Build. A fresh process builds the cache of ``--build-images`` noise images at ``--size`` for the four cut
   points under a memory cap (``RLIMIT_DATA``: the process's data segment at the start plus
   ``--cap-mib``) several times smaller than the activations of the whole set, so a build that held the set
   fails. Printed: the bytes of one image, one batch and the set over the points, the peak RSS growth
   during the build (sampled), its time and throughput.
2. Sweep. Four jobs (one per cut point) without the cache, where every job pushes the auxiliary images
   through the frozen head in every epoch (and draws its crops again), and with it, where the first job runs
   the head once for all four points and every job trains its decoder from disk. Same victim, data, decoder
   and budget in both. The two sides of each job run back to back in alternating order (job k: without
   first when k is even), ``--repeats`` times over fresh cache folders; per-job times, the totals' medians
   and spreads and the machine's load are printed, the time ratio last.

What the cache can save is the head's share of an epoch: a job without it costs H + D per epoch (head
forward, decoder forward + backward), a job with it D, so the ratio cannot go below D / (H + D); per-job
start-up (building the victim, evaluating) costs the same on both sides and pulls it towards 1.

    python experiments/benchmarks/feature_cache.py                                  # VGG-16-BN, 32 px
    python experiments/benchmarks/feature_cache.py --victim vit_huge_patch14_224 --size 56 \\
        --points blocks.7,blocks.15,blocks.23,blocks.31 --n-aux 128 --epochs 8
    python experiments/benchmarks/feature_cache.py --device cuda --size 224 --precision bf16-mixed \\
        --build-images 6000 --cap-mib 4096 --n-aux 6000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

from _common import machine, quiet, spread

VGG_POINTS = "features.12,features.22,features.32,features.42"


# ------------------------------------------------------------------------------------------------ build


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _data_segment() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024
    return 0


def build_worker(args: argparse.Namespace) -> None:
    """(In a fresh process) build the cache under the memory cap; print one JSON line of measurements."""
    import torch
    from torch.utils.data import Dataset

    from splitinv import build_victim
    from splitinv.cut import extractor
    from splitinv.features import FeatureCache

    n, size, batch = args.build_images, args.size, args.batch

    class Noise(Dataset):
        def __len__(self) -> int:
            return n

        def __getitem__(self, i: int) -> tuple:
            return torch.rand(3, size, size, generator=torch.Generator().manual_seed(i)), 0, i

    class Data:
        def describe(self) -> dict:
            return {"name": "noise", "n": n, "size": size}

        def setup(self, stage: str) -> None:
            pass

        def aux_dataset(self) -> Dataset:
            return Noise()

    warnings.filterwarnings("ignore")
    victim = build_victim(args.victim, image_size=size).to(args.device).eval()
    points = args.points.split(",")
    cache = FeatureCache(args.build_dir, victim, Data(), points, batch_size=batch)
    extract = extractor(victim, points)
    peak, done = [_rss()], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak.append(_rss())
            time.sleep(0.005)

    base = peak[0]
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    with torch.no_grad():  # one batch alone: its forward pass and its activations, what a build must hold
        x = torch.stack([Noise()[i][0] for i in range(batch)]).to(args.device)
        out = {k: v.half().cpu() for k, v in extract(x).items()}
        del x
    one_batch = max(peak) - base
    per_image = sum(v[0].numel() * 2 for v in out.values()) + 3 * size * size  # fp16 + uint8 image
    del out
    cap = _data_segment() + args.cap_mib * 2**20
    resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))
    start = time.perf_counter()
    error = None
    try:
        cache.compute()
    except (RuntimeError, MemoryError) as err:
        error = f"{type(err).__name__}: {str(err)[:120]}"
    seconds = time.perf_counter() - start
    done.set()
    thread.join()
    print(
        json.dumps(
            {
                "per_image": per_image,
                "one_batch": one_batch,
                "set": per_image * n,
                "cap": args.cap_mib * 2**20,
                "growth": max(peak) - base,
                "seconds": seconds,
                "error": error,
            }
        )
    )


def build(args: argparse.Namespace, folder: Path) -> None:
    cmd = [sys.executable, __file__, "--build-worker", "--build-dir", str(folder)]
    for key in ("victim", "points", "size", "batch", "build_images", "cap_mib", "device"):
        cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if out.returncode != 0:
        raise SystemExit(out.stderr[-3000:])
    m = json.loads(out.stdout.strip().splitlines()[-1])
    mib = 2**20
    print(
        f"build: {args.build_images} images x {m['per_image'] / 1024:.1f} KiB (points in fp16 + uint8 image) "
        f"= {m['set'] / mib:.1f} MiB on disk; memory cap {m['cap'] / mib:.0f} MiB above the start "
        f"({m['set'] / m['cap']:.1f}x smaller than the set)"
    )
    one = m["one_batch"] / mib
    print(f"one batch of {args.batch} alone (forward pass + activations): peak RSS growth {one:.1f} MiB")
    if m["error"]:
        print(f"build FAILED under the cap: {m['error']}")
        return
    print(
        f"whole build: peak RSS growth {m['growth'] / mib:.1f} MiB ({m['growth'] / 2**20 / one:.2f}x "
        f"one batch; {m['set'] / max(1, m['growth']):.1f}x below the set), {m['seconds']:.1f} s, "
        f"{args.build_images / m['seconds']:.0f} images/s"
    )


# ------------------------------------------------------------------------------------------------ sweep


def job(points: list[str], i: int, base: list[str], out: Path, cache: bool) -> float:
    """Seconds for job ``i`` of the sweep (cut point ``points[i]``), with or without the cache."""
    from splitinv.config import compose
    from splitinv.run import run

    extra = [f"cut={points[i]}", f"cache.enabled={str(cache).lower()}", f"cache.dir={out / 'cache'}"]
    extra.append("cache.points=[" + ",".join(points) + "]")
    start = time.perf_counter()
    run(compose([*base, *extra], output_dir=out / str(i)))
    return time.perf_counter() - start


def sweep(args: argparse.Namespace, tmp: Path) -> None:
    points = args.points.split(",")
    base = [
        "victim=resnet18",  # the group's build_victim config, for any torchvision/timm name:
        f"victim.name={args.victim}",
        f"victim.image_size={args.size}",
        "data=photos",
        f"data.n_aux={args.n_aux}",
        "data.n_eval=8",
        f"trainer.max_epochs={args.epochs}",
        f"trainer.accelerator={'gpu' if args.device.startswith('cuda') else 'cpu'}",
        f"trainer.precision={args.precision}",
        "trainer.enable_progress_bar=false",
        "logger=csv",
        "lpips=off",
        "baselines=false",
        "utility_test=false",
    ]
    print(f"sweep: {args.victim} at {args.size} px, {points}, {args.n_aux} aux x {args.epochs} epochs")
    totals: dict[str, list[float]] = {"without": [], "with": []}
    for r in range(args.repeats):
        times = {"without": [0.0] * len(points), "with": [0.0] * len(points)}
        for i, point in enumerate(points):
            order = ["without", "with"] if (i + r) % 2 == 0 else ["with", "without"]
            for side in order:
                times[side][i] = job(points, i, base, tmp / f"r{r}" / side, cache=side == "with")
            print(
                f"repeat {r + 1} job {i} cut {point}: without {times['without'][i]:6.1f} s, "
                f"with {times['with'][i]:6.1f} s ({order[0]} first)",
                flush=True,
            )
        for side in totals:
            totals[side].append(sum(times[side]))
    print(f"without cache: {spread(totals['without'], 1)} s per sweep")
    print(f"with cache   : {spread(totals['with'], 1)} s per sweep")
    ratio = [w / wo for w, wo in zip(totals["with"], totals["without"], strict=True)]
    print(f"time ratio with / without: {spread(ratio, 3)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--victim", default="vgg16_bn")
    parser.add_argument("--points", default=VGG_POINTS)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=32, help="cache build batch")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--precision", default="32-true", help="decoder training: 32-true, bf16-mixed, auto")
    parser.add_argument("--build-images", type=int, default=4096, help="0: skip the build measurement")
    parser.add_argument("--cap-mib", type=int, default=128, help="memory cap of the build above its start")
    parser.add_argument("--n-aux", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--skip-sweep", action="store_true")
    parser.add_argument("--build-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--build-dir", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build_worker:
        build_worker(args)
        return
    warnings.filterwarnings("ignore")
    quiet()
    print(machine(args.device))
    with tempfile.TemporaryDirectory() as tmp:
        if args.build_images > 0:
            build(args, Path(tmp) / "build")
        if not args.skip_sweep:
            sweep(args, Path(tmp))
    print(f"load after: {machine(args.device).rsplit('load ', 1)[1]}")


if __name__ == "__main__":
    main()
