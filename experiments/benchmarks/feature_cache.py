"""Wall time of a 4-cut-point decoder sweep with the activation cache against without it, in one run.

Without the cache every job pushes the auxiliary images through the frozen head in every epoch (and draws
its crops again); with it, the first job runs the head once for all four cut points and every job trains its
decoder from disk. Same victim, data, decoder and budget in both; the ratio is printed last.
Target: with the cache the sweep takes at most half the time.

    python experiments/benchmarks/feature_cache.py [--victim vgg16_bn --size 64 --n-aux 256 --epochs 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

from splitinv.config import compose
from splitinv.run import run


def sweep(points: list[str], base: list[str], out: Path, cache: bool) -> float:
    start = time.perf_counter()
    for i, point in enumerate(points):
        extra = [f"cut={point}", f"cache.enabled={str(cache).lower()}", f"cache.dir={out / 'cache'}"]
        extra.append("cache.points=[" + ",".join(points) + "]")
        run(compose([*base, *extra], output_dir=out / str(i)))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--victim", default="vgg16_bn")
    parser.add_argument("--points", default="features.12,features.22,features.32,features.42")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--n-aux", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    points = args.points.split(",")
    base = [
        f"victim={args.victim}",
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
    with tempfile.TemporaryDirectory() as tmp:
        without = sweep(points, base, Path(tmp) / "without", cache=False)
        with_cache = sweep(points, base, Path(tmp) / "with", cache=True)
    print(f"without cache: {without:7.1f} s")
    print(f"with cache   : {with_cache:7.1f} s")
    print(f"time ratio with / without: {with_cache / without:.3f} (target <= 0.50)")


if __name__ == "__main__":
    main()
