"""Train the tiny DCGAN the GAN tests load (tests/assets/dcgan_fashion_mnist_32.pt), with splitinv itself.

A DCGAN trained for a few minutes on the vendored Fashion-MNIST subset: small enough to ship (about 0.5 MB),
trained enough that its samples look like clothes, so that inversion and GAN-prior tests measure something
(a random generator's images are near-constant). Reproduce it with:

    OMP_NUM_THREADS=1 python experiments/scripts/make_test_gan.py
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from splitinv.config import compose
from splitinv.gans.train import train_gan

OUT = Path(__file__).resolve().parents[2] / "tests" / "assets" / "dcgan_fashion_mnist_32.pt"
OVERRIDES = [
    "data=fashion_mnist_mini", "data.channels=1", "gan.image_size=32", "gan.nz=32", "gan.ngf=16",
    "gan.ndf=16", "data.batch_size=64", "trainer.max_epochs=12", "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false", "logger=csv", "seed=0",
]  # fmt: skip


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        result = train_gan(compose(OVERRIDES, output_dir=tmp, config_name="train_gan"))
        OUT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(result["checkpoint"], OUT)
    print(f"{result['steps']} steps -> {OUT} ({OUT.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
