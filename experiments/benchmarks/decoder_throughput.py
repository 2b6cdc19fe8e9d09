"""Decoder-training throughput: splitinv's DecoderAttack (through Lightning) against a bare PyTorch loop.

Both train the same decoder (same seed, so the same initial weights) through the same frozen head, on the
same batches, with the same optimizer (Adam, AMSGrad, lr 1e-3). Throughput is measured in steady state
(after warm-up steps) and the two are run alternately several times; the median ratio is printed last.
Target: splitinv keeps at least 90 % of the bare loop's throughput.

    python experiments/benchmarks/decoder_throughput.py [--victim resnet18 --cut layer2 --size 64 --steps 40]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from splitinv.attacks import AttackContext
from splitinv.attacks.decoder import DecoderAttack, build_decoder
from splitinv.cut import cut
from splitinv.victims import build_victim


class _Timer(L.Callback):
    """Wall time between the start of step ``warmup`` and the end of the last step."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.end = warmup, 0.0, 0.0

    def on_train_batch_start(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        self.end = time.perf_counter()


class _Data:
    """The smallest datamodule DecoderAttack.fit needs: a fixed loader."""

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader

    def setup(self, stage: str) -> None:
        pass

    def train_dataloader(self) -> DataLoader:
        return self.loader


def splitinv_steps_per_s(
    head: torch.nn.Module, loader: DataLoader, shape: tuple, steps: int, warmup: int
) -> float:
    torch.manual_seed(0)
    attack = DecoderAttack()
    timer = _Timer(warmup)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    attack.fit(AttackContext.for_head(head, shape, data=_Data(loader), trainer=trainer))
    return (steps - warmup) / (timer.end - timer.start)


def bare_steps_per_s(
    head: torch.nn.Module, loader: DataLoader, shape: tuple, steps: int, warmup: int
) -> float:
    x0 = next(iter(loader))[0][:2]
    with torch.no_grad():
        feature_shape = tuple(head(x0).shape[1:])
    torch.manual_seed(0)
    decoder = build_decoder(feature_shape, shape)
    decoder.train()
    opt = torch.optim.Adam(decoder.parameters(), lr=1e-3, amsgrad=True)
    step, start = 0, 0.0
    while step < steps:
        for x, *_ in loader:
            if step == warmup:
                start = time.perf_counter()
            with torch.no_grad():
                f = head(x)
            loss = F.mse_loss(decoder(f), x)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step == steps:
                break
    return (steps - warmup) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--victim", default="resnet18")
    parser.add_argument("--cut", default="layer2")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    warnings.filterwarnings("ignore")
    victim = build_victim(args.victim, image_size=args.size)  # random weights: throughput does not care
    head, _ = cut(victim, args.cut)
    images = torch.rand(args.batch * 8, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    loader = DataLoader(TensorDataset(images), batch_size=args.batch, shuffle=False)
    shape = (3, args.size, args.size)
    print(
        f"{args.victim} @ {args.cut}, {args.size} px, batch {args.batch}, "
        f"{args.steps - args.warmup} timed steps"
    )
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    bare, ours = [], []
    for _ in range(args.repeats):  # alternate, so drift in machine load hits both alike
        bare.append(bare_steps_per_s(head, loader, shape, args.steps, args.warmup))
        ours.append(splitinv_steps_per_s(head, loader, shape, args.steps, args.warmup))
    ratios = [o / b for o, b in zip(ours, bare, strict=True)]
    print(
        f"bare loop: {statistics.median(bare) * args.batch:8.1f} images/s  "
        f"(runs: {[round(b, 2) for b in bare]} steps/s)"
    )
    print(
        f"splitinv : {statistics.median(ours) * args.batch:8.1f} images/s  "
        f"(runs: {[round(o, 2) for o in ours]} steps/s)"
    )
    print(f"throughput ratio splitinv / bare: {statistics.median(ratios):.3f} (target >= 0.90)")


if __name__ == "__main__":
    main()
