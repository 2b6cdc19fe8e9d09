"""``splitinv-train-gan``: train the DCGAN pair on a datamodule, save a ``splitinv-gan/1`` checkpoint.

The loss is the non-saturating GAN loss of Goodfellow et al. with Adam (lr 2e-4, betas (0.5, 0.999)), the
DCGAN paper's settings. Training one GAN on very few images until it memorises them is how the audit's test
builds a GAN that leaks its training set.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from splitinv.config import instantiate
from splitinv.errors import SplitinvError
from splitinv.gans.dcgan import GAN_FORMAT, DCGANDiscriminator, DCGANGenerator
from splitinv.io import check_output_file, save_atomic
from splitinv.task import hydra_command
from splitinv.training import monitor

log = logging.getLogger(__name__)
CHECKPOINT_NAME = "gan.pt"


class GANModule(L.LightningModule):
    """Alternating D and G steps (manual optimisation) on images in [0, 1] from any splitinv datamodule."""

    def __init__(
        self,
        generator: DCGANGenerator,
        discriminator: DCGANDiscriminator,
        lr: float = 2e-4,
        betas: tuple[float, float] = (0.5, 0.999),
    ) -> None:
        super().__init__()
        self.generator, self.discriminator = generator, discriminator
        self.lr, self.betas = lr, tuple(betas)
        self.automatic_optimization = False

    def _d(self, images01: torch.Tensor) -> torch.Tensor:
        return self.discriminator(images01 * 2 - 1)

    def training_step(self, batch: Any, batch_idx: int) -> None:
        real = batch[0] if isinstance(batch, (list, tuple)) else batch["image"]
        opt_g, opt_d = self.optimizers()
        z = self.generator.sample_latent(real.shape[0], device=real.device)
        fake = self.generator(z)
        ones = torch.ones(real.shape[0], 1, device=real.device)
        zeros = torch.zeros_like(ones)
        loss_d = F.binary_cross_entropy_with_logits(self._d(real), ones) + F.binary_cross_entropy_with_logits(
            self._d(fake.detach()), zeros
        )
        opt_d.zero_grad()
        self.manual_backward(loss_d)
        opt_d.step()
        loss_g = F.binary_cross_entropy_with_logits(self._d(fake), ones)
        opt_g.zero_grad()
        self.manual_backward(loss_g)
        opt_g.step()
        # checked and logged every CHECK_EVERY steps (and at each epoch's end): no host sync per step
        watch = monitor(self, "GAN loss", f"lower lr ({self.lr}).", prog_bar=("loss_d", "loss_g"))
        watch.update({"loss_d": loss_d, "loss_g": loss_g}, self, batch_idx=batch_idx, batch_size=len(real))

    def configure_optimizers(self) -> Any:
        return (
            torch.optim.Adam(self.generator.parameters(), lr=self.lr, betas=self.betas),
            torch.optim.Adam(self.discriminator.parameters(), lr=self.lr, betas=self.betas),
        )


class SampleGrid(L.Callback):
    """At the end of every training epoch: the generator's images for the same ``n`` latents, drawn once from
    ``seed`` with their own ``torch.Generator`` (the training RNG stream is untouched), as an ``nrow``-wide
    grid in ``folder/epoch_001.png`` ... (a temporary file renamed into place), also logged to every
    WandbLogger (key ``samples``). The generator runs in eval mode under no_grad and gets its mode back."""

    def __init__(self, folder: str | Path, n: int = 64, nrow: int = 8, seed: int = 0, every: int = 1) -> None:
        self.folder, self.n, self.nrow, self.seed = Path(folder), int(n), int(nrow), int(seed)
        self.every = int(every)  # epochs between grids (and the last epoch's)
        self._latents: torch.Tensor | None = None

    def latents(self, generator: DCGANGenerator) -> torch.Tensor:
        """The fixed latents (on the CPU), drawn on first use."""
        if self._latents is None:
            rng = torch.Generator().manual_seed(self.seed)
            self._latents = generator.sample_latent(self.n, generator=rng, device="cpu")
        return self._latents

    def draw(self, generator: DCGANGenerator) -> torch.Tensor:
        """The grid of the generator's images for the fixed latents, (C, H, W) in [0, 1]."""
        from torchvision.utils import make_grid

        was_training = generator.training
        generator.eval()
        try:
            with torch.no_grad():
                z = self.latents(generator).to(next(generator.parameters()).device)
                images = generator(z).float().cpu().clamp(0, 1)
        finally:
            generator.train(was_training)
        return make_grid(images, nrow=self.nrow, padding=2, pad_value=1.0)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        last = epoch == trainer.max_epochs or (0 < (trainer.max_steps or -1) <= trainer.global_step)
        if not trainer.is_global_zero or not (epoch % self.every == 0 or last):
            return
        import os
        import uuid

        from lightning.pytorch.loggers import WandbLogger
        from torchvision.utils import save_image

        path = self.folder / f"epoch_{epoch:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}-{uuid.uuid4().hex[:8]}.tmp")
        try:
            save_image(self.draw(pl_module.generator), tmp, format="png")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                caption = [f"epoch {epoch}: {self.n} fixed latents"]
                logger.log_image(key="samples", images=[str(path)], step=trainer.global_step, caption=caption)


def checkpoint(generator: DCGANGenerator, discriminator: DCGANDiscriminator, **meta: Any) -> dict[str, Any]:
    """The dict that ``build_generator('dcgan', weights=...)`` and ``dcgan_discriminator`` load back."""
    return {
        "format": GAN_FORMAT,
        "generator_config": generator.config(),
        "generator": generator.state_dict(),
        "discriminator_config": discriminator.config(),
        "discriminator": discriminator.state_dict(),
        **meta,
    }


def save_gan(
    generator: DCGANGenerator, discriminator: DCGANDiscriminator, path: str | Path, **meta: Any
) -> Path:
    """Write the checkpoint atomically (a temporary file renamed into place)."""
    return save_atomic(checkpoint(generator, discriminator, **meta), path)


def train_gan(cfg: DictConfig) -> dict[str, Any]:
    """Train a DCGAN on ``cfg.data``'s auxiliary (training) split and save it; returns where and on what."""
    check_output_file("checkpoint", cfg.get("checkpoint"))  # before any training
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    generator = DCGANGenerator(
        nz=cfg.gan.nz, ngf=cfg.gan.ngf, channels=datamodule.channels, image_size=datamodule.image_size
    )
    discriminator = DCGANDiscriminator(
        ndf=cfg.gan.ndf, channels=datamodule.channels, image_size=datamodule.image_size
    )
    module = GANModule(generator, discriminator, lr=cfg.gan.lr, betas=tuple(cfg.gan.betas))
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    trainer: L.Trainer = instantiate(cfg.trainer, logger=logger)
    every = int(cfg.get("samples_every", 1))
    if every < 0:
        raise SplitinvError(f"samples_every={every}: give the epochs between sample grids (0: none).")
    if every:
        trainer.callbacks.append(
            SampleGrid(Path(cfg.paths.output_dir) / "samples", seed=int(cfg.seed), every=every)
        )
    trainer.fit(module, train_dataloaders=datamodule.train_dataloader())
    out = Path(cfg.checkpoint or Path(cfg.paths.output_dir) / CHECKPOINT_NAME)
    data = datamodule.describe()
    if trainer.is_global_zero:
        save_gan(
            generator.cpu().eval(), discriminator.cpu().eval(), out, data=data, steps=trainer.global_step
        )
    return {"checkpoint": str(out), "steps": int(trainer.global_step), "data": data}


def _summary(result: dict[str, Any], cfg: DictConfig) -> str:
    return f"DCGAN on {result['data'].get('name')} ({result['steps']} steps) -> {result['checkpoint']}"


main = hydra_command("splitinv-train-gan", "train_gan", train_gan, _summary)
main.__doc__ = "Console entry point (`splitinv-train-gan`)."
