"""Shared test setup: no test downloads anything or reads the user's caches."""

from __future__ import annotations

import urllib.error

import pytest
import torch


@pytest.fixture(autouse=True)
def _offline_caches(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty TORCH_HOME / HF_HOME per test, and a torch.hub downloader that fails as if offline."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("TORCH_HOME", str(home / "torch"))
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("SPLITINV_DATA", str(home / "data"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(home / "wandb"))

    def offline(url: str, *args: object, **kwargs: object) -> None:
        raise urllib.error.URLError(f"offline test: refusing to download {url}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    from splitinv import metrics

    metrics.clear_lpips_cache()


@pytest.fixture(scope="module")
def one_thread():
    """Small CPU models on a shared 2-core machine: one intra-op thread is many times faster than two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def quickstart_victim(tmp_path_factory: pytest.TempPathFactory):
    """The quickstart's victim setting, trained briefly (ResNet-18, 32 px, 2 epochs on 2,048 images of the
    shipped Fashion-MNIST subset: about 20 s, accuracy about 0.5), through the console script. Its path."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path_factory.mktemp("quickstart_victim")
    weights = out / "victim.pt"
    script = Path(sys.executable).with_name("splitinv-train-victim")
    command = (
        [str(script)]
        if script.exists()
        else [sys.executable, "-c", "from splitinv.train_victim import main; main()"]
    )
    proc = subprocess.run(
        [*command, "victim=resnet18", "victim.image_size=32", "data=fashion_mnist_mini", "data.n_aux=2048",
         "trainer.max_epochs=2", "trainer.enable_progress_bar=false", f"checkpoint={weights}",
         f"hydra.run.dir={out / 'train'}"],
        capture_output=True, text=True, timeout=600, cwd=out,
        env={**os.environ, "WANDB_MODE": "disabled"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return weights
