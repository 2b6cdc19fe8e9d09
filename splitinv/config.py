"""Compose splitinv's Hydra configs from Python (notebooks, tests) exactly as `splitinv-run` does."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_module
from omegaconf import DictConfig

CONFIG_MODULE = "splitinv.conf"


def compose(
    overrides: Sequence[str] = (), output_dir: str | Path | None = None, config_name: str = "run"
) -> DictConfig:
    """The config `splitinv-run OVERRIDES` would run, with its results going to ``output_dir``.

    Example: ``run(compose(["victim=resnet18", "cut=layer3", "logger=csv"], output_dir="outputs/nb"))``.
    """
    extra = [f"paths.output_dir={Path(output_dir).resolve()}"] if output_dir is not None else []
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=[*overrides, *extra])
