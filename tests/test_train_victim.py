"""splitinv-train-victim: a trained classifier whose checkpoint `victim.weights=PATH` accepts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose as hydra_compose
from hydra import initialize_config_module
from PIL import Image

from splitinv import build_victim
from splitinv.errors import SplitinvError
from splitinv.train_victim import train_victim

FAST = [
    "victim.image_size=32",
    "trainer.max_epochs=1",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "data.batch_size=32",
]


def _cfg(tmp_path: Path, *overrides: str):
    with initialize_config_module(config_module="splitinv.conf", version_base="1.3"):
        return hydra_compose("train_victim", overrides=[*FAST, f"paths.output_dir={tmp_path}", *overrides])


def test_trains_fashion_mnist_and_writes_a_loadable_checkpoint(tmp_path: Path) -> None:
    result = train_victim(_cfg(tmp_path, "data.n_aux=1024", "data.n_eval=200", "optim.lr=0.02"))
    assert result["val_acc"] > 0.4  # 32 steps; 10 classes: chance is 0.1
    ckpt = Path(result["checkpoint"])
    assert ckpt == tmp_path / "victim.pt"
    victim = build_victim("resnet18", weights=ckpt)
    assert victim.num_classes == 10 and victim.image_size == 32 and victim.weights == str(ckpt)
    obj = torch.load(ckpt, weights_only=True)
    assert obj["format"] == "splitinv-victim/1" and obj["name"] == "resnet18"
    # the checkpoint holds the trained weights, not a fresh initialisation
    fresh = build_victim("resnet18", num_classes=10, image_size=32) if torch.manual_seed(0) else None
    trained = obj["state_dict"]["conv1.weight"]
    assert torch.equal(victim.model.conv1.weight, trained)
    assert not torch.equal(fresh.model.conv1.weight, trained)


def test_trains_on_an_image_folder(tmp_path: Path) -> None:
    root = tmp_path / "images"
    g = torch.Generator().manual_seed(0)
    for label, colour in (("red", (200, 30, 30)), ("blue", (30, 30, 200))):
        (root / label).mkdir(parents=True)
        for i in range(24):
            noise = (torch.rand(16, 16, 3, generator=g) * 40).to(torch.uint8).numpy()
            Image.fromarray((noise + torch.tensor(colour, dtype=torch.uint8).numpy()).clip(0, 255)).save(
                root / label / f"{i}.png"
            )
    overrides = ["data=imagefolder", f"data.root={root}", "data.n_eval=8", "trainer.max_epochs=3"]
    result = train_victim(_cfg(tmp_path / "run", *overrides))
    assert result["val_acc"] >= 0.75  # two solid colours are easy
    assert build_victim("resnet18", weights=result["checkpoint"]).num_classes == 2


def test_unlabelled_data_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    root.mkdir()
    for i in range(6):
        Image.new("RGB", (16, 16), (i * 40, 0, 0)).save(root / f"{i}.png")
    with pytest.raises(SplitinvError, match="no class labels"):
        train_victim(_cfg(tmp_path / "run", "data=imagefolder", f"data.root={root}", "data.n_eval=2"))
