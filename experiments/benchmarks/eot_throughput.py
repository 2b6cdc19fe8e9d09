"""Throughput of the adaptive optimisation attack against a stochastic defense (EOT), beside the same attack
without a defense, and beside EOT done as S separate forward passes instead of one batch of S replicas.

All three optimise the same images through the same head (a seeded ResNet-18 at ``--cut``) with rMLE's loop
(:func:`splitinv.attacks.optimize.optimize`) for ``--steps`` steps. Rounds alternate the order of the sides,
each side is warmed up first, and the medians and spreads over rounds are printed with the machine's load,
ratios last:

    python experiments/benchmarks/eot_throughput.py --size 32 --images 8 --steps 30 --samples 4 --rounds 5
    python experiments/benchmarks/eot_throughput.py --device cuda --size 224 --precision bf16-mixed
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings

import torch
from _common import autocast, synchronize
from torch import nn

from splitinv.attacks.optimize import OptimizeSettings, feature_loss, optimize
from splitinv.defenses import GaussianNoise
from splitinv.split import split
from splitinv.victims import build_victim


class Looped(nn.Module):
    """EOT the slow way: S forward passes of the batch, the feature loss averaged outside (same result)."""

    def __init__(self, client: nn.Module, samples: int) -> None:
        super().__init__()
        self.client, self.samples = client, samples

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.client(x) for _ in range(self.samples)])


def _looped_loss(model: Looped, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.stack([feature_loss(o, target) for o in model(x)]).mean(0)


def images_per_s(
    side: str, the_split, x: torch.Tensor, target: torch.Tensor, steps: int, samples: int,
    device: str = "cpu", precision: str = "32-true",
) -> float:  # fmt: skip
    settings = OptimizeSettings(
        steps=steps, lr=0.01, tv_weight=1e-4, eot_samples=samples if side == "eot" else 1
    )
    synchronize(device)
    start = time.perf_counter()
    with autocast(device, precision):
        _run(side, the_split, x, target, steps, samples, settings)
    synchronize(device)
    return x.shape[0] / (time.perf_counter() - start)


def _run(
    side: str, the_split, x: torch.Tensor, target: torch.Tensor, steps: int, samples: int,
    settings: OptimizeSettings,
) -> None:  # fmt: skip
    if side == "looped":
        z = torch.full_like(x, 0.5).requires_grad_(True)
        opt = torch.optim.Adam([z], lr=0.01)
        model = Looped(the_split.client, samples)
        for _ in range(steps):
            loss = _looped_loss(model, z, target).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                z.clamp_(0, 1)
    else:
        client = the_split.client if side == "eot" else the_split.undefended().client
        optimize(client, target, torch.full_like(x, 0.5), settings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--cut", default="layer1")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--samples", type=int, default=4, help="EOT draws per step")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--precision", default="32-true", help="32-true or bf16-mixed (autocast)")
    args = parser.parse_args()
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights: speed does not depend on them
        victim = build_victim("resnet18", image_size=args.size, num_classes=10).eval()
    the_split = split(victim, args.cut, GaussianNoise(scale=0.5, relative=True)).to(args.device)
    x = torch.rand(args.images, 3, args.size, args.size, generator=torch.Generator().manual_seed(1))
    x = x.to(args.device)
    with torch.no_grad():
        target = the_split.observe(x)
    sides = ["plain", "eot", "looped"]
    for side in sides:  # warm-up: first calls allocate and pick kernels
        images_per_s(side, the_split, x, target, 2, args.samples, args.device, args.precision)
    runs: dict[str, list[float]] = {s: [] for s in sides}
    for r in range(args.rounds):
        for side in sides if r % 2 == 0 else sides[::-1]:
            runs[side].append(
                images_per_s(
                    side, the_split, x, target, args.steps, args.samples, args.device, args.precision
                )
            )
    load = os.getloadavg()
    print(
        f"resnet18 @ {args.cut}, {args.size} px, {args.images} images x {args.steps} steps, EOT "
        f"{args.samples} draws, {args.rounds} rounds, {args.device}, {args.precision}, "
        f"{torch.get_num_threads()} threads, load {load[0]:.2f} {load[1]:.2f}"
    )
    for side, label in zip(sides, ("no defense", "EOT batched", "EOT looped"), strict=True):
        values = runs[side]
        spread = f"min {min(values):.2f}, max {max(values):.2f}"
        print(f"{label:12s}: {statistics.median(values):7.2f} images/s  ({spread})")
    med = {s: statistics.median(v) for s, v in runs.items()}
    print(
        f"EOT batched / no defense: {med['eot'] / med['plain']:.3f} (cost of {args.samples} draws per step)"
    )
    print(f"EOT batched / EOT looped: {med['eot'] / med['looped']:.3f} (what batching the draws gains)")


if __name__ == "__main__":
    main()
