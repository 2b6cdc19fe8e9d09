"""The README's audit figure, offline: a GAN that memorised 4 images is caught; audited against images it
never saw, it is not.

1. `splitinv-train-gan` trains a DCGAN on 4 Fashion-MNIST images until it copies them (train_gan's task).
2. The 4 training images, 1000 reference images (other training-split images, known non-members) and 64
   test-split images go into folders.
3. `splitinv audit` runs twice: against the real training images, and against the 64 unseen images.

    OMP_NUM_THREADS=1 python experiments/scripts/audit_demo.py [OUT_DIR]   # default outputs/audit_demo
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torchvision.utils import save_image

from splitinv.cli import main as splitinv
from splitinv.config import compose
from splitinv.data import FashionMNISTDataModule
from splitinv.gans.train import train_gan

# the trainer's progress: a bar on a terminal, a line every 30 s in a log
TRAIN_GAN = [
    "data.n_aux=4", "data.batch_size=4", "data.channels=1", "gan.nz=8", "gan.ngf=16", "gan.ndf=32",
    "gan.lr=2e-3", "trainer.max_epochs=-1", "trainer.max_steps=1000", "trainer.accelerator=cpu",
    "logger=csv", "seed=0", "samples_every=100",
]  # fmt: skip


def write(folder: Path, images: torch.Tensor) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        save_image(image, folder / f"{i:04d}.png")
    return str(folder)


def main(out: Path) -> None:
    gan = train_gan(compose(TRAIN_GAN, output_dir=out / "gan", config_name="train_gan"))["checkpoint"]
    common = {"vendored": True, "image_size": 32, "channels": 1, "augment": False, "seed": 0}
    members = FashionMNISTDataModule(n_aux=4, **common)
    members.setup("fit")
    everything = FashionMNISTDataModule(n_eval=64, **common)
    member_ids = set(members.aux_ids)
    others = [i for i in range(len(everything.aux_dataset())) if i not in member_ids][:1000]
    train = write(out / "train", torch.stack([members.aux_dataset()[i][0] for i in range(4)]))
    reference = write(out / "reference", torch.stack([everything.aux_dataset()[i][0] for i in others]))
    unseen = write(out / "unseen", torch.stack([everything.eval_dataset()[i][0] for i in range(64)]))
    for name, train_set in (("members", train), ("unseen", unseen)):
        print(f"\n$ splitinv audit --generator dcgan --weights {gan} -n 1000 --train {train_set} ...")
        splitinv(
            ["audit", "--generator", "dcgan", "--weights", gan, "-n", "1000", "--train", train_set,
             "--reference", reference, "--embedder", "pixels", "--output", str(out / f"audit_{name}")]
        )  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="outputs/audit_demo", help="output folder")
    main(Path(parser.parse_args().out))
