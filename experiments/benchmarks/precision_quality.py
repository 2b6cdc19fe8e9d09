"""Reconstruction quality and speed under bf16-mixed against 32-true, on the quickstart's setting.

The quickstart's victim (ResNet-18 trained 2 epochs at 32 px on the shipped Fashion-MNIST subset, or
``--weights``) is attacked with the decoder at three cut points (``data.n_aux`` 2000, 3 epochs, the
activation cache) and with rMLE at ``layer1``, once with ``trainer.precision=32-true`` and once with
``bf16-mixed``; the two precisions of each job run back to back in alternating order. Metrics are computed in
float32 either way (the contract). Printed: SSIM and PSNR per job and precision, their differences, the
training / attack throughput, the machine's load; last, whether every difference is within the tolerance.

    python experiments/benchmarks/precision_quality.py [--weights outputs/quickstart/victim.pt]
    python experiments/benchmarks/precision_quality.py --device cuda
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import Any

from _common import machine, quiet

TOLERANCE = {"ssim": 0.02, "psnr": 0.5}  # |bf16 - fp32| on the mean over the evaluation images
PRECISIONS = ("32-true", "bf16-mixed")


def train_victim(out: Path, device: str) -> Path:
    weights = out / "victim.pt"
    subprocess.run(
        [
            "splitinv-train-victim", "victim=resnet18", "victim.image_size=32", "data=fashion_mnist_mini",
            "trainer.max_epochs=2", f"trainer.accelerator={device}", "trainer.precision=32-true",
            "trainer.enable_progress_bar=false", "logger=csv", f"checkpoint={weights}",
            f"hydra.run.dir={out / 'train'}",
        ],
        check=True, capture_output=True, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )  # fmt: skip
    return weights


def job(overrides: list[str], out: Path) -> dict[str, Any]:
    from splitinv.config import compose
    from splitinv.run import run

    return run(compose(overrides, output_dir=out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=None, help="the quickstart victim (default: train it here)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--cuts", default="layer1,layer2,layer3")
    parser.add_argument("--n-aux", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rmle-steps", type=int, default=200)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    quiet()
    accelerator = "gpu" if args.device.startswith("cuda") else "cpu"
    print(machine(args.device))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        weights = args.weights or str(train_victim(root, accelerator))
        common = [
            "victim=resnet18", "victim.image_size=32", f"victim.weights={weights}", "data=fashion_mnist_mini",
            f"trainer.accelerator={accelerator}", "trainer.enable_progress_bar=false", "logger=csv",
            "lpips=off", "utility_test=false", "baselines=false",
        ]  # fmt: skip
        decoder = [
            f"data.n_aux={args.n_aux}", f"trainer.max_epochs={args.epochs}", "cache.enabled=true",
            f"cache.dir={root / 'cache'}", f"cache.points=[{args.cuts}]",
        ]  # fmt: skip
        jobs = {f"decoder@{c}": [*decoder, f"cut={c}"] for c in args.cuts.split(",")}
        jobs["rmle@layer1"] = [
            "attack=rmle", "cut=layer1", "data.n_eval=8", "data.batch_size=8",
            f"attack.steps={args.rmle_steps}",
        ]  # fmt: skip
        worst = {m: 0.0 for m in TOLERANCE}
        head = f"{'job':16s} {'precision':11s} {'SSIM':>7s} {'PSNR':>7s}"
        print(f"{head} {'train img/s':>12s} {'attack img/s':>13s}")
        for k, (name, overrides) in enumerate(jobs.items()):
            order = PRECISIONS if k % 2 == 0 else PRECISIONS[::-1]
            records = {}
            for precision in order:
                out = root / name.replace("@", "_") / precision
                records[precision] = job([*common, *overrides, f"trainer.precision={precision}"], out)
            for precision in PRECISIONS:
                r = records[precision]
                train = r["cost"].get("train_images_per_s")
                print(
                    f"{name:16s} {r['precision']:11s} {r['ssim']['mean']:7.4f} {r['psnr']['mean']:7.2f} "
                    f"{'-' if train is None else round(train, 1)!s:>12s} "  # rMLE trains nothing
                    f"{round(r['cost']['attack_images_per_s'], 1)!s:>13s}"
                )
            deltas = {m: records["bf16-mixed"][m]["mean"] - records["32-true"][m]["mean"] for m in TOLERANCE}
            for m, d in deltas.items():
                worst[m] = max(worst[m], abs(d))
            diff = f"{deltas['ssim']:+7.4f} {deltas['psnr']:+7.2f}"
            print(f"{'':16s} {'bf16 - fp32':11s} {diff}  (ran {order[0]} first)")
    ok = all(worst[m] <= TOLERANCE[m] for m in TOLERANCE)
    print(f"load after: {machine(args.device).rsplit('load ', 1)[1]}")
    print(
        f"largest |bf16 - fp32|: SSIM {worst['ssim']:.4f} (tolerance {TOLERANCE['ssim']}), PSNR "
        f"{worst['psnr']:.2f} dB (tolerance {TOLERANCE['psnr']}): {'within' if ok else 'OUTSIDE'} tolerance"
    )


if __name__ == "__main__":
    main()
