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
