"""Build splitinv/assets/fashion_mnist_subset.npz, the Fashion-MNIST subset that ships inside the package.

The subset lets ``FashionMNISTDataModule(vendored=True)`` (config ``data=fashion_mnist_mini``) run after a
plain ``pip install`` with no network and no dataset package. It is a class-balanced, seeded random subset of
the original files: ``--train-per-class`` images of each class from the train split and ``--test-per-class``
from the test split (defaults 600 and 100, i.e. 6000 + 1000 images), stored with ``np.savez_compressed`` as

    x_train uint8 (N, 28, 28), y_train uint8 (N,), train_ids int32 (N,)   # ids: rows of the original split
    x_test  uint8 (M, 28, 28), y_test  uint8 (M,), test_ids  int32 (M,)

Sources (the first that exists): ``--source`` (a folder holding the four original ``*-idx?-ubyte[.gz]`` files,
or a torchvision root holding ``FashionMNIST/raw/``), else Debian's ``dataset-fashion-mnist`` package
(/usr/share/datasets/fashion-mnist). Usage, from the repository root:

    python experiments/scripts/make_fashion_mnist_subset.py            # defaults: seed 0, 600 + 100 per class
    python experiments/scripts/make_fashion_mnist_subset.py --source ~/data --seed 0 --out splitinv/assets/...

Fashion-MNIST is (c) 2017 Zalando SE, MIT licence; splitinv/assets/FASHION_MNIST_LICENSE.txt travels with it.
"""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path

import numpy as np

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
DEFAULT_OUT = Path(__file__).resolve().parents[2] / "splitinv" / "assets" / "fashion_mnist_subset.npz"


def _find(folder: Path, stem: str) -> Path | None:
    """Return folder/stem or folder/stem.gz (also under FashionMNIST/raw), whichever exists first."""
    for base in (folder, folder / "FashionMNIST" / "raw"):
        for name in (stem, stem + ".gz"):
            if (base / name).is_file():
                return base / name
    return None


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) of unsigned bytes into an array of its declared shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def balanced_subset(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted row ids holding exactly ``per_class`` randomly chosen rows of every class."""
    ids = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in np.unique(labels)]
    return np.sort(np.concatenate(ids)).astype(np.int32)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=None, help="folder with the original IDX files")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-per-class", type=int, default=600)
    parser.add_argument("--test-per-class", type=int, default=100)
    args = parser.parse_args(argv)

    folders = [args.source.expanduser()] if args.source else [DEBIAN_DIR]
    rng = np.random.default_rng(args.seed)
    arrays: dict[str, np.ndarray] = {}
    for split, per_class in (("train", args.train_per_class), ("test", args.test_per_class)):
        paths = [_find(folders[0], stem) for stem in FILES[split]]
        if None in paths:
            raise SystemExit(
                f"Fashion-MNIST {split} files not found in {folders[0]}: pass --source or install "
                "the Debian package dataset-fashion-mnist"
            )
        images, labels = read_idx(paths[0]), read_idx(paths[1])
        ids = balanced_subset(labels, per_class, rng)
        arrays[f"x_{split}"], arrays[f"y_{split}"], arrays[f"{split}_ids"] = images[ids], labels[ids], ids
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **arrays)
    print(
        f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB): "
        + ", ".join(f"{k} {v.shape}" for k, v in arrays.items())
    )


if __name__ == "__main__":
    main()
