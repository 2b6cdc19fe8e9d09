"""``splitinv-gan-invert``: invert a generator at one layer for a set of images, score, write the results.

The results folder has the layout of ``splitinv-run``'s (metrics.json last, samples.csv, the reconstruction
sheets reconstructions*.{png,pdf}, images.pt), with the generator in the ``victim`` column, the layer in
``cut`` and the method in ``attack``, so ``splitinv table`` and ``splitinv plot`` read GAN-layer sweeps like
any other:

    splitinv-gan-invert -m generator.weights=gan.pt layer=block1,block2,block3 method=hybrid
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch
from omegaconf import DictConfig, OmegaConf

from splitinv import metrics, results
from splitinv.config import config_hash, input_files, instantiate
from splitinv.errors import SplitinvError
from splitinv.gans.base import Generator
from splitinv.gans.invert import METHODS, invert_batches, perceptual_loss, state_error, train_encoder
from splitinv.task import hydra_command

log = logging.getLogger(__name__)


def _images(cfg: DictConfig, generator: Generator) -> tuple[torch.Tensor, dict[str, Any] | None, str]:
    """(target images in [0, 1], their true states at the layer or None, the data's name)."""
    if cfg.images == "generated":
        g = torch.Generator().manual_seed(int(cfg.seed) + 1)  # not the inversion's own seeds
        with torch.no_grad():
            z = generator.sample_latent(int(cfg.n_images), generator=g)
            state = generator.head(z, cfg.layer)
            return generator.tail(state, cfg.layer), state, f"{generator.name}-samples"
    if cfg.images != "real":
        raise SplitinvError(f"images={cfg.images!r}: use images=real (the data's) or images=generated.")
    datamodule = instantiate(cfg.data)
    datamodule.setup("predict")
    batches = [b[0] for b in datamodule.predict_dataloader()]
    return torch.cat(batches)[: int(cfg.n_images)], None, datamodule.name


def _cut_info(generator: Generator, layer: str) -> dict[str, Any]:
    """Where the layer sits among the generator's cut points (the depth axis of ``splitinv plot``)."""
    index, n = generator.check_point(layer), len(generator.cut_points())
    return {"name": layer, "index": index, "n_points": n, "relative_depth": index / max(1, n - 1)}


def gan_invert(cfg: DictConfig) -> dict[str, Any]:
    """Invert ``cfg.generator`` at ``cfg.layer`` with ``cfg.method``; write and return the record."""
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
        return done
    if cfg.method not in METHODS:
        raise SplitinvError(f"method={cfg.method!r}: choose one of {', '.join(METHODS)}.")
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    generator: Generator = instantiate(cfg.generator)
    generator.check_point(cfg.layer)
    images, true_state, data_name = _images(cfg, generator)
    trainer = instantiate(cfg.trainer, logger=False)
    encoder = None
    if cfg.method in ("encoder", "hybrid"):
        encoder = train_encoder(generator, cfg.layer, trainer, **cfg.encoder)
    generator.to(trainer.strategy.root_device)
    perceptual = float(cfg.optimize.perceptual_weight) if cfg.method != "encoder" else 0.0
    dropped = perceptual > 0 and perceptual_loss(perceptual, trainer.strategy.root_device) is None
    state, x_hat = invert_batches(
        generator,
        images,
        cfg.layer,
        batch_size=int(cfg.batch_size),
        method=cfg.method,
        encoder=encoder,
        seed=int(cfg.seed),
        progress=trainer.is_global_zero,  # the batches and each one's optimisation steps
        **cfg.optimize,
    )
    x = images.cpu()
    if x.shape[1:] != x_hat.shape[1:]:  # score at the generator's size and channels
        from splitinv.optim import fit_image

        x = fit_image(x, x_hat.shape[1:])
    per_image = {k: v.tolist() for k, v in metrics.score(x, x_hat, lpips=cfg.lpips).items() if v is not None}
    if true_state is not None:
        per_image.update({k: v.tolist() for k, v in state_error(state, true_state).items()})
    per_image["index"] = list(range(len(x)))
    record = results.build_record(
        per_image=per_image,
        victim=generator.name,
        weights=generator.weights,
        cut=cfg.layer,
        cut_spec=cfg.layer,
        attack=f"gan_inversion/{cfg.method}",
        data=data_name,
        seed=int(cfg.seed),
        knowledge={"access": "white-box", "aux_data": "none", "defense_aware": None},
        n_eval=len(x),
        config_hash=key,
        details={
            "generator": generator.describe(),
            "layer": {p.name: list(next(iter(p.state.values()))) for p in generator.describe_cut_points()}[
                cfg.layer
            ],
            "cut": _cut_info(generator, cfg.layer),
            "images": cfg.images,
            "encoder": OmegaConf.to_container(cfg.encoder) if encoder is not None else None,
            "optimize": OmegaConf.to_container(cfg.optimize) if cfg.method != "encoder" else None,
        },
        cost={"wall_time_s": time.perf_counter() - start, "device": str(trainer.strategy.root_device)},
        precision=str(trainer.precision) if encoder is not None else "32-true",  # the search runs in fp32
        warnings=(["generator has RANDOM weights"] if generator.weights == "random" else [])
        + ([] if per_image.get("lpips") else ["LPIPS unavailable (backbone weights not cached): null"])
        + (["perceptual term dropped (LPIPS-vgg weights not cached): pixel L1 only"] if dropped else []),
    )
    record["inputs"] = inputs  # the input files' digests: a changed file reruns the job
    if trainer.is_global_zero:
        results.write_run(
            out_dir,
            record,
            per_image,
            (x, x_hat),  # every image on the reconstruction sheets
            OmegaConf.to_yaml(cfg, resolve=True),
            extra_files={results.IMAGES_FILE: lambda path: results.save_images(path, x, x_hat)},
        )
    return record


def _summary(record: dict[str, Any], cfg: DictConfig) -> str:
    ssim, psnr = (record.get(m) or {"mean": float("nan")} for m in ("ssim", "psnr"))
    return (
        f"{record['victim']} @ {record['cut']} ({record['attack']}): SSIM {ssim['mean']:.3f}, "
        f"PSNR {psnr['mean']:.2f} dB -> {cfg.paths.output_dir}"
    )


main = hydra_command("splitinv-gan-invert", "gan_invert", gan_invert, _summary)
main.__doc__ = "Console entry point (`splitinv-gan-invert`)."
