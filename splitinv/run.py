"""``splitinv-run``: one attack on one victim at one cut point, scored and written to its own folder.

The Hydra app is a thin wrapper (:func:`splitinv.task.hydra_command`) around :func:`run`, a plain function
of a composed config, so notebooks and tests can call it with the same configs
(:func:`splitinv.config.compose`). The run only wires the pieces together:

    victim -> split(victim, cut, defense) -> attack.fit(context) -> evaluate(split, attack) -> results
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import resource
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from splitinv import metrics, results, sheets
from splitinv.attacks.base import Attack, AttackContext
from splitinv.config import config_hash, input_files, instantiate
from splitinv.cut import describe_cut_points, resolve_point
from splitinv.defenses.checkpoint import load_defense
from splitinv.errors import SplitinvError
from splitinv.evaluate import Evaluation, evaluate
from splitinv.split import Split, split
from splitinv.task import hydra_command
from splitinv.victims import check_image_size

log = logging.getLogger(__name__)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run(cfg: DictConfig) -> dict[str, Any] | None:
    """Build the victim, split it, fit the attack, reconstruct the evaluation set, score it, write results.

    Returns the record written to ``metrics.json`` in ``cfg.paths.output_dir``. Under DDP every rank trains
    (and attacks its share of the images, per-image attacks); evaluation, utility, baselines and writing run
    on global rank zero only, and the other ranks return None.
    """
    start = time.perf_counter()
    out_dir = Path(cfg.paths.output_dir)
    key = config_hash(cfg)
    inputs = input_files(cfg)
    done = results.reusable(
        out_dir,
        key,
        inputs,
        skip_done=cfg.get("skip_done", True),
        overwrite=bool(cfg.get("overwrite", False)),
    )
    if done is not None:
        log.info("results for this config already in %s: skipping (skip_done=false reruns)", out_dir)
        return done
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.lpips not in ("auto", "required", "off"):
        raise SplitinvError(f"lpips={cfg.lpips!r} is not one of auto, required, off.")
    if cfg.lpips == "required":
        metrics.lpips_model("alex", "cpu")  # fail before any training when LPIPS cannot be computed
    sheets.sheet_images(cfg.get("sheets", 16), 1)  # bad output settings fail before any training too
    if str(cfg.get("save_reconstructions", "none") or "none") not in results.SAVE_FORMATS:
        raise SplitinvError(
            f"save_reconstructions={cfg.save_reconstructions!r}: use one of "
            f"{', '.join(results.SAVE_FORMATS)}."
        )

    _check_evaluator_setting(cfg.get("evaluator"))
    victim = instantiate(cfg.victim)
    datamodule = instantiate(cfg.data)
    check_image_size(victim, datamodule.image_size, datamodule.channels)
    datamodule.setup()  # read and check the data now: a bad image file fails before any training
    defense = instantiate(cfg.defense) if cfg.get("defense") else None
    method = cfg.get("cut_method", "auto")  # auto (FX, or hooks where they find far more points), fx, hooks
    the_split = split(victim, cfg.cut, defense, method=method)  # the cut spec (stage:K, ...) resolved
    point = the_split.point
    assert point is not None
    # a victim fine-tuned with a defense (splitinv-train-defense) must be run with that defense, at that cut
    load_defense(cfg.victim.get("weights"), the_split.defense, point)
    cut_info = _cut_info(victim, point, datamodule.image_size, method)
    attack: Attack = instantiate(cfg.attack)
    aux_datamodule, aux_kind = _aux_data(cfg, datamodule)
    if attack.uses_aux_data:  # what the attacker learned from follows from the aux choice
        attack.knowledge = dataclasses.replace(attack.knowledge, aux_data=aux_kind)
    logger = instantiate(cfg.logger, **_logger_group(cfg)) if cfg.get("logger") else False
    trainer: L.Trainer = instantiate(cfg.trainer, logger=logger)
    device = trainer.strategy.root_device
    image_shape = (datamodule.channels, datamodule.image_size, datamodule.image_size)
    writer: results.ReconstructionWriter | None = None
    calibration = _calibrate_noise(cfg, the_split, aux_datamodule, victim, device)

    try:
        context = AttackContext.for_attack(
            attack,
            the_split,
            image_shape,
            victim=victim,
            data=_fit_data(cfg, point, victim, aux_datamodule, attack, the_split),
            trainer=trainer,
            cut=cut_info,
        )
        train_stats = attack.fit(context) or {}
        victim.to(device)
        datamodule.setup("predict")
        eval_start = time.perf_counter()
        sharded = _attack_on_every_rank(the_split, attack, datamodule, trainer, out_dir)
        if not trainer.is_global_zero:  # DDP: training (and sharded attacks) on every rank, the rest once
            return None
        n_eval = len(datamodule.eval_dataset())
        n_sheet = sheets.sheet_images(cfg.get("sheets", 16), n_eval)
        fmt = str(cfg.get("save_reconstructions", "none") or "none")
        writer = None if fmt == "none" else results.ReconstructionWriter(out_dir, fmt, n_eval)
        ev = evaluate(
            the_split,
            attack,
            datamodule.predict_dataloader(),
            device=device,
            lpips=cfg.lpips,
            trainer=trainer if sharded is None else None,  # sharded: every image is in reconstructions/
            reconstructions_dir=out_dir / "reconstructions" if attack.per_image else None,
            evaluator=_evaluator(cfg, victim, device),
            keep=n_sheet,  # the first n_sheet evaluation images go on the sheets; the rest are let go
            sink=writer.add if writer is not None else None,
        )
        names = datamodule.eval_names()  # samples.csv names each image: its file, or its dataset id
        index = ev.per_image.pop("index")
        ev.per_image = {"index": index, "image": [names[int(i)] for i in index], **ev.per_image}
        if sharded is not None:  # what the ranks attacked, not what rank zero then loaded
            ev.attacked, ev.seconds = sharded
            ev.extra.update(attacked=sharded[0], skipped=ev.images - sharded[0])
        utility = measure_utility(the_split, datamodule.predict_dataloader(), device)
        utility_test = _utility_on_held_out(cfg, the_split, datamodule, victim, inputs, device)
        baselines = _baselines(cfg, datamodule, aux_datamodule, attack, ev, device)
        train_stats["evaluation_s"] = time.perf_counter() - eval_start
        record = _record(
            cfg, key, the_split, victim, datamodule, attack, ev, train_stats, device, cut_info, start,
            utility=utility, utility_test=utility_test, baselines=baselines,
            aux=None if aux_datamodule is datamodule else aux_datamodule, precision=str(trainer.precision),
        )  # fmt: skip
        record["inputs"] = inputs  # the input files' digests: a changed file reruns the job
        _warn_below_grey(record, attack, other_aux=aux_datamodule is not datamodule)
        record["leakage_bound"] = _leakage_bound(cfg, the_split, datamodule, device, calibration)
        record["sheet_indices"] = ev.per_image["index"][:n_sheet]  # the images on the sheets and images.pt
        extra = dict(attack.artifacts())
        if n_sheet:
            extra[results.IMAGES_FILE] = lambda path: results.save_images(
                path, ev.originals, ev.reconstructions
            )
        if writer is not None:
            extra[writer.name] = lambda path: writer.move_into(path.parent)
        images = (ev.originals, ev.reconstructions)  # only rank zero is here (the others returned above)
        config_yaml = OmegaConf.to_yaml(cfg, resolve=True)
        results.write_run(out_dir, record, ev.per_image, images, config_yaml, extra_files=extra)
        results.log_to_logger(logger, record, ev.per_image, sheets.first_sheet(out_dir))
    finally:
        if writer is not None:
            writer.discard()  # moved into the run folder by now, or a failed run's partial file
        results.finish_logger(logger)  # each job (and each call from Python) gets its own W&B run
    return record


def _leakage_settings(cfg: DictConfig) -> tuple[bool, int]:
    node = cfg.get("leakage") or {}
    probes = node.get("probes", 32)
    if isinstance(probes, bool) or not isinstance(probes, int) or probes < 0:
        raise SplitinvError(f"leakage.probes must be an integer >= 0 (0: exact trace), got {probes!r}.")
    return bool(node.get("enabled", True)), probes


def _calibrate_noise(
    cfg: DictConfig, the_split: Split, aux_datamodule: Any, victim: Any, device: torch.device
) -> dict[str, Any] | None:
    """``defense.target_dfil``: sigma chosen so that the mean dFIL over the first
    ``defense.calibration_images`` auxiliary images meets the target; returns what was chosen (or None)."""
    defense = the_split.defense
    target = getattr(defense, "target_dfil", None)
    if target is None:
        return None
    from torch.utils.data import DataLoader, Subset

    _, probes = _leakage_settings(cfg)
    aux = aux_datamodule.aux_dataset()
    n = min(len(aux), defense.calibration_images)
    victim.to(device)
    loader = DataLoader(Subset(aux, range(n)), batch_size=max(1, aux_datamodule.batch_size))
    sigma = defense.calibrate(the_split.head, loader, device=device, probes=probes)
    log.info("defense.target_dfil=%g: sigma %.4g from %d auxiliary images", target, sigma, n)
    return {"target_dfil": target, "sigma": sigma, "calibration_images": n}


def _leakage_bound(
    cfg: DictConfig, the_split: Split, datamodule: Any, device: torch.device, calibration: Any
) -> dict[str, Any] | None:
    """metrics.json's ``leakage_bound`` (:func:`splitinv.leakage.leakage_bound` over the evaluation images,
    one batch at a time), or None with ``leakage.enabled: false``."""
    from splitinv.leakage import leakage_bound

    enabled, probes = _leakage_settings(cfg)
    if not enabled:
        return None
    bound = leakage_bound(
        the_split.head, the_split.defense, datamodule.predict_dataloader(), device, probes, seed=int(cfg.seed)
    )
    if calibration is not None:
        bound["calibration"] = calibration
    return bound


def _attack_on_every_rank(
    the_split: Split, attack: Attack, datamodule: Any, trainer: L.Trainer, out_dir: Path
) -> tuple[int, float] | None:
    """DDP with a per-image attack: every rank attacks its share of the evaluation images
    (``trainer.predict``) into the run folder's ``reconstructions/``, then waits for the others. Returns
    (images attacked by all ranks, seconds); None with one process or a batch attack (rank zero does all)."""
    if trainer.world_size < 2 or not attack.per_image:
        return None
    from splitinv.evaluate import ReconstructionStore, reconstruct

    start = time.perf_counter()
    _, _, attacked = reconstruct(
        the_split,
        attack,
        datamodule.predict_dataloader(),
        trainer=trainer,
        store=ReconstructionStore(out_dir / "reconstructions"),
        device=trainer.strategy.root_device,
        progress=trainer.is_global_zero,
    )
    total = trainer.strategy.reduce(
        torch.tensor(float(attacked), device=trainer.strategy.root_device), reduce_op="sum"
    )
    return int(total.item()), time.perf_counter() - start


def _check_evaluator_setting(node: Any) -> None:
    """``evaluator`` must be a victim config (a mapping with ``_target_``), not a name: one line before any
    work (``evaluator=resnet18`` used to fail after the attack, in Hydra's instantiate)."""
    from collections.abc import Mapping

    if node is None or (isinstance(node, (Mapping, DictConfig)) and "_target_" in node):
        return
    example = f"name: {node}, " if isinstance(node, str) else ""
    raise SplitinvError(
        f"evaluator={node!r} is not a classifier config: give one, e.g. "
        f"'evaluator={{_target_: splitinv.victims.build_victim, {example}weights: PATH}}', or evaluator=null."
    )


def _evaluator(cfg: DictConfig, victim: Any, device: torch.device) -> Any:
    """The independent evaluation classifier (``evaluator``: a victim config with its weights), or None."""
    node = cfg.get("evaluator")
    if not node:
        return None
    evaluator = instantiate(node)
    if evaluator.describe() == victim.describe():
        raise SplitinvError("evaluator is the victim itself: give another classifier (other weights).")
    check_image_size(evaluator, int(cfg.data.image_size), int(cfg.data.channels))
    return evaluator.eval().to(device)


def _aux_data(cfg: DictConfig, datamodule: Any) -> tuple[Any, str]:
    """The attacker's auxiliary datamodule and its kind (``same``: ``data``'s own auxiliary split; ``other``:
    another dataset or noise, ``aux=...``). Evaluation images always come from ``data``."""
    aux_cfg = cfg.get("aux") or {}
    if "_target_" not in aux_cfg:  # aux=same (conf/aux/same.yaml)
        return datamodule, "same"
    aux_datamodule = instantiate(aux_cfg)
    shape = (aux_datamodule.channels, aux_datamodule.image_size)
    if shape != (datamodule.channels, datamodule.image_size):
        raise SplitinvError(
            f"aux={aux_datamodule.name} gives {shape[0]}-channel {shape[1]} px images but "
            f"data={datamodule.name} {datamodule.channels}-channel {datamodule.image_size} px: set "
            "aux.channels and aux.image_size."
        )
    return aux_datamodule, "other"


def _baselines(
    cfg: DictConfig,
    datamodule: Any,
    aux_datamodule: Any,
    attack: Attack,
    ev: Evaluation,
    device: torch.device,
) -> Any:
    """Trivial reconstructions (grey, mean auxiliary image, 4x4 / 8x8 low-pass) scored on the same
    evaluation images (``baselines: true``); adds the per-image ``beats_grey`` and ``beats_lowpass4`` columns
    to ``ev``.
    The mean auxiliary image (of the attacker's auxiliary data) only where the attacker has auxiliary data:
    a data-free run reads none."""
    if not cfg.get("baselines", True):
        return None
    from splitinv import baselines

    has_data = attack.knowledge.aux_data != "none"
    mean = baselines.mean_image(aux_datamodule.aux_dataset()) if has_data else None
    columns, ssim = baselines.score(datamodule.predict_dataloader(), mean, lpips=cfg.lpips, device=device)
    for name in ("grey", "lowpass4"):
        ev.per_image[f"beats_{name}"] = baselines.beats(
            ev.per_image["ssim"], ev.per_image["index"], ssim[name]
        )
    return {name: results.summary(values) for name, values in columns.items()}


def measure_utility(the_split: Split, batches: Any, device: torch.device) -> dict[str, Any]:
    """The split's utility with the defense's random draws restarted from its seed first, so that it is the
    same whatever the attack drew before it (an adaptive attacker's training advances a seeded defense's
    generator): adaptive and naive jobs of one defense setting read the same accuracy."""
    reset = getattr(the_split.defense, "reset", None)
    if callable(reset):
        reset()
    return the_split.utility(batches, device=device)


def _utility_on_held_out(
    cfg: DictConfig,
    the_split: Split,
    datamodule: Any,
    victim: Any,
    inputs: dict[str, str],
    device: torch.device,
) -> Any:
    """The defended split's utility on the data's whole test split (``utility_test: true`` and the data has
    one), else None. In a multirun it is measured once per (victim and its weights, cut, defense setting,
    seed, data) and kept in the sweep folder (``.splitinv/utility/<key>.json``): every attack of a sweep
    reads the same number without another pass over the test split."""
    held_out = datamodule.held_out_dataset() if cfg.get("utility_test", True) else None
    if held_out is None:
        return None
    from torch.utils.data import DataLoader

    memo = _utility_memo(cfg, the_split, datamodule, victim, inputs, len(held_out), device)
    if memo is not None and memo.is_file():
        with contextlib.suppress(OSError, ValueError):
            value = json.loads(memo.read_text())
            if isinstance(value, dict) and {"accuracy", "agreement", "n"} <= set(value):
                return value
    loader = DataLoader(held_out, batch_size=max(64, datamodule.batch_size))
    value = measure_utility(the_split, loader, device)
    if memo is not None:
        with contextlib.suppress(OSError):
            memo.parent.mkdir(parents=True, exist_ok=True)
            tmp = memo.with_name(f".{memo.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(value))
            os.replace(tmp, memo)  # whole or absent: a concurrent job reads the old state or the new
    return value


def _utility_memo(
    cfg: DictConfig,
    the_split: Split,
    datamodule: Any,
    victim: Any,
    inputs: dict[str, str],
    n_held_out: int,
    device: torch.device,
) -> Path | None:
    """Where a multirun keeps the held-out utility of this (victim, weights, cut, defense, seed, data); None
    outside a multirun (a single job measures it)."""
    if not (HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN):
        return None
    identity = {
        "victim": victim.describe(),
        "weights": {k: v for k, v in inputs.items() if k.startswith("victim.")},
        # undefended, tail(head(x)) is the whole victim at every cut: one pass serves a sweep over cuts
        "cut": None if the_split.defense.is_identity else the_split.point,
        "defense": the_split.defense.describe(),
        "seed": int(cfg.seed),
        "data": {
            "name": datamodule.name,
            "root": datamodule.root,
            "image_size": datamodule.image_size,
            "channels": datamodule.channels,
            "held_out": n_held_out,
            "inputs": {k: v for k, v in inputs.items() if k.startswith("data.")},
        },
        "device": device.type,
    }
    key = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:20]
    return Path(HydraConfig.get().sweep.dir) / ".splitinv" / "utility" / f"{key}.json"


def _fit_data(
    cfg: DictConfig, point: str, victim: Any, datamodule: Any, attack: Attack, the_split: Split
) -> Any:
    """What a learned attack trains on: the datamodule, or its cached observations when cache.enabled."""
    cache_cfg = cfg.get("cache") or {}
    if not cache_cfg.get("enabled") or not attack.learns_from_observations:
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
    # a naive attacker learns from the undefended head; an adaptive one from what the device sends
    modelled = the_split if attack.knowledge.defense_aware else the_split.undefended()
    return CachedFeatureData(
        cache, point, batch_size=datamodule.batch_size, seed=cfg.seed, defense=modelled.defense
    )


def _logger_group(cfg: DictConfig) -> dict[str, Any]:
    """W&B runs of one sweep share a group: sweep_name, or the sweep folder's name in a multirun."""
    if not str(cfg.logger.get("_target_", "")).endswith("WandbLogger") or cfg.logger.get("group"):
        return {}
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return {"group": Path(HydraConfig.get().sweep.dir).name}
    return {}


def _cut_info(victim: Any, point: str, image_size: int, method: str = "auto") -> dict[str, Any]:
    """Where the cut sits: its index among the victim's cut points, relative depth in [0, 1], and shape."""
    points = describe_cut_points(victim, method=method, image_size=image_size)
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
        # what the victim's paper calls this cut (shallow / deep), where it says (splitinv.nets.he2019)
        "paper_depth": getattr(victim, "paper_cuts", {}).get(match.name),
        # the deployed architecture and its input normalisation: public, so even a black-box attacker knows
        # them (published inverse networks, attack.preset=he2019, output normalised images)
        "victim": getattr(victim, "name", None),
        "input_mean": list(getattr(victim, "mean", ()) or ()) or None,
        "input_std": list(getattr(victim, "std", ()) or ()) or None,
    }


def _record(
    cfg: DictConfig,
    key: str,
    the_split: Split,
    victim: Any,
    datamodule: Any,
    attack: Attack,
    ev: Evaluation,
    train: dict[str, Any],
    device: torch.device,
    cut_info: dict[str, Any],
    start: float,
    *,
    utility: dict[str, Any],
    utility_test: dict[str, Any] | None,
    baselines: dict[str, Any] | None,
    aux: Any = None,
    precision: str = "32-true",
) -> dict[str, Any]:
    """The flat row a table builder reads (:func:`splitinv.results.build_record`)."""
    warnings_ = []
    if victim.weights == "random":
        warnings_.append(f"victim {victim.name} has RANDOM weights: not a trained network")
    if not ev.per_image.get("lpips"):
        warnings_.append("LPIPS unavailable (weights not cached, or images too small): reported as null")
    return results.build_record(
        per_image=ev.per_image,
        victim=victim.name,
        weights=victim.weights,
        cut=str(the_split.point),
        cut_spec=str(cfg.cut),
        attack=attack.name,
        data=datamodule.name,
        seed=int(cfg.seed),
        knowledge=attack.knowledge.as_dict(),
        defense=the_split.defense.name,
        defense_strength=the_split.defense.strength,
        utility=utility,
        utility_test=utility_test,
        baselines=baselines,
        n_eval=ev.images,
        config_hash=key,
        details={
            "victim": victim.describe(),
            "attack": attack.describe(),
            "defense": the_split.defense.describe(),
            "data": datamodule.describe(),
            "aux": "same" if aux is None else aux.describe(),
            "cut": cut_info,
        },
        cost={
            "wall_time_s": time.perf_counter() - start,
            "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
            "precision": precision,
            "train_images_per_s": train.get("train_images_per_s"),
            "train_steps": train.get("train_steps"),
            "attack_images_per_s": ev.images_per_s,
            # evaluating the n_eval images: attack, scores, utility, baselines (and the held-out utility)
            "evaluation_s": train.get("evaluation_s"),
            "steps_per_image": attack.steps_per_image,
            "attacked_images": ev.extra.get("attacked", ev.images),  # a resumed job skips finished images
            "skipped_images": ev.extra.get("skipped", 0),
            "peak_memory_mb": _peak_memory_mb(device),
        },
        warnings=warnings_,
        precision=precision,
    )


def _warn_below_grey(record: dict[str, Any], attack: Attack, other_aux: bool) -> None:
    """One warning (recorded in ``warnings`` too) when most reconstructions do not beat a flat grey image:
    the attack learned nothing at this budget, and the settings that raise it."""
    from splitinv.baselines import NO_BETTER_THAN_GREY

    if record.get("verdict") != NO_BETTER_THAN_GREY:
        return
    beats = record["beats_grey"]
    settings = [s.replace("data.n_aux", "aux.n_aux") if other_aux else s for s in attack.budget]
    advice = f"raise {', '.join(settings)}" if settings else "give it a larger budget"
    text = (
        f"{attack.name}: {beats['mean'] * beats['n']:.0f} of {beats['n']} reconstructions beat a flat grey "
        f"image (SSIM): it learned nothing at this budget; {advice}"
    )
    log.warning("%s", text)
    record["warnings"].append(text)


def _summary(record: dict[str, Any], cfg: DictConfig) -> str:
    numbers = ", ".join(
        f"{n} {record[n]['mean']:.4f}" if record.get(n) else f"{n} n/a" for n in ("lpips", "ssim", "psnr")
    )
    verdict = record.get("verdict", "unscored")
    return (
        f"{record['attack']} {record['victim']} @ {record['cut']}: {numbers} ({verdict}) -> "
        f"{cfg.paths.output_dir}"
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


main = hydra_command("splitinv-run", "run", run, _summary, prepare_argv=expand_cut_sweep)
main.__doc__ = "Console entry point (`splitinv-run`)."
