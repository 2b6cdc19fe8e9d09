"""Hydra helpers shared by every command: compose configs from Python (notebooks, tests) exactly as the
commands do, instantiate them with one-line errors, hash what decides a run's numbers, record versions."""

from __future__ import annotations

import difflib
import hashlib
import importlib.resources
import json
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from splitinv.errors import SplitinvError

CONFIG_MODULE = "splitinv.conf"
# keys that say where a run writes or logs, not what it computes: left out of the config hash
VOLATILE_KEYS = ("paths", "logger", "hydra", "skip_done", "sweep_name", "overwrite")
VOLATILE_TRAINER_KEYS = ("enable_progress_bar", "default_root_dir", "log_every_n_steps")


def compose(
    overrides: Sequence[str] = (),
    output_dir: str | Path | None = None,
    config_name: str = "run",
    return_hydra_config: bool = False,
) -> DictConfig:
    """The config `splitinv-run OVERRIDES` would run, with its results going to ``output_dir``.

    Example: ``run(compose(["victim=resnet18", "cut=layer3", "logger=csv"], output_dir="outputs/nb"))``.
    ``return_hydra_config``: keep the ``hydra`` node too (the launcher's settings, ``hydra/launcher=slurm``).
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    extra = [f"paths.output_dir={Path(output_dir).resolve()}"] if output_dir is not None else []
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        return hydra_compose(
            config_name=config_name,
            overrides=[*overrides, *extra],
            return_hydra_config=return_hydra_config,
        )


def slurm_count(value: Any, key: str, accelerator: Any = None) -> int:
    """A positive per-node count for SLURM (``conf/hydra/launcher/slurm.yaml``) from the trainer's ``key``
    (``devices``, ``num_nodes``): an integer, a list of device ids or ``"0,1"`` count as given; Lightning's
    "all of them" (``-1``, ``auto``) has no meaning before the job lands on a node, so it is refused in one
    line. With ``accelerator`` (``gpus_per_node``): 0 on a CPU trainer, where the count is of processes."""
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    elif isinstance(value, str) and "," in value:
        value = [v for v in value.split(",") if v.strip()]
    count = len(value) if isinstance(value, Sequence) and not isinstance(value, str) else value
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        devices = key.endswith("devices")
        what = "the GPUs (ranks) per node" if devices else "the number of nodes"
        why = " (Lightning's 'all of them' means nothing before a job reaches its node)" if devices else ""
        raise SplitinvError(
            f"hydra/launcher=slurm needs {what} as a number >= 1, but {key} is {value!r}{why}: set {key}=N."
        )
    if accelerator is not None and str(accelerator).lower() == "cpu":
        return 0
    return count


OmegaConf.register_new_resolver("splitinv.slurm_count", slurm_count, replace=True)


def instantiate(node: Any, **kwargs: Any) -> Any:
    """hydra.utils.instantiate, letting splitinv's one-line errors through unwrapped."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate as hydra_instantiate
    from omegaconf.errors import MissingMandatoryValue

    try:
        return hydra_instantiate(node, **kwargs)
    except MissingMandatoryValue as err:  # a ??? setting (data.root of data=imagefolder)
        raise SplitinvError(_missing_line(err)) from None
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, SplitinvError):
            raise cause from None
        if isinstance(cause, MissingMandatoryValue):
            raise SplitinvError(_missing_line(cause)) from None
        raise


def _missing_line(err: Any) -> str:
    key = getattr(err, "full_key", None) or "a setting"
    return f"{key} is required (??? in its config) and not set: pass {key}=VALUE on the command line."


def config_hash(cfg: DictConfig) -> str:
    """A hash of what decides the numbers (not where a run writes or logs); finished jobs skip by it."""
    resolved = OmegaConf.to_container(cfg, resolve=False)
    for volatile in VOLATILE_KEYS:
        resolved.pop(volatile, None)
    trainer = resolved.get("trainer") or {}
    for volatile in VOLATILE_TRAINER_KEYS:
        trainer.pop(volatile, None)
    text = json.dumps(resolved, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_digest(path: Path) -> str:
    """The first 16 hex digits of a file's sha256 (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def _listing_digest(folder: Path) -> str:
    """A hash of a folder tree's file names, sizes and modification times (not contents: a dataset root)."""
    entries = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            path = Path(root) / name
            try:
                st = path.stat()
            except OSError:
                continue
            entries.append([str(path.relative_to(folder)), st.st_size, st.st_mtime_ns])
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:16]


def input_files(cfg: DictConfig) -> dict[str, str]:
    """What the files a config names hold: ``{key: digest}`` for every setting whose value is an existing
    file (weights, checkpoints: a hash of the content) or, for ``root`` / ``eval_root`` keys, an existing
    folder (a hash of its listing). A finished job is reused only when these match too: a victim retrained
    into the same path, or images added to a data root, rerun the job."""
    try:
        container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    except Exception:  # an interpolation that only resolves inside a Hydra job: read the values as written
        container = OmegaConf.to_container(cfg, resolve=False)
    for volatile in (*VOLATILE_KEYS, "cache"):
        container.pop(volatile, None)
    out: dict[str, str] = {}

    def walk(node: Any, key: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{key}.{k}" if key else str(k))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{key}.{i}")
        elif isinstance(node, str) and node and len(node) < 4096 and node not in ("imagenet", "random"):
            path = Path(node).expanduser()
            try:
                if path.is_file():
                    out[key] = file_digest(path)
                elif path.is_dir() and key.rpartition(".")[2] in ("root", "eval_root"):
                    out[key] = _listing_digest(path)
            except OSError:
                return

    walk(container, "")
    return out


def _installed(name: str, version: Any, missing: type[Exception]) -> str:
    try:
        return str(version(name))
    except missing:
        return "not installed"


def versions() -> dict[str, str]:
    """The versions that decide a run's numbers, recorded in every results file."""
    from importlib.metadata import PackageNotFoundError, version

    import lightning
    import torch
    import torchvision

    import splitinv

    return {
        "splitinv": splitinv.__version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": _installed("timm", version, PackageNotFoundError),  # read, not imported (1.5 CPU-s)
        "lightning": lightning.__version__,
        "python": platform.python_version(),
    }


def config_groups(config_module: str = CONFIG_MODULE) -> dict[str, list[str]]:
    """The selectable config groups (victim, attack, data, ...) and their options (``_x``: shared bases)."""
    root = importlib.resources.files(config_module)
    return {
        d.name: sorted(
            p.name[: -len(".yaml")]
            for p in d.iterdir()
            if p.name.endswith(".yaml") and not p.name.startswith("_")
        )
        for d in root.iterdir()
        if d.is_dir() and d.name not in ("hydra", "paths", "__pycache__")
    }


def help_groups(config_module: str = CONFIG_MODULE) -> str:
    """``--help``'s group lines (``group: option, ...``, nested groups too), without the shared bases that
    start with ``_`` (attack/_base, attack/_optimize: inherited, never chosen) and Hydra's own groups."""
    lines: list[tuple[str, str]] = []

    def walk(folder: Any, group: str) -> None:
        options = sorted(
            p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml") and p.name[0] != "_"
        )
        if group and options:
            lines.append((group, f"{group}: {', '.join(options)}"))
        for sub in sorted(folder.iterdir(), key=lambda p: p.name):
            if sub.is_dir() and sub.name not in ("hydra", "__pycache__"):
                walk(sub, f"{group}/{sub.name}" if group else sub.name)

    walk(importlib.resources.files(config_module), "")
    return "\n".join(line for _, line in sorted(lines))


OmegaConf.register_new_resolver("splitinv.help_groups", help_groups, replace=True)


def check_group_choices(argv: Sequence[str]) -> None:
    """Refuse an unknown group option (``data=imagenett``) in one line, before Hydra's multi-line error."""
    groups = config_groups()
    for arg in argv:
        key, sep, value = arg.lstrip("+~").partition("=")
        if not sep or key not in groups or "(" in value or "*" in value or value in ("null", ""):
            continue
        for choice in value.split(","):
            if choice not in groups[key]:
                close = difflib.get_close_matches(choice, groups[key], n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                raise SplitinvError(
                    f"unknown {key} {choice!r}{hint}: choose one of {', '.join(groups[key])}."
                )
