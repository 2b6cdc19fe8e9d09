"""rMLE throughput: splitinv's OptimizationAttack via Lightning's predict path against a bare PyTorch loop.

Both optimise the same evaluation images through the same frozen head (a seeded ResNet-18, or --weights),
from the same start (a constant 0.5 image), with the same loss (feature MSE + 1e-4 * TV), optimizer (Adam)
and number of iterations, in the same batches. splitinv's side is exactly what ``splitinv-run attack=rmle``
runs: ``evaluate.reconstruct`` -> ``trainer.predict`` -> ``InversionModule`` -> ``OptimizationAttack.invert``
(per-image keys and the in-memory store included; the metrics are not part of either side), in the same
precision (``--precision``: the trainer's, an autocast in the bare loop). Both sides are warmed up, then run
``--rounds`` times in alternating order; medians, spreads, the machine's load and the largest pixel difference
between the sides are printed, the ratio last. Target: >= 0.90.

    python experiments/benchmarks/rmle_throughput.py [--cut layer1 --images 16 --batch 8 --steps 100]
    python experiments/benchmarks/rmle_throughput.py --device cuda --size 224 --precision bf16-mixed
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch
from _common import alternate, autocast, machine, quiet, ratios, spread, synchronize
from torch.utils.data import DataLoader, Dataset

from splitinv.attacks import AttackContext, OptimizationAttack
from splitinv.cut import cut
from splitinv.evaluate import reconstruct
from splitinv.split import Split
from splitinv.training import build_trainer
from splitinv.victims import build_victim

LR, TV_WEIGHT = (
    1e-2,
    1e-4,
)  # rMLE's shallow-cut learning rate (He et al.) and conf/attack/rmle.yaml's TV weight


class _Images(Dataset):
    """Fixed random images with (image, label, index) items, as splitinv's datamodules give."""

    def __init__(self, n: int, size: int) -> None:
        self.x = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        return self.x[i], 0, i


def splitinv_images_per_s(
    head: torch.nn.Module, loader: DataLoader, size: int, steps: int, device: str, precision: str
) -> tuple[float, dict]:
    attack = OptimizationAttack(name="rmle", steps=steps, lr=LR, tv_weight=TV_WEIGHT, progress=False)
    attack.fit(AttackContext.for_head(head, (3, size, size)))
    trainer = build_trainer(
        accelerator="gpu" if device.startswith("cuda") else "cpu",
        devices=1,
        precision=precision,
        logger=False,
        inference_mode=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    synchronize(device)
    start = time.perf_counter()
    store, _prefix, attacked = reconstruct(Split(head), attack, loader, trainer=trainer, progress=False)
    synchronize(device)
    seconds = time.perf_counter() - start
    return attacked / seconds, {i: v["image"].cpu() for i, v in store._memory.items()}


def bare_images_per_s(
    head: torch.nn.Module, loader: DataLoader, steps: int, device: str, precision: str
) -> tuple[float, dict]:
    head.eval().requires_grad_(False).to(device)
    out = {}
    synchronize(device)
    start = time.perf_counter()
    n = 0
    for x, _labels, index in loader:
        x = x.to(device)
        with torch.no_grad(), autocast(device, precision):
            v = head(x)
        xh = torch.full_like(x, 0.5).requires_grad_(True)
        opt = torch.optim.Adam([xh], lr=LR)
        for _ in range(steps):
            with autocast(device, precision):
                mse = (head(xh).float() - v.float()).pow(2).flatten(1).mean(1)
            dh = xh[:, :, 1:, :-1] - xh[:, :, :-1, :-1]
            dw = xh[:, :, :-1, 1:] - xh[:, :, :-1, :-1]
            tv = ((dh.pow(2) + dw.pow(2) + 1e-8).pow(0.5) - 1e-8**0.5).flatten(1).sum(1)  # isotropic TV
            loss = (mse + TV_WEIGHT * tv).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                xh.clamp_(0, 1)
        for i, img in zip(index.tolist(), xh.detach().cpu(), strict=True):
            out[i] = img
        n += x.shape[0]
    synchronize(device)
    return n / (time.perf_counter() - start), out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--victim", default="resnet18")
    p.add_argument("--weights", default=None, help="victim checkpoint (default: seeded random weights)")
    p.add_argument("--cut", default="layer1")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--precision", default="32-true", help="both sides: 32-true, bf16-mixed, ...")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    quiet()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    victim = build_victim(args.victim, weights=args.weights, image_size=args.size, num_classes=10).eval()
    head, _ = cut(victim, args.cut)
    loader = DataLoader(_Images(args.images, args.size), batch_size=args.batch, shuffle=False)
    print(
        f"rMLE on {args.victim} @ {args.cut}, {args.size} px, {args.images} images, batch {args.batch}, "
        f"{args.steps} Adam steps (lr {LR}), {args.rounds} rounds, {args.device}, {args.precision}"
    )
    print(machine(args.device))
    images: dict[str, dict] = {}

    def bare(steps: int) -> float:
        speed, images["bare"] = bare_images_per_s(head, loader, steps, args.device, args.precision)
        return speed

    def ours(steps: int) -> float:
        speed, images["splitinv"] = splitinv_images_per_s(
            head, loader, args.size, steps, args.device, args.precision
        )
        return speed

    runs = alternate(
        {"bare": lambda: bare(args.steps), "splitinv": lambda: ours(args.steps)},
        args.rounds,
        warmup=lambda side: bare(2) if side == "bare" else ours(2),
    )
    xb, xs = images["bare"], images["splitinv"]
    diff = max(float((xb[i] - xs[i]).abs().max()) for i in xb)
    print(f"bare PyTorch loop: {spread(runs['bare'])} images/s")
    print(f"splitinv (Lightning predict): {spread(runs['splitinv'])} images/s")
    print(f"max |pixel difference| between the sides (last round): {diff:.1e}")
    print(f"load after: {machine(args.device).rsplit('load ', 1)[1]}")
    print(f"ratio splitinv / bare: {spread(ratios(runs['splitinv'], runs['bare']), 3)} (target >= 0.90)")


if __name__ == "__main__":
    main()
