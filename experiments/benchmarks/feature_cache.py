"""Wall time of a 4-cut-point decoder sweep with the activation cache against without it, in one run.

Without the cache every job pushes the auxiliary images through the frozen head in every epoch (and draws
its crops again); with it, the first job runs the head once for all four cut points and every job trains its
decoder from disk. Same victim, data, decoder and budget in both. The two sweeps run interleaved (job k
without, then job k with), so that load from other processes hits both alike; the ratio is printed last.
Target: with the cache the sweep takes at most half the time.

What the cache can save is the head's share of an epoch: a job without it costs H + D per epoch (head
forward, decoder forward + backward), a job with it D, so the ratio cannot go below D / (H + D). For heads
that cost less than a decoder training step (VGG-16 at 64 px: about 0.6) it cannot reach one half; the
default is a head-heavy victim (ViT-H/14), where it does. Per-job start-up (building the victim, evaluating)
costs the same on both sides and pulls the ratio towards 1 for short trainings; the default budget, 8 epochs,
is still short of a real attack's. Both victims are in the README.

    python experiments/benchmarks/feature_cache.py [--victim vit_huge_patch14_224 --size 56 --n-aux 128]
    python experiments/benchmarks/feature_cache.py --victim vgg16_bn --size 64 \
        --points features.12,features.22,features.32,features.42 --n-aux 256
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

from splitinv.config import compose
from splitinv.run import run


def job(points: list[str], i: int, base: list[str], out: Path, cache: bool) -> float:
    """Seconds for job ``i`` of the sweep (cut point ``points[i]``), with or without the cache."""
    extra = [f"cut={points[i]}", f"cache.enabled={str(cache).lower()}", f"cache.dir={out / 'cache'}"]
    extra.append("cache.points=[" + ",".join(points) + "]")
    start = time.perf_counter()
    run(compose([*base, *extra], output_dir=out / str(i)))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--victim", default="vit_huge_patch14_224")
    parser.add_argument("--points", default="blocks.7,blocks.15,blocks.23,blocks.31")
    parser.add_argument("--size", type=int, default=56)
    parser.add_argument("--n-aux", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    points = args.points.split(",")
    base = [
        "victim=resnet18",  # the group's build_victim config, for any torchvision/timm name:
        f"victim.name={args.victim}",
        f"victim.image_size={args.size}",
        "data=photos",
        f"data.n_aux={args.n_aux}",
        "data.n_eval=8",
        f"trainer.max_epochs={args.epochs}",
        "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false",
        "logger=csv",
        "lpips=off",
    ]
    print(f"{args.victim} at {args.size} px, cut points {points}, {args.n_aux} aux x {args.epochs} epochs")
    without = with_cache = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for i, point in enumerate(points):
            a = job(points, i, base, Path(tmp) / "without", cache=False)
            b = job(points, i, base, Path(tmp) / "with", cache=True)
            print(f"job {i} cut {point}: without {a:6.1f} s, with {b:6.1f} s", flush=True)
            without, with_cache = without + a, with_cache + b
    print(f"without cache: {without:7.1f} s")
    print(f"with cache   : {with_cache:7.1f} s")
    print(f"time ratio with / without: {with_cache / without:.3f} (target <= 0.50)")


if __name__ == "__main__":
    main()
