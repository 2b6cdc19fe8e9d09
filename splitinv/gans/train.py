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
from splitinv.gans.dcgan import GAN_FORMAT, DCGANDiscriminator, DCGANGenerator
from splitinv.io import save_atomic
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
