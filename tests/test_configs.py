"""Every option of every config group composes, and instantiates, under every entry config that uses it.

Entry configs (conf/*.yaml), groups (conf/<group>/, nested ones such as conf/hydra/launcher/) and options
(conf/<group>/<option>.yaml; names starting with "_" are shared bases) are read from the files on disk, so a
new option is tested as soon as its file exists. A group applies to an entry config when the entry's defaults
list names it (a nested group, when it names its top folder: hydra/launcher under hydra). Nothing downloads
and no dataset is read: weights are forced to None, victims are built small, data modules are constructed
but never set up.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from splitinv.config import CONFIG_MODULE, compose

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:.*RANDOM weights"),  # weights=None on purpose: nothing downloads
]

# Settings some options cannot be instantiated without ("???" in their yaml, or a SplitinvError naming a
# missing setting). The only hard-coded list in this file: each entry must be needed (checked below).
REQUIRED: dict[str, list[str]] = {
    "victim/custom": ["victim.factory=nets:tiny_cnn"],  # tests/nets.py; pytest puts tests/ on sys.path
    "data/imagefolder": ["data.root=tests/assets"],  # stored, never scanned: setup() is not called
    "aux/imagefolder": ["aux.root=tests/assets"],
}

SMALL_IMAGE = 32  # victims are built at this size where their config has an image_size

CONF = Path(str(importlib.resources.files(CONFIG_MODULE)))


# --------------------------------------------------------------------------------------------- discovery


def _options(folder: Path) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.yaml") if not p.name.startswith("_"))


def entry_configs() -> list[str]:
    """The top-level yaml files of conf/: run, train_victim, train_gan, gan_invert, ..."""
    return _options(CONF)


def groups_on_disk() -> dict[str, list[str]]:
    """Every folder under conf/ that holds options, as a group path ("attack", "hydra/launcher")."""
    groups = {}
    for folder in sorted(p for p in CONF.rglob("*") if p.is_dir() and p.name != "__pycache__"):
        if options := _options(folder):
            groups[folder.relative_to(CONF).as_posix()] = options
    return groups


def defaults_of(path: Path) -> dict[str, str | None]:
    """{group: option} of a yaml file's defaults list ("override /data: imagefolder" -> data: imagefolder)."""
    chosen: dict[str, str | None] = {}
    for item in (yaml.safe_load(path.read_text()) or {}).get("defaults", []):
        if isinstance(item, dict):
            for key, value in item.items():
                group = re.sub(r"^(override|optional)\s+", "", key).lstrip("/").split("@")[0]
                chosen[group] = value
    return chosen


def _cases() -> Iterator[tuple[str, str, str]]:
    groups = groups_on_disk()
    for entry in entry_configs():
        named = defaults_of(CONF / f"{entry}.yaml")
        for group, options in groups.items():
            if group.split("/")[0] in named:
                for option in options:
                    yield entry, group, option


CASES = list(_cases())


# --------------------------------------------------------------------------------------------- helpers


def _required(selected: dict[str, Any]) -> list[str]:
    """REQUIRED overrides of the options a composition selects; skips when a module they name is absent."""
    extra = [o for g, opt in selected.items() if opt for o in REQUIRED.get(f"{g}/{opt}", [])]
    for override in extra:
        value = override.partition("=")[2]
        if re.fullmatch(r"[\w.]+:\w+", value) and not _importable(value.split(":")[0]):
            pytest.skip(f"{override}: module {value.split(':')[0]} does not exist yet")
    return extra


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def _instantiate(group: str, node: Any) -> Any:
    """Build a group's object offline: weights None, victims small, trainers without a logger.

    Returns None where building is impossible here: a trainer asking for a GPU on a machine without one
    (Lightning refuses accelerator=gpu without CUDA at construction, so only composing is checked there).
    """
    if not isinstance(node, DictConfig) or "_target_" not in node:
        return None
    kwargs: dict[str, Any] = {}
    if "weights" in node:
        kwargs["weights"] = None  # never download (imagenet) or read a checkpoint
    if group == "victim" and "image_size" in node:  # small, or the network's own size when smaller
        own = node.get("image_size")
        kwargs["image_size"] = own if isinstance(own, int) and own < SMALL_IMAGE else SMALL_IMAGE
    if group == "trainer":
        if str(node.get("accelerator", "auto")) in ("gpu", "cuda") and not torch.cuda.is_available():
            return None
        kwargs["logger"] = False
    obj = instantiate(node, **kwargs)
    assert obj is not None
    return obj


def _compose(entry: str, overrides: list[str], out: Path) -> DictConfig:
    try:
        cfg = compose(overrides, output_dir=out, config_name=entry)
    except ConfigCompositionException as err:
        # A nested group that only configs select (conf/experiment/<sub>/, picked from an experiment's own
        # defaults list) cannot be overridden from the command line; appending it still checks its content.
        if "No match in the defaults list" not in str(err) or not overrides[0].partition("=")[0].count("/"):
            raise
        cfg = compose([f"+{overrides[0]}", *overrides[1:]], output_dir=out, config_name=entry)
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves (??? values stay as they are)
    return cfg


# --------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize(("entry", "group", "option"), CASES, ids=[f"{e}:{g}={o}" for e, g, o in CASES])
def test_option_composes_and_instantiates(entry: str, group: str, option: str, tmp_path: Path) -> None:
    overrides = [f"{group}={option}"]
    out = tmp_path / "out"
    cfg = _compose(entry, overrides, out)  # must compose even without its REQUIRED settings
    if group.split("/")[0] == "hydra":
        return  # Hydra's own settings (run folders, launchers): composing them is the check
    if group == "experiment":
        # a `# @package _global_` override of several groups: build everything it selects
        selected = {**defaults_of(CONF / f"{entry}.yaml"), **defaults_of(CONF / group / f"{option}.yaml")}
        cfg = _compose(entry, [*overrides, *_required(selected)], out)
        built = {key: _instantiate(key, cfg[key]) for key in cfg if isinstance(cfg[key], DictConfig)}
        assert {"victim", "attack", "data"} <= {key for key, obj in built.items() if obj is not None}
        return
    extra = _required({group: option})
    if extra:
        with pytest.raises(Exception):  # noqa: B017 (the entry in REQUIRED must be needed)
            _instantiate(group, cfg.get(group))
        cfg = _compose(entry, [*overrides, *extra], out)
    _instantiate(group, cfg.get(group))  # groups without a _target_ (paths) are checked by composing


def test_discovery_finds_every_entry_group_and_option() -> None:
    """Guards the parametrisation itself: an empty or partial discovery would test nothing, silently."""
    entries = entry_configs()
    assert entries and all(any(e == entry for e, _, _ in CASES) for entry in entries)
    tested = {(g, o) for _, g, o in CASES}
    untested = [f"{g}={o}" for g, opts in groups_on_disk().items() for o in opts if (g, o) not in tested]
    assert not untested, f"options that no entry config's defaults list reaches: {untested}"


def test_required_entries_name_real_options() -> None:
    groups = groups_on_disk()
    stale = [key for key in REQUIRED if key.rpartition("/")[2] not in groups.get(key.rpartition("/")[0], [])]
    assert not stale, f"REQUIRED names options that do not exist: {stale}"
