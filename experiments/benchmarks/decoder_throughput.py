"""Decoder-training throughput: splitinv's DecoderAttack (through Lightning) against a bare PyTorch loop.

Both train the same decoder (same seed, so the same initial weights) through the same frozen head, on the
same batches, with the same optimizer (Adam, AMSGrad, lr 1e-3), in the same precision and memory layout.
Throughput is measured in steady state (after ``--warmup`` steps); every side is warmed up once, then the
sides run ``--rounds`` times in alternating order; medians, spreads, the machine's load and each side's
final loss are printed, the splitinv / bare ratio last. Target: splitinv keeps at least 90 % of the bare
loop's throughput.

``--variants bf16,channels_last,compile`` adds splitinv sides with one setting changed each
(``trainer.precision=bf16-mixed``, ``trainer.channels_last=true``, ``trainer.compile=true``), reported as
speed-ups over the plain splitinv side with their final loss (what the setting does to the numbers).

    python experiments/benchmarks/decoder_throughput.py [--victim resnet18 --cut layer2 --size 64 --steps 40]
    python experiments/benchmarks/decoder_throughput.py --device cuda --size 224 --batch 64 \
        --precision bf16-mixed --variants channels_last,compile
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from typing import Any

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from _common import alternate, autocast, machine, quiet, ratios, spread, synchronize
from torch.utils.data import DataLoader, TensorDataset

from splitinv.attacks import AttackContext
from splitinv.attacks.decoder import DecoderAttack, build_decoder
from splitinv.cut import cut
from splitinv.training import build_trainer
from splitinv.victims import build_victim

VARIANTS = {
    "bf16": {"precision": "bf16-mixed"},
    "channels_last": {"channels_last": True},
    "compile": {"compile": True},
}


class _Timer(L.Callback):
    """Wall time between the start of step ``warmup`` and the end of the last step."""

    def __init__(self, warmup: int, device: str) -> None:
        self.warmup, self.device, self.start, self.end = warmup, device, 0.0, 0.0

    def on_train_batch_start(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.warmup:
            synchronize(self.device)
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        synchronize(self.device)
        self.end = time.perf_counter()


class _Data:
    """The smallest datamodule DecoderAttack.fit needs: a fixed loader."""

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader

    def setup(self, stage: str) -> None:
        pass

    def train_dataloader(self) -> DataLoader:
        return self.loader


def splitinv_side(
    head: torch.nn.Module, loader: DataLoader, shape: tuple, steps: int, warmup: int, device: str,
    settings: dict[str, Any], losses: list[float],
) -> float:  # fmt: skip
    """Steps per second of DecoderAttack.fit under ``settings`` (precision, channels_last, compile)."""
    torch.manual_seed(0)
    attack = DecoderAttack()
    timer = _Timer(warmup, device)
    trainer = build_trainer(
        accelerator="gpu" if device.startswith("cuda") else "cpu",
        devices=1,
        max_steps=steps,
        max_epochs=-1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
        **settings,
    )
    attack.fit(AttackContext.for_head(head, shape, data=_Data(loader), trainer=trainer))
    assert attack.decoder is not None
    with torch.no_grad():  # the final loss on the first batch, in fp32 (what the setting did to the numbers)
        x = next(iter(loader))[0]
        decoder = attack.decoder.to("cpu").float().eval()
        losses.append(float(F.mse_loss(decoder(head.to("cpu")(x)), x)))
    head.to(device)
    return (steps - warmup) / (timer.end - timer.start)


def bare_side(
    head: torch.nn.Module, loader: DataLoader, shape: tuple, steps: int, warmup: int, device: str,
    settings: dict[str, Any], losses: list[float],
) -> float:  # fmt: skip
    """Steps per second of the same training written as a plain loop."""
    x0 = next(iter(loader))[0][:2].to(device)
    with torch.no_grad():
        feature_shape = tuple(head(x0).shape[1:])
    torch.manual_seed(0)
    decoder = build_decoder(feature_shape, shape).to(device)
    fmt = torch.channels_last if settings.get("channels_last") else torch.contiguous_format
    decoder = decoder.to(memory_format=fmt).train()
    run = torch.compile(decoder) if settings.get("compile") else decoder
    opt = torch.optim.Adam(decoder.parameters(), lr=1e-3, amsgrad=True)
    precision = str(settings.get("precision", "32-true"))
    step, start = 0, 0.0
    while step < steps:
        for x, *_ in loader:
            if step == warmup:
                synchronize(device)
                start = time.perf_counter()
            x = x.to(device, non_blocking=True)
            with autocast(device, precision):
                with torch.no_grad():
                    f = head(x)
                loss = F.mse_loss(run(f).float(), x)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step == steps:
                break
    synchronize(device)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        x = next(iter(loader))[0]
        losses.append(float(F.mse_loss(decoder.to("cpu").float().eval()(head.to("cpu")(x)), x)))
    head.to(device)
    return (steps - warmup) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--victim", default="resnet18")
    parser.add_argument("--cut", default="layer2")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--precision", default="32-true", help="both sides: 32-true, bf16-mixed, ...")
    parser.add_argument("--channels-last", action="store_true", help="both sides: NHWC weights")
    parser.add_argument("--compile", action="store_true", help="both sides: torch.compile the decoder")
    parser.add_argument("--variants", default="", help=f"extra splitinv sides: {','.join(VARIANTS)}")
    args = parser.parse_args()

    warnings.filterwarnings("ignore")
    quiet()
    victim = build_victim(args.victim, image_size=args.size)  # random weights: throughput does not care
    head, _ = cut(victim, args.cut)
    head = head.to(args.device).eval().requires_grad_(False)
    images = torch.rand(args.batch * 8, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    loader = DataLoader(TensorDataset(images), batch_size=args.batch, shuffle=False, pin_memory=False)
    shape = (3, args.size, args.size)
    base = {"precision": args.precision, "channels_last": args.channels_last, "compile": args.compile}
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}: choose from {', '.join(VARIANTS)}")
    configs = {"bare": base, "splitinv": base, **{v: {**base, **VARIANTS[v]} for v in variants}}
    losses: dict[str, list[float]] = {name: [] for name in configs}

    def side(name: str, steps: int, warmup: int) -> float:
        fn = bare_side if name == "bare" else splitinv_side
        return fn(head, loader, shape, steps, warmup, args.device, configs[name], losses[name])

    sides = {name: (lambda n=name: side(n, args.steps, args.warmup)) for name in configs}
    print(
        f"{args.victim} @ {args.cut}, {args.size} px, batch {args.batch}, {args.steps - args.warmup} timed "
        f"steps after {args.warmup}, {args.rounds} rounds, {args.device}, {args.precision}"
        f"{', channels_last' if args.channels_last else ''}{', compile' if args.compile else ''}"
    )
    print(machine(args.device))
    runs = alternate(sides, args.rounds, warmup=lambda n: side(n, args.warmup + 2, args.warmup))
    for name in configs:
        losses[name] = losses[name][1:]  # drop the warm-up's
        images_per_s = [r * args.batch for r in runs[name]]
        loss = statistics.median(losses[name])
        print(f"{name:14s}: {spread(images_per_s, 1)} images/s, final loss {loss:.5f}")
    for v in variants:
        print(f"{v} / splitinv speed-up: {spread(ratios(runs[v], runs['splitinv']), 3)}")
    print(f"load after: {machine(args.device).rsplit('load ', 1)[1]}")
    ratio = spread(ratios(runs["splitinv"], runs["bare"]), 3)
    print(f"throughput ratio splitinv / bare: {ratio} (target >= 0.90)")


if __name__ == "__main__":
    main()
