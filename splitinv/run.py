"""``splitinv-run``: one attack on one victim at one cut point, scored and written to its own folder.

The Hydra app is a thin wrapper around :func:`run`, a plain function of a composed config, so notebooks and
tests can call it with the same configs (see :func:`splitinv.config.compose`).
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.resources
import json
import logging
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate as hydra_instantiate
from omegaconf import DictConfig, OmegaConf

import splitinv
from splitinv import metrics, results
from splitinv.cut import cut, describe_cut_points, resolve_point
from splitinv.errors import SplitinvError
from splitinv.evaluate import evaluate
from splitinv.victims import check_image_size

log = logging.getLogger(__name__)


def instantiate(node: Any, **kwargs: Any) -> Any:
    """hydra.utils.instantiate, letting splitinv's one-line errors through unwrapped."""
    try:
        return hydra_instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, SplitinvError):
            raise cause from None
        raise


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _versions() -> dict[str, str]:
    import lightning
    import timm
    import torchvision

    return {
        "splitinv": splitinv.__version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "lightning": lightning.__version__,
        "python": platform.python_version(),
    }


def run(cfg: DictConfig) -> dict[str, Any]:
    """Build the victim, cut it, fit the attack, reconstruct the evaluation set, score it, write the results.

    Returns the record written to ``metrics.json`` in ``cfg.paths.output_dir``.
    """
    start = time.perf_counter()
    out_dir = Path(cfg.paths.output_dir)
    key = config_hash(cfg)
    done = results.existing(out_dir, key) if cfg.get("skip_done", True) else None
    if done is not None:
        log.info("results for this config already in %s: skipping (skip_done=false reruns)", out_dir)
        return done
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.lpips not in ("auto", "required", "off"):
        raise SplitinvError(f"lpips={cfg.lpips!r} is not one of auto, required, off.")
    if cfg.lpips == "required":
        metrics.lpips_model("alex", "cpu")  # fail before any training when LPIPS cannot be computed

    victim = instantiate(cfg.victim)
    datamodule = instantiate(cfg.data)
    check_image_size(victim, datamodule.image_size, datamodule.channels)
    point = resolve_point(victim, cfg.cut)  # a name, or stage:K / depth:F / index:K resolved for this victim
    head, _tail = cut(victim, point)
    cut_info = _cut_info(victim, point, datamodule.image_size)
    attack = instantiate(cfg.attack)
    logger = instantiate(cfg.logger, **_logger_group(cfg)) if cfg.get("logger") else False
    trainer: L.Trainer = instantiate(cfg.trainer, logger=logger)
    device = trainer.strategy.root_device
    image_shape = (datamodule.channels, datamodule.image_size, datamodule.image_size)

    try:
        attack.cut_info = cut_info  # optimisation attacks pick their schedule from the cut's depth
        attack.fit(
            head, _fit_data(cfg, point, victim, datamodule, attack), trainer, image_shape, victim=victim
        )
        victim.to(device)
        datamodule.setup("predict")
        ev = evaluate(
            victim,
            head,
            attack,
            datamodule.predict_dataloader(),
            device=device,
            lpips=cfg.lpips,
            trainer=trainer,
            reconstructions_dir=out_dir / "reconstructions" if attack.per_image else None,
        )
        record = _record(cfg, point, victim, datamodule, attack, ev, device, time.perf_counter() - start)
        record["config_hash"] = key
        record["details"]["cut"] = cut_info
        image = results.grid(ev.originals, ev.reconstructions)
        extra = {"decoder.pt": attack.save} if getattr(attack, "decoder", None) is not None else {}
        extra[results.IMAGES_FILE] = lambda path: results.save_images(path, ev.originals, ev.reconstructions)
        if trainer.is_global_zero:
            results.write_run(
                out_dir, record, ev.per_image, image, OmegaConf.to_yaml(cfg, resolve=True), extra_files=extra
            )
            results.log_to_logger(logger, record, ev.per_image, image)
    finally:
        results.finish_logger(logger)
    return record


def _fit_data(cfg: DictConfig, point: str, victim: Any, datamodule: Any, attack: Any) -> Any:
    """What a learned attack trains on: the datamodule, or its cached activations when cache.enabled."""
    cache_cfg = cfg.get("cache") or {}
    if not cache_cfg.get("enabled") or not getattr(attack, "uses_features", False):
        return datamodule
    from splitinv.cut import stage_points
    from splitinv.features import CachedFeatureData, FeatureCache

    points = cache_cfg.get("points")
    if points == "stages":
        points = stage_points(victim)
    points = [resolve_point(victim, p) for p in (points or [])] + [point]
    cache = FeatureCache(
        cache_cfg.dir, victim, datamodule, points, dtype=cache_cfg.get("dtype", "float16"), seed=cfg.seed
    )
    return CachedFeatureData(cache, point, batch_size=datamodule.batch_size, seed=cfg.seed)


def config_hash(cfg: DictConfig) -> str:
    """A hash of what decides the numbers (not where a run writes or logs); finished jobs skip by it."""
    resolved = OmegaConf.to_container(cfg, resolve=False)
    for volatile in ("paths", "logger", "hydra", "skip_done", "sweep_name"):
        resolved.pop(volatile, None)
    trainer = resolved.get("trainer") or {}
    for volatile in ("enable_progress_bar", "default_root_dir", "log_every_n_steps"):
        trainer.pop(volatile, None)
    text = json.dumps(resolved, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _logger_group(cfg: DictConfig) -> dict[str, Any]:
    """W&B runs of one sweep share a group: sweep_name, or the sweep folder's name in a multirun."""
    if not str(cfg.logger.get("_target_", "")).endswith("WandbLogger") or cfg.logger.get("group"):
        return {}
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return {"group": Path(HydraConfig.get().sweep.dir).name}
    return {}


def _cut_info(victim: Any, point: str, image_size: int) -> dict[str, Any]:
    """Where the cut sits: its index among the victim's cut points, relative depth in [0, 1], and shape."""
    points = describe_cut_points(victim, image_size=image_size)
    match = next((p for p in points if point == p.name or point in p.aliases), None)
    if match is None:  # a valid but unlisted node name: no depth to report
        return {"name": point, "index": None, "n_points": len(points), "relative_depth": None, "shape": None}
    return {
        "name": point,
        "canonical": match.name,
        "index": match.index,
        "n_points": len(points),
        "relative_depth": match.index / max(1, len(points) - 1),
        "shape": list(match.shape) if match.shape else None,
    }


def _record(
    cfg: DictConfig,
    point: str,
    victim: Any,
    datamodule: Any,
    attack: Any,
    ev: Any,
    device: torch.device,
    seconds: float,
) -> dict[str, Any]:
    """The flat row a table builder reads: metric summaries and identifying config values at the top."""
    warnings_ = []
    if victim.weights == "random":
        warnings_.append(f"victim {victim.name} has RANDOM weights: not a trained network")
    if not ev.per_image.get("lpips"):
        warnings_.append("LPIPS unavailable (backbone weights not cached): reported as null")
    train = getattr(attack, "train_stats", {}) or {}
    return {
        "format": results.RESULTS_FORMAT,
        "status": "ok",
        **results.summary(ev.per_image),
        "victim": victim.name,
        "weights": victim.weights,
        "cut": point,  # resolved for this victim; cut_spec keeps what was asked (stage:2, depth:0.5, ...)
        "cut_spec": str(cfg.cut),
        "attack": attack.name,
        "data": datamodule.name,
        "seed": int(cfg.seed),
        "access": attack.knowledge.access,
        "aux_data": attack.knowledge.aux_data,
        "n_eval": ev.images,
        "details": {
            "victim": victim.describe(),
            "attack": attack.describe(),
            "data": datamodule.describe(),
        },
        "cost": {
            "wall_time_s": seconds,
            "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
            "precision": str(cfg.trainer.get("precision", "32-true")),
            "train_images_per_s": train.get("train_images_per_s"),
            "train_steps": train.get("train_steps"),
            "attack_images_per_s": ev.images_per_s,
            "steps_per_image": getattr(attack, "steps_per_image", 0),
            "attacked_images": ev.extra.get("attacked", ev.images),  # a resumed job skips finished images
            "skipped_images": ev.extra.get("skipped", 0),
            "peak_memory_mb": _peak_memory_mb(device),
        },
        "contract": metrics.CONTRACT,
        "warnings": warnings_,
        "versions": _versions(),
    }


@hydra.main(version_base="1.3", config_path="pkg://splitinv.conf", config_name="run")
def _hydra_main(cfg: DictConfig) -> None:
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        record = run(cfg)
    except Exception as err:
        results.write_failure(Path(cfg.paths.output_dir), err)
        if isinstance(err, SplitinvError):  # one line, no traceback: the message says what to change
            print(f"splitinv-run: error: {err}", file=sys.stderr)
            if not multirun:
                sys.exit(2)
        elif not multirun:
            raise
        else:
            log.error("job failed (%s: %s); the sweep goes on", type(err).__name__, err)
        return
    summary = ", ".join(
        f"{n} {record[n]['mean']:.4f}" if record.get(n) else f"{n} n/a" for n in ("lpips", "ssim", "psnr")
    )
    log.info(
        "%s %s @ %s: %s -> %s",
        record["attack"],
        record["victim"],
        record["cut"],
        summary,
        cfg.paths.output_dir,
    )


def config_groups(config_module: str = "splitinv.conf") -> dict[str, list[str]]:
    """The selectable config groups (victim, attack, data, ...) and their options."""
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


def check_group_choices(argv: list[str]) -> None:
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


def expand_cut_sweep(argv: list[str]) -> list[str]:
    """``cut=@stages`` / ``cut=@every:K`` / ``cut=@all``: the victim's own cut points, as a sweep list.

    Resolved from the victim these overrides select (one victim: its layer names differ from any other's;
    across architectures use ``cut=depth:0.25,depth:0.5`` or ``cut=stage:1,stage:2``).
    """
    at = [i for i, a in enumerate(argv) if a.startswith("cut=@")]
    if not at:
        return argv
    spec = argv[at[0]].split("=@", 1)[1]
    rest = [a for i, a in enumerate(argv) if i != at[0] and not a.startswith(("hydra.", "hydra/", "-"))]
    if any("," in a.partition("=")[2] and a.partition("=")[0].startswith("victim") for a in rest):
        raise SplitinvError(
            "cut=@... needs one victim: sweep several with cut=stage:K or cut=depth:F instead."
        )
    import warnings

    from splitinv.config import compose
    from splitinv.cut import cut_points, stage_points

    single = [a for a in rest if "," not in a.partition("=")[2]]
    cfg = compose(single, output_dir=".")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # weights do not change which points exist
        victim = instantiate({**OmegaConf.to_container(cfg.victim, resolve=True), "weights": None})
    kind, _, k = spec.partition(":")
    if kind == "stages":
        points = stage_points(victim)
    elif kind == "every" and k.isdigit() and int(k) > 0:
        points = stage_points(victim, every=int(k))
    elif kind == "all":
        points = cut_points(victim)
    else:
        raise SplitinvError(f"cut=@{spec}: use cut=@stages, cut=@every:K or cut=@all.")
    log.info("cut=@%s -> %s", spec, ",".join(points))
    return [*argv[: at[0]], "cut=" + ",".join(points), *argv[at[0] + 1 :]]


def main() -> None:
    """Console entry point (`splitinv-run`)."""
    try:
        check_group_choices(sys.argv[1:])
        sys.argv[1:] = expand_cut_sweep(sys.argv[1:])
    except SplitinvError as err:
        print(f"splitinv-run: error: {err}", file=sys.stderr)
        sys.exit(2)
    _hydra_main()
