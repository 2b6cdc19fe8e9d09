"""splitinv at its real size: memory and time per image as the evaluation set grows, one activation cache
for every n_eval, the fixed cost of a job against a bare script, and a cached sweep against its floor.

Every figure comes from fresh `splitinv-run` processes (the console script, as a user runs it); CPU times
are the children's user + system seconds (resource.RUSAGE_CHILDREN), so another process on the machine
slows the wall clock but barely the CPU time. Sides that are compared run in alternating order each round.

1. Scale. A folder of JPEG photos (random crops of scikit-image's photos, 256 px on the shorter side, like
   ImageNet-val's), evaluated at ``--size`` px with ``--n-eval`` images each (default 256, 1,024, 4,096): a
   small victim (``--victim``, random weights: memory and time do not depend on them) cut at ``--cut``, the
   decoder trained for ``--steps`` steps on a fixed auxiliary folder, default sheets (16 images). Printed:
   the job's peak RSS, its evaluation seconds (attack, scores, utility, baselines: ``cost.evaluation_s``) and
   milliseconds per evaluation image, the files it wrote, and whether it built the activation cache (the
   first job does; the others reuse it: the cache is keyed on the auxiliary set, not on n_eval).
   Targets (#20): peak RSS grows by at most 150 MB from the smallest to the largest n_eval, and the time
   per image stays within 1.2 x.
2. Fixed cost. The smallest job (ResNet-18 at 32 px on the shipped Fashion-MNIST subset, 64 auxiliary and
   16 evaluation images, one epoch, logger=csv) through `splitinv-run`, against a bare script doing the
   same work through the library's functions (the same victim, decoder, trainer, evaluation, baselines,
   utility on the evaluation images and on the test split, samples.csv, metrics.json and one sheet), with
   none of the command's machinery (Hydra, config hashing, input digests, staging, logger). Target: 1.10 x.
3. Cached sweep. Four cut points of ResNet-18 (layer1-4) at 32 px, ``--sweep-aux`` auxiliary images,
   ``--sweep-epochs`` epochs, the activation cache built beforehand: one `splitinv-run -m` (basic launcher,
   one process), against its floor: one process that loads the same cached activations and trains the same
   four decoders with the same trainer, and nothing else. Target: 1.15 x.

    python experiments/benchmarks/scale.py                          # all three, CPU, about 15 min on 2 cores
    python experiments/benchmarks/scale.py --parts scale --n-eval 256,1024,4096
    python experiments/benchmarks/scale.py --device cuda --precision bf16-mixed --victim resnet50 --cut layer2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from _common import machine, spread

RUN = shutil.which("splitinv-run") or str(Path(sys.executable).parent / "splitinv-run")
FIXED_JOB = [
    "victim=resnet18",
    "victim.image_size=32",
    "data=fashion_mnist_mini",
    "data.n_aux=64",
    "data.n_eval=16",
    "data.batch_size=16",
    "trainer.max_epochs=1",
    "trainer.accelerator=cpu",
    "trainer.precision=32-true",
    "cut=layer1",
    "logger=csv",
    "seed=0",
]
SWEEP_POINTS = ("layer1", "layer2", "layer3", "layer4")
ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "SPLITINV_PROGRESS_INTERVAL": "3600"}
EXTRA_ENV: dict[str, str] = {}  # OMP_NUM_THREADS from --threads


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(command: Sequence[str], cwd: Path) -> tuple[float, float, str]:
    """(CPU seconds, wall seconds, stderr) of one child process; a failure stops the benchmark."""
    cpu, wall = _children_cpu(), time.perf_counter()
    proc = subprocess.run(list(command), cwd=cwd, env={**ENV, **EXTRA_ENV}, capture_output=True, text=True)
    cpu, wall = _children_cpu() - cpu, time.perf_counter() - wall
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(command)}\n{proc.stderr[-3000:]}")
    return cpu, wall, proc.stderr


# ------------------------------------------------------------------------------------------------ scale


def make_photos(folder: Path, n: int, short: int = 256, seed: int = 0) -> Path:
    """``n`` JPEG crops of scikit-image's photos, ``short`` px on the shorter side (made once per folder)."""
    import numpy as np
    import skimage.data
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    if len(list(folder.glob("*.jpg"))) >= n:
        return folder
    names = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field")  # shipped in the wheel
    photos = [Image.fromarray(getattr(skimage.data, name)()).convert("RGB") for name in names]
    rng = np.random.default_rng(seed)
    for i in range(n):
        photo = photos[i % len(photos)]
        w, h = photo.size
        side = int(rng.integers(min(w, h) // 3, min(w, h)))
        x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        crop = photo.crop((x, y, x + side, y + side)).resize((short, short), Image.BILINEAR)
        crop.save(folder / f"{i:06d}.jpg", quality=90)
    return folder


def scale(args: argparse.Namespace, work: Path) -> None:
    sizes = [int(v) for v in args.n_eval.split(",")]
    print(f"1. Scale: {args.victim} at {args.size} px cut at {args.cut}, decoder {args.steps} steps, "
          f"{args.precision}, on {args.device}")  # fmt: skip
    start = time.perf_counter()
    eval_root = make_photos(work / "photos" / "eval", max(sizes))
    aux_root = make_photos(work / "photos" / "aux", args.n_aux, seed=1)
    made = time.perf_counter() - start
    print(f"   {max(sizes)} evaluation and {args.n_aux} auxiliary JPEGs ready in {made:.0f} s")
    cache = work / "cache"
    rows = []
    for n in sizes:
        out = work / f"scale{n}"
        command = [
            RUN, f"victim={args.victim}", f"victim.image_size={args.size}", f"cut={args.cut}",
            "data=imagefolder", f"data.root={aux_root}", f"data.eval_root={eval_root}", f"data.n_eval={n}",
            f"data.batch_size={args.batch_size}", f"data.num_workers={args.workers}",
            f"trainer.max_steps={args.steps}", "trainer.max_epochs=-1", f"trainer.precision={args.precision}",
            f"trainer.accelerator={'gpu' if args.device.startswith('cuda') else 'cpu'}",
            f"attack.width={args.width}", "cache.enabled=true", f"cache.dir={cache}", "logger=csv",
            "lpips=off", f"hydra.run.dir={out}",
        ]  # fmt: skip
        cached = set(cache.glob("*.pt")) if cache.is_dir() else set()
        cpu, wall, _err = timed(command, work)
        record = json.loads((out / "metrics.json").read_text())
        cost = record["cost"]
        files = sorted(p.name for p in out.iterdir() if p.is_file())
        built = "built" if set(cache.glob("*.pt")) - cached else "reused"
        rows.append((n, cost["peak_memory_mb"], cost["evaluation_s"], cpu, wall, built, len(files)))
    print(f"   {'n_eval':>7} {'peak RSS MB':>12} {'eval s':>8} {'ms/image':>9} {'CPU s':>7} {'wall s':>7} "
          f"{'cache':>7} {'files':>6}")  # fmt: skip
    for n, rss, eval_s, cpu, wall, built, files in rows:
        print(f"   {n:>7} {rss:>12.0f} {eval_s:>8.1f} {1000 * eval_s / n:>9.2f} {cpu:>7.1f} {wall:>7.1f} "
              f"{built:>7} {files:>6}")  # fmt: skip
    growth = rows[-1][1] - rows[0][1]
    per_image = [r[2] / r[0] for r in rows]
    print(f"   peak RSS {rows[0][0]} -> {rows[-1][0]} images: {growth:+.0f} MB (target <= +150 MB); time per "
          f"image largest / smallest n_eval: {per_image[-1] / per_image[0]:.2f} x (target <= 1.2 x); cache "
          f"builds: {sum(r[5] == 'built' for r in rows)} over {len(rows)} jobs")  # fmt: skip


# ------------------------------------------------------------------------------------------- fixed cost

BARE_SCRIPT = r'''
"""The smallest job's work without the command: the library's functions called in a plain script."""
import json, sys
from pathlib import Path
import lightning as L
import pandas as pd
import torch
from torch.utils.data import DataLoader
from splitinv import baselines, sheets
from splitinv.attacks import DecoderAttack
from splitinv.attacks.base import AttackContext
from splitinv.data import FashionMNISTDataModule
from splitinv.evaluate import evaluate
from splitinv.split import split
from splitinv.training import build_trainer
from splitinv.victims import build_victim

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
L.seed_everything(0, workers=True, verbose=False)
victim = build_victim("resnet18", weights=None, image_size=32)
data = FashionMNISTDataModule(
    vendored=True, download=False, image_size=32, n_aux=64, n_eval=16, batch_size=16, seed=0
)
data.setup()
the_split = split(victim, "layer1")
attack = DecoderAttack(loss="mse", lr=1e-3, amsgrad=True)
trainer = build_trainer(accelerator="cpu", devices=1, max_epochs=1, precision="32-true", logger=False,
                        enable_checkpointing=False, enable_model_summary=False, default_root_dir=str(out))
context = AttackContext.for_attack(attack, the_split, (3, 32, 32), victim=victim, data=data, trainer=trainer,
                                   cut={"name": "layer1"})
attack.fit(context)
ev = evaluate(the_split, attack, data.predict_dataloader(), lpips="auto", keep=16, trainer=trainer)
utility = the_split.utility(data.predict_dataloader())
utility_test = the_split.utility(DataLoader(data.held_out_dataset(), batch_size=64))
mean = baselines.mean_image(data.aux_dataset())
columns, lowpass4 = baselines.score(data.predict_dataloader(), mean)
pd.DataFrame({k: v for k, v in ev.per_image.items() if len(v)}).to_csv(out / "samples.csv", index=False)
sheets.write_sheets(out, ev.originals, ev.reconstructions, ev.per_image)
summary = {k: sum(v) / len(v) for k, v in ev.per_image.items() if len(v)}
record = {"scores": summary, "utility": utility, "utility_test": utility_test}
(out / "metrics.json").write_text(json.dumps(record))
print(f"ssim {summary['ssim']:.4f}")
'''


def fixed_cost(args: argparse.Namespace, work: Path) -> None:
    print(f"2. Fixed cost of the smallest job ({' '.join(FIXED_JOB)}) against a bare script, CPU seconds")
    bare = work / "bare.py"
    bare.write_text(BARE_SCRIPT)
    sides = {
        "splitinv-run": lambda r: [RUN, *FIXED_JOB, f"hydra.run.dir={work / f'fixed_run{r}'}"],
        "bare script": lambda r: [sys.executable, str(bare), str(work / f"fixed_bare{r}")],
    }
    cpu: dict[str, list[float]] = {name: [] for name in sides}
    wall: dict[str, list[float]] = {name: [] for name in sides}
    for make in sides.values():  # warm-up: the OS file cache, the first LPIPS lookup
        timed(make("warm"), work)
    for r in range(args.repeats):
        for name in list(sides) if r % 2 == 0 else list(sides)[::-1]:
            c, w, _ = timed(sides[name](r), work)
            cpu[name].append(c)
            wall[name].append(w)
    for name in sides:
        print(f"   {name:>13}: CPU {spread(cpu[name])} s, wall {spread(wall[name])} s")
    ratio = [a / b for a, b in zip(cpu["splitinv-run"], cpu["bare script"], strict=True)]
    print(f"   splitinv-run / bare script: {spread(ratio)} x CPU (target <= 1.10 x)")


# ----------------------------------------------------------------------------------------- cached sweep

FLOOR_SCRIPT = r'''
"""The floor of a cached sweep: the cached activations loaded, the four decoders trained, nothing else."""
import sys
import lightning as L
from splitinv.attacks import DecoderAttack
from splitinv.attacks.base import AttackContext
from splitinv.data import FashionMNISTDataModule
from splitinv.features import CachedFeatureData, FeatureCache
from splitinv.split import split
from splitinv.training import build_trainer
from splitinv.victims import build_victim

cache_dir, n_aux, epochs, points = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4].split(",")
victim = build_victim("resnet18", weights=None, image_size=32)
data = FashionMNISTDataModule(vendored=True, download=False, image_size=32, n_aux=n_aux, n_eval=16,
                              batch_size=32, seed=0)
cache = FeatureCache(cache_dir, victim, data, points, dtype="float16", seed=0)
for point in points:
    L.seed_everything(0, workers=True, verbose=False)
    the_split = split(victim, point)
    attack = DecoderAttack(loss="mse", lr=1e-3, amsgrad=True)
    trainer = build_trainer(
        accelerator="cpu", devices=1, max_epochs=epochs, precision="32-true", logger=False,
        enable_checkpointing=False, enable_model_summary=False,
    )
    features = CachedFeatureData(cache, point, batch_size=32, seed=0, defense=the_split.defense)
    attack.fit(AttackContext.for_attack(attack, the_split, (3, 32, 32), victim=victim, data=features,
                                        trainer=trainer, cut={"name": point}))
'''


def cached_sweep(args: argparse.Namespace, work: Path) -> None:
    points = ",".join(SWEEP_POINTS)
    common = [
        "victim=resnet18", "victim.image_size=32", "data=fashion_mnist_mini", f"data.n_aux={args.sweep_aux}",
        "data.n_eval=16", "data.batch_size=32", f"trainer.max_epochs={args.sweep_epochs}",
        "trainer.accelerator=cpu", "trainer.precision=32-true", "logger=csv", "seed=0", "cache.enabled=true",
        f"cache.dir={work / 'sweep_cache'}", f"cache.points=[{points}]",
    ]  # fmt: skip
    print(f"3. Cached sweep over {points} (ResNet-18, 32 px, {args.sweep_aux} auxiliary images, "
          f"{args.sweep_epochs} epochs) against its floor, CPU seconds")  # fmt: skip
    timed([RUN, *common, "cut=layer1", f"hydra.run.dir={work / 'sweep_build'}"], work)  # builds the cache
    floor = work / "floor.py"
    floor.write_text(FLOOR_SCRIPT)
    sides = {
        "sweep": lambda r: [RUN, "-m", *common, f"cut={points}", f"hydra.sweep.dir={work / f'sweep{r}'}"],
        "floor": lambda r: [sys.executable, str(floor), str(work / "sweep_cache"), str(args.sweep_aux),
                            str(args.sweep_epochs), points],
    }  # fmt: skip
    cpu: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(args.repeats):
        for name in list(sides) if r % 2 == 0 else list(sides)[::-1]:
            cpu[name].append(timed(sides[name](r), work)[0])
    for name in sides:
        print(f"   {name:>13}: CPU {spread(cpu[name])} s")
    ratio = [a / b for a, b in zip(cpu["sweep"], cpu["floor"], strict=True)]
    print(f"   sweep / floor: {spread(ratio)} x CPU (target <= 1.15 x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="scale,fixed,sweep", help="which of scale, fixed, sweep to run")
    parser.add_argument("--n-eval", default="256,1024,4096", help="evaluation set sizes (scale)")
    parser.add_argument("--n-aux", type=int, default=64, help="auxiliary images (scale)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--victim", default="mobilenet_v3_large")
    parser.add_argument("--cut", default="features.3")
    parser.add_argument("--steps", type=int, default=2, help="decoder steps (scale)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--width", type=int, default=32, help="the decoder's first-layer channels (scale)")
    parser.add_argument("--workers", type=int, default=0, help="data loader processes (scale)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of the compared sides")
    parser.add_argument("--sweep-aux", type=int, default=1024)
    parser.add_argument("--sweep-epochs", type=int, default=4)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads of every job (OMP_NUM_THREADS; 0: torch's default). One thread keeps CPU seconds "
        "honest on a shared machine: idle threads of a busy pool spin and are billed as work",
    )
    parser.add_argument("--work", default=None, help="folder for the runs (default: a temporary one)")
    args = parser.parse_args()
    parts = [p.strip() for p in args.parts.split(",")]
    unknown = set(parts) - {"scale", "fixed", "sweep"}
    if unknown:
        parser.error(f"unknown part(s) {', '.join(sorted(unknown))}: use scale, fixed, sweep")
    if args.threads > 0:
        EXTRA_ENV["OMP_NUM_THREADS"] = str(args.threads)
    print(machine(args.device) + f"; jobs run with {args.threads or 'default'} thread(s)")
    with tempfile.TemporaryDirectory(prefix="splitinv-scale-") as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for part, function in (("scale", scale), ("fixed", fixed_cost), ("sweep", cached_sweep)):
            if part in parts:
                started = time.perf_counter()
                function(args, work)
                print(f"   ({time.perf_counter() - started:.0f} s)")
    print(machine(args.device))


if __name__ == "__main__":
    main()
