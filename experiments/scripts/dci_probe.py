"""Why DCI loses to the 4x4 low-pass at CPU size: one synthesis, several inverter trainings, one score each.

Synthesises DCI's training images once per seed (DeepInversion from the full victim, as attack=dci does), then
trains the inverter chain on them under several settings and scores each on the same evaluation images beside
the 4x4 low-pass (SSIM, the metric contract). Variants (VARIANTS below): the study's budget (64 images x 100
iterations, 80 inverter steps), 5 x more inverter steps, 4 x the images at a quarter of the iterations (the
same synthesis cost), both; and real images (inverter_data=aux) as the reference.

    OMP_NUM_THREADS=1 python experiments/scripts/dci_probe.py outputs/dci_study/victim.pt --cut layer3 \
        --seeds 0 1 --out outputs/dci_probe
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import lightning.pytorch as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from splitinv import build_victim, metrics
from splitinv.attacks.dci import (
    DCIModule,
    InverterChain,
    _block_shapes,
    build_blocks,
    chain_points,
    synthesize,
)
from splitinv.baselines import lowpass
from splitinv.data import FashionMNISTDataModule
from splitinv.split import split

VARIANTS = {  # name: (epochs, finetune epochs, training images)
    "study: 64 x 100 it, 80 steps": (20, 5, "64x100"),
    "64 x 100 it, 400 steps": (100, 25, "64x100"),
    "256 x 25 it, 80 steps": (20, 5, "256x25"),
    "256 x 25 it, 400 steps": (100, 25, "256x25"),
    "64 real, 80 steps": (20, 5, "real64"),
    "64 real, 400 steps": (100, 25, "real64"),
    "256 real, 400 steps": (100, 25, "real256"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("weights")
    parser.add_argument("--cut", default="layer3")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--out", default="outputs/dci_probe")
    parser.add_argument("--synth-lr", type=float, default=0.05, help="attack.synth_lr (its default 0.05)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), help="names from VARIANTS")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for seed in args.seeds:
        torch.manual_seed(seed)
        victim = build_victim("resnet18", weights=args.weights, image_size=32).eval()
        the_split = split(victim, args.cut)
        head = the_split.head.eval()
        data = FashionMNISTDataModule(image_size=32, channels=3, n_eval=16, seed=seed, n_aux=4096)
        x = torch.stack([data.eval_dataset()[i][0] for i in range(16)])
        real_set = data.aux_dataset()
        order = torch.randperm(len(real_set), generator=torch.Generator().manual_seed(seed))[: args.images]
        real = torch.stack([real_set[int(i)][0] for i in order])
        more = torch.randperm(len(real_set), generator=torch.Generator().manual_seed(seed))[: 4 * args.images]
        low = metrics.ssim(x, lowpass(x, 4)).mean().item()
        common = {"num_classes": 10, "jitter": 4, "seed": seed, "progress": False, "lr": args.synth_lr}
        start = time.perf_counter()
        few = synthesize(
            victim, args.images, (3, 32, 32), iterations=args.iterations, batch_size=64, **common
        )
        synth_s = time.perf_counter() - start
        quarter = args.iterations // 4
        need = {VARIANTS[name][2] for name in args.variants}
        many = (
            synthesize(victim, 4 * args.images, (3, 32, 32), iterations=quarter, batch_size=256, **common)
            if "256x25" in need
            else (None,)
        )
        sets = {
            "64x100": few[0],
            "256x25": many[0],
            "real64": real,
            "real256": torch.stack([real_set[int(i)][0] for i in more]),
        }
        points = chain_points(head, "stages", 32)
        with torch.no_grad():
            v = head(x)
        for name in args.variants:
            epochs, finetune, images = VARIANTS[name]
            torch.manual_seed(seed)
            blocks = build_blocks(head, points)
            chain = InverterChain(_block_shapes(head, blocks, (3, 32, 32)))
            module = DCIModule(blocks, chain, 1.0, 1e-3, epochs - finetune, True)
            train = sets[images]
            loader = DataLoader(
                TensorDataset(train), batch_size=16 * len(train) // args.images, shuffle=True,
                generator=torch.Generator().manual_seed(seed),
            )  # fmt: skip
            trainer = L.Trainer(
                max_epochs=epochs, accelerator="cpu", logger=False, enable_progress_bar=False,
                enable_checkpointing=False, enable_model_summary=False,
            )  # fmt: skip
            t0 = time.perf_counter()
            trainer.fit(module, train_dataloaders=loader)
            seconds = time.perf_counter() - t0
            chain.eval()
            with torch.no_grad():
                ssim = metrics.ssim(x, chain(v).clamp(0, 1)).mean().item()
            row = {"seed": seed, "cut": args.cut, "variant": name, "synth_lr": args.synth_lr, "ssim": ssim,
                   "synth_iterations": args.iterations,
                   "lowpass4": low, "train_s": seconds, "synth_s": synth_s, "steps": epochs * 4}  # fmt: skip
            results.append(row)
            print(json.dumps(row), flush=True)
    (out / f"probe_{args.cut}.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
