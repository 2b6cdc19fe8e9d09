"""Tests for splitinv.data: item format, fixed and disjoint splits, file resolution and error messages."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import splitinv
import splitinv.data as D
import splitinv.data.fashion_mnist as fashion_module
from splitinv.errors import SplitinvError

DEBIAN = Path("/usr/share/datasets/fashion-mnist")


def _stack(dataset, n: int | None = None) -> tuple[torch.Tensor, list[int], list[int]]:
    items = [dataset[i] for i in range(len(dataset) if n is None else n)]
    return torch.stack([x for x, _, _ in items]), [y for _, y, _ in items], [i for _, _, i in items]


def _check_images(images: torch.Tensor, channels: int, size: int) -> None:
    assert images.dtype == torch.float32
    assert images.shape[1:] == (channels, size, size)
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    assert float(images.std()) > 0.01  # not blank


# -------------------------------------------------------------------------------------------------- photos


def test_photos_available_offline_and_shapes():
    names = D.available_photos()
    assert {"astronaut", "chelsea", "coffee", "china", "flower"} <= set(names)
    dm = D.PhotosDataModule(image_size=32, n_eval=8, n_aux=24, seed=0)
    eval_x, _, eval_idx = _stack(dm.eval_dataset())
    aux_x, _, aux_idx = _stack(dm.aux_dataset())
    _check_images(eval_x, 3, 32)
    _check_images(aux_x, 3, 32)
    assert eval_idx == list(range(8)) and aux_idx == list(range(24))
    assert dm.num_classes == len(names) and dm.name == "photos"
    gray = D.PhotosDataModule(image_size=16, channels=1, n_eval=4, n_aux=4)
    _check_images(_stack(gray.eval_dataset())[0], 1, 16)


def test_photos_split_by_source_photo():
    for seed in range(6):
        dm = D.PhotosDataModule(image_size=16, n_eval=12, n_aux=64, seed=seed)
        dm.setup()
        eval_photos = set(dm.eval_photos)
        assert 2 <= len(eval_photos) < len(dm.photo_names)
        assert {"motorcycle_left", "motorcycle_right"} <= eval_photos or not (
            {"motorcycle_left", "motorcycle_right"} & eval_photos
        )  # stereo pair never split
        eval_labels = set(_stack(dm.eval_dataset())[1])
        aux_labels = set(_stack(dm.aux_dataset())[1])
        assert {dm.photo_names[i] for i in eval_labels} <= eval_photos
        assert not {dm.photo_names[i] for i in aux_labels} & eval_photos
        assert not set(dm.aux_ids) & set(dm.eval_ids)
        # each crop named by its photo (its label is the photo's id)
        assert dm.eval_names() == [dm.photo_names[i] for i in _stack(dm.eval_dataset())[1]]


def test_photos_eval_fixed_by_seed():
    a = D.PhotosDataModule(image_size=24, n_eval=6, seed=3)
    b = D.PhotosDataModule(image_size=24, n_eval=6, seed=3, n_aux=10)
    c = D.PhotosDataModule(image_size=24, n_eval=6, seed=4)
    xa, xb, xc = (_stack(d.eval_dataset())[0] for d in (a, b, c))
    assert torch.equal(xa, xb) and torch.equal(xa, _stack(a.eval_dataset())[0])
    assert not torch.equal(xa, xc)
    assert a.describe()["eval_hash"] == b.describe()["eval_hash"] != c.describe()["eval_hash"]
    # the crops (not their pixels) are independent of the image size
    assert (
        D.PhotosDataModule(image_size=48, n_eval=6, seed=3).describe()["eval_hash"]
        == a.describe()["eval_hash"]
    )
    json.dumps(a.describe())


def test_photos_bad_arguments():
    with pytest.raises(SplitinvError, match="did you mean 'astronaut'"):
        D.PhotosDataModule(photos=["astronaut", "astronot", "coffee"])
    with pytest.raises(SplitinvError, match="at least 3"):
        D.PhotosDataModule(photos=["astronaut", "coffee"])
    with pytest.raises(SplitinvError, match="crop_scale"):
        D.PhotosDataModule(crop_scale=(0.5, 1.5))


# ------------------------------------------------------------------------------------------- fashion mnist


def test_fashion_vendored_subset():
    dm = D.FashionMNISTDataModule(vendored=True, image_size=32, n_eval=10, seed=0)
    aux, ev = dm.aux_dataset(), dm.eval_dataset()
    assert len(aux) == 6000 and len(ev) == 10 and dm.num_classes == 10
    assert np.bincount(aux.labels.numpy(), minlength=10).tolist() == [600] * 10
    assert np.bincount(ev.labels.numpy(), minlength=10).tolist() == [100] * 10  # the vendored test split
    x, y, idx = _stack(ev)
    _check_images(x, 3, 32)
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])  # gray repeated to RGB
    assert idx == list(range(10)) and all(isinstance(v, int) and 0 <= v < 10 for v in y)
    one = D.FashionMNISTDataModule(vendored=True, image_size=28, channels=1, n_aux=50, n_eval=4)
    assert len(one.aux_dataset()) == 50
    x1 = _stack(one.eval_dataset())[0]
    _check_images(x1, 1, 28)
    assert describe_ids(one) == describe_ids(D.FashionMNISTDataModule(vendored=True, n_eval=4))
    assert describe_ids(one) != describe_ids(D.FashionMNISTDataModule(vendored=True, n_eval=4, seed=1))
    assert one.describe()["vendored"] is True


def describe_ids(dm: D.ImageDataModule) -> list[int]:
    return dm.describe()["eval_ids"]


def test_fashion_vendored_asset_is_small():
    asset = Path(splitinv.__file__).parent / D.VENDORED_FASHION_MNIST
    assert asset.stat().st_size < 4_000_000
    assert (asset.parent / "FASHION_MNIST_LICENSE.txt").read_text().count("Zalando SE") >= 1


@pytest.mark.skipif(not DEBIAN.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_reads_debian_copy(tmp_path):
    dm = D.FashionMNISTDataModule(root=tmp_path, download=False, image_size=28, n_aux=200, n_eval=8, seed=5)
    dm.prepare_data()
    raw = tmp_path / "FashionMNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(fashion_module._FASHION_FILES)
    aux, ev = dm.aux_dataset(), dm.eval_dataset()
    assert len(aux) == 200 and len(ev) == 8 and len(aux.images) == 60000 and len(ev.images) == 10000
    x, y, _ = _stack(ev)
    _check_images(x, 3, 28)
    assert torch.allclose(x[:, 0], ev.images[ev.ids, 0].float() / 255)  # 28 px: no resampling
    assert y == ev.labels[ev.ids].tolist()
    # the vendored subset is made of these very pixels
    with np.load(Path(splitinv.__file__).parent / D.VENDORED_FASHION_MNIST) as z:
        assert np.array_equal(ev.images[z["test_ids"], 0].numpy(), z["x_test"])
        assert np.array_equal(ev.labels[z["test_ids"]].numpy(), z["y_test"])
    again = D.FashionMNISTDataModule(
        root=tmp_path, download=False, image_size=28, n_aux=200, n_eval=8, seed=5
    )
    assert again.describe()["eval_ids"] == dm.describe()["eval_ids"]
    assert again.aux_ids == dm.aux_ids


def test_fashion_missing_files(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_module, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian")
    with pytest.raises(SplitinvError, match="download=False.*dataset-fashion-mnist") as info:
        D.FashionMNISTDataModule(root=tmp_path / "data", download=False).setup()
    assert str(tmp_path / "data" / "FashionMNIST" / "raw") in str(info.value)
    assert "\n" not in str(info.value)

    def offline(self):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried a mirror, got: offline")

    from torchvision.datasets import FashionMNIST

    monkeypatch.setattr(FashionMNIST, "download", offline)
    with pytest.raises(SplitinvError, match="download failed") as info:
        D.FashionMNISTDataModule(root=tmp_path / "data", download=True).setup()
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------------------------- imagefolder


def _write_tree(root: Path, per_class: int = 6) -> None:
    rng = np.random.default_rng(0)
    for c, mode in (("cat", "RGB"), ("dog", "L")):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            h, w = 30 + 3 * i, 40 - 2 * i
            shape = (h, w, 3) if mode == "RGB" else (h, w)
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(root / c / f"{i}.png")


def test_imagefolder_splits(tmp_path):
    _write_tree(tmp_path)
    dm = D.ImageFolderDataModule(root=tmp_path, image_size=16, n_eval=4, seed=0)
    aux, ev = dm.aux_dataset(), dm.eval_dataset()
    assert len(ev) == 4 and len(aux) == 8 and dm.num_classes == 2 and dm.class_names == ["cat", "dog"]
    assert not set(dm.eval_ids) & set(dm.aux_ids) and len(set(dm.eval_ids) | set(dm.aux_ids)) == 12
    x, y, idx = _stack(ev)
    _check_images(x, 3, 16)
    _check_images(_stack(aux)[0], 3, 16)
    assert torch.equal(x, _stack(ev)[0])  # no randomness in evaluation transforms
    assert idx == [0, 1, 2, 3] and y == [dm.samples[i][1] for i in dm.eval_ids]
    # each evaluation image named by its file, relative to the root, in item order
    assert dm.eval_names() == [str(Path(dm.samples[i][0]).relative_to(tmp_path)) for i in dm.eval_ids]
    assert all(n.startswith(("cat/", "dog/")) for n in dm.eval_names())
    for image, label in zip(x, y, strict=False):
        if label == 1:  # grayscale PNGs
            assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
    same = D.ImageFolderDataModule(root=tmp_path, image_size=16, n_eval=4, seed=0, n_aux=3)
    other = D.ImageFolderDataModule(root=tmp_path, image_size=16, n_eval=4, seed=1)
    assert same.describe()["eval_hash"] == dm.describe()["eval_hash"] != other.describe()["eval_hash"]
    assert len(same.aux_dataset()) == 3 and not set(same.aux_ids) & set(same.eval_ids)
    gray = D.ImageFolderDataModule(root=tmp_path, image_size=16, channels=1, n_eval=2)
    _check_images(_stack(gray.eval_dataset())[0], 1, 16)


def test_imagefolder_separate_eval_folder_and_eval_list(tmp_path):
    _write_tree(tmp_path / "train")
    _write_tree(tmp_path / "val", per_class=3)
    dm = D.ImageFolderDataModule(root=tmp_path / "train", eval_root=tmp_path / "val", image_size=16, n_eval=4)
    dm.setup()
    assert len(dm.aux_dataset()) == 12 and len(dm.eval_dataset()) == 4  # every train image is auxiliary
    eval_paths = [dm.samples[i][0] for i in dm.eval_ids]
    assert all("/val/" in p for p in eval_paths) and all("/train/" in dm.samples[i][0] for i in dm.aux_ids)
    assert [dm.samples[i][1] for i in dm.eval_ids] == [0 if "/cat/" in p else 1 for p in eval_paths]
    assert dm.describe()["eval_root"] == str(tmp_path / "val")
    with pytest.raises(SplitinvError, match=r"eval_root .* has 6 images, fewer than n_eval=7"):
        D.ImageFolderDataModule(root=tmp_path / "train", eval_root=tmp_path / "val", n_eval=7).setup()
    chosen = sorted(p.relative_to(tmp_path / "train") for p in (tmp_path / "train").rglob("*.png"))[:3]
    listing = tmp_path / "eval.txt"
    listing.write_text("# the images to invert\n" + "\n".join(map(str, chosen)) + "\n\n")
    listed = D.ImageFolderDataModule(root=tmp_path / "train", eval_list=listing, image_size=16, n_eval=3)
    listed.setup()
    assert [Path(listed.samples[i][0]).relative_to(tmp_path / "train") for i in listed.eval_ids] == chosen
    assert len(listed.aux_dataset()) == 9 and not set(listed.eval_ids) & set(listed.aux_ids)
    listing.write_text("cat/nothing.png\n")
    with pytest.raises(SplitinvError, match=r"eval.txt line 1: cat/nothing.png is not an image file"):
        D.ImageFolderDataModule(root=tmp_path / "train", eval_list=listing, n_eval=1).setup()
    with pytest.raises(SplitinvError, match="set one of data.eval_root"):
        D.ImageFolderDataModule(root=tmp_path, eval_root=tmp_path, eval_list=listing)


def test_imagefolder_flat_folder_is_unlabelled(tmp_path):
    for i in range(3):
        Image.new("RGB", (20, 20), (i * 80, 10, 10)).save(tmp_path / f"{i}.jpg")
    dm = D.ImageFolderDataModule(root=tmp_path, image_size=12, n_eval=1)
    assert dm.num_classes == 0 and {y for _, y, _ in dm.aux_dataset()} == {-1}


def test_imagefolder_errors(tmp_path):
    with pytest.raises(SplitinvError, match="not a folder"):
        D.ImageFolderDataModule(root=tmp_path / "missing").setup()
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(SplitinvError, match="holds no images"):
        D.ImageFolderDataModule(root=tmp_path / "empty").setup()
    _write_tree(tmp_path / "tiny", per_class=1)
    with pytest.raises(SplitinvError, match="too few for data.n_eval=.* lower data.n_eval"):
        D.ImageFolderDataModule(root=tmp_path / "tiny", n_eval=2).setup()


# ------------------------------------------------------------------------------------------------- cifar10


def _write_fake_cifar(root: Path, n_train: int = 10, n_test: int = 12) -> dict[str, np.ndarray]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    arrays = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        n = n_test if name == "test_batch" else n_train
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n)]
        arrays[name] = data
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)
    return arrays


def test_cifar10_fake_copy(tmp_path, monkeypatch):
    import torchvision.datasets.cifar

    arrays = _write_fake_cifar(tmp_path)
    monkeypatch.setattr(
        torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True
    )  # md5s of the real files
    dm = D.CIFAR10DataModule(root=tmp_path, download=False, image_size=32, n_eval=5, n_aux=20, seed=2)
    aux, ev = dm.aux_dataset(), dm.eval_dataset()
    assert len(aux) == 20 and len(ev) == 5 and dm.class_names[0] == "class0"
    x, _, idx = _stack(ev)
    _check_images(x, 3, 32)
    test = torch.from_numpy(arrays["test_batch"].reshape(-1, 3, 32, 32))
    assert torch.allclose(x, test[dm.eval_ids].float() / 255) and idx == list(range(5))
    assert len(set(dm.eval_ids)) == 5 and max(dm.eval_ids) < 12 and max(dm.aux_ids) < 50
    small = D.CIFAR10DataModule(root=tmp_path, download=False, image_size=16, channels=1, n_eval=5, seed=2)
    _check_images(_stack(small.eval_dataset())[0], 1, 16)
    assert small.describe()["eval_ids"] == dm.describe()["eval_ids"] and len(small.aux_dataset()) == 50
    with pytest.raises(SplitinvError, match="n_eval=13 exceeds"):
        D.CIFAR10DataModule(root=tmp_path, download=False, n_eval=13).setup()


def test_cifar10_missing(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10

    with pytest.raises(SplitinvError, match="download=False") as info:
        D.CIFAR10DataModule(root=tmp_path, download=False).setup()
    assert str(tmp_path / "cifar-10-batches-py") in str(info.value)

    def offline(self):
        raise OSError("<urlopen error [Errno -2] Name or service not known>")

    monkeypatch.setattr(CIFAR10, "download", offline)
    with pytest.raises(SplitinvError, match="download failed.*Name or service"):
        D.CIFAR10DataModule(root=tmp_path, download=True).setup()


# -------------------------------------------------------------------------------------------------- common


def test_registry_and_argument_errors():
    assert set(D.DATAMODULES) == {"photos", "imagefolder", "fashion_mnist", "mnist", "cifar10", "noise"}
    assert all(cls.NAME == name for name, cls in D.DATAMODULES.items())
    with pytest.raises(
        SplitinvError,
        match=r"^unknown dataset 'fashion-mnist'\. Did you mean fashion_mnist, mnist\? Known: cifar10, ",
    ) as info:
        D.build_datamodule("fashion-mnist")
    assert "\n" not in str(info.value)
    assert isinstance(D.build_datamodule("fashion_mnist", vendored=True), D.FashionMNISTDataModule)
    with pytest.raises(SplitinvError, match="image_size must be an integer >= 11"):
        D.build_datamodule("photos", image_size=4)
    with pytest.raises(SplitinvError, match="channels must be 1 or 3"):
        D.build_datamodule("photos", channels=2)
    with pytest.raises(SplitinvError, match="n_eval"):
        D.build_datamodule("photos", n_eval=0)


def test_dataloaders_and_setup():
    dm = D.FashionMNISTDataModule(vendored=True, image_size=16, n_aux=40, n_eval=6, batch_size=8, seed=7)
    dm.setup("fit")
    aux = dm.aux_dataset()
    dm.setup("fit")
    dm.setup("test")
    assert dm.aux_dataset() is aux  # setup is idempotent
    x, y, idx = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 3, 16, 16) and y.dtype == torch.int64 and idx.dtype == torch.int64
    first = [b[2].tolist() for b in dm.train_dataloader()]
    assert first == [b[2].tolist() for b in dm.train_dataloader()]  # seeded shuffle
    order = [i for batch in first for i in batch]
    assert sorted(order) == list(range(40)) and order != list(range(40))
    for loader in (dm.val_dataloader(), dm.test_dataloader(), dm.predict_dataloader()):
        assert torch.cat([b[2] for b in loader]).tolist() == list(range(6))
    info = dm.describe()
    assert json.loads(json.dumps(info)) == info
    assert {"name", "root", "image_size", "channels", "n_aux", "n_eval", "seed", "eval_hash"} <= set(info)


def test_configs_instantiate(tmp_path):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    conf = Path(__file__).resolve().parents[1] / "conf" / "data"
    names = sorted(p.stem for p in conf.glob("*.yaml"))
    assert names == [
        "cifar10", "fashion_mnist", "fashion_mnist_mini", "imagefolder", "mnist", "mnist_mini", "photos"
    ]  # fmt: skip
    for name in names:
        cfg = OmegaConf.create(
            {"victim": {"image_size": 32}, "seed": 3, "data": OmegaConf.load(conf / f"{name}.yaml")}
        )
        if name == "imagefolder":
            assert OmegaConf.is_missing(cfg.data, "root")
            cfg.data.root = str(tmp_path)
        dm = instantiate(cfg.data)
        assert dm.image_size == 32 and dm.seed == 3 and dm.n_eval == 16
        assert dm.channels == (1 if name.startswith("mnist") else 3)  # digits: He et al.'s 1-channel LeNet
        assert dm.name == name.replace("_mini", "")
    mini = instantiate(
        OmegaConf.create(
            {
                "victim": {"image_size": 16},
                "seed": 0,
                "data": OmegaConf.load(conf / "fashion_mnist_mini.yaml"),
            }
        ).data
    )
    assert mini.vendored and len(mini.eval_dataset()) == 16
