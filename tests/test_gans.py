"""The DCGAN that splitinv trains, discriminators as victims, GAN inversion and the GAN-prior attack."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from splitinv import build_victim, cut, cut_points, metrics
from splitinv.attacks import AttackContext, GANPriorAttack
from splitinv.config import compose
from splitinv.errors import SplitinvError
from splitinv.gans import build_generator
from splitinv.gans.dcgan import DCGANGenerator
from splitinv.gans.invert import LayerEncoder, invert, state_error, train_encoder
from splitinv.gans.run import gan_invert
from splitinv.gans.train import train_gan
from splitinv.report import collect, table
from splitinv.run import run
from splitinv.split import Split

ASSET = Path(__file__).parent / "assets" / "dcgan_fashion_mnist_32.pt"
pytestmark = pytest.mark.usefixtures("one_thread")


def _quiet_trainer(steps: int):  # a lightning Trainer
    import lightning.pytorch as L

    return L.Trainer(
        max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_train_batches=steps,
    )  # fmt: skip


@pytest.fixture(scope="module")
def gan_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small DCGAN trained by `splitinv-train-gan`'s task function for a few steps."""
    out = tmp_path_factory.mktemp("gan")
    cfg = compose(
        [
            "data.n_aux=64", "data.channels=1", "gan.nz=16", "gan.ngf=8", "gan.ndf=8", "data.batch_size=16",
            "trainer.max_epochs=2", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
            "logger=csv",
        ],
        output_dir=out,
        config_name="train_gan",
    )  # fmt: skip
    result = train_gan(cfg)
    assert result["steps"] == 2 * 2 * 64 // 16  # G and D steps both count as optimizer steps
    return Path(result["checkpoint"])


@pytest.fixture(scope="module")
def generator() -> DCGANGenerator:
    """The tiny DCGAN trained on Fashion-MNIST by experiments/scripts/make_test_gan.py (in tests/assets):
    a random generator's images are near-constant, so inverting them would test nothing."""
    return build_generator("dcgan", weights=ASSET).requires_grad_(False)


# ----------------------------------------------------------------------------------- DCGAN and its files


def test_trained_gan_loads_back_as_generator_and_discriminator_victim(gan_file: Path) -> None:
    g = build_generator("dcgan", weights=gan_file)
    assert (g.nz, g.channels, g.image_size, g.weights) == (16, 1, 32, str(gan_file))
    z = g.sample_latent(4, generator=torch.Generator().manual_seed(0))
    x = g(z)
    assert x.shape == (4, 1, 32, 32) and 0 <= float(x.min()) and float(x.max()) <= 1
    ckpt = torch.load(gan_file, weights_only=True)
    fresh = DCGANGenerator(**ckpt["generator_config"])
    fresh.load_state_dict(ckpt["generator"])
    torch.testing.assert_close(fresh.eval()(z), x)  # the weights are the trained ones, not a re-init
    victim = build_victim("dcgan_discriminator", weights=gan_file)
    assert victim.describe()["weights"] == str(gan_file) and victim.num_classes == 1
    assert victim(x).shape == (4, 1)
    for point in cut_points(victim):  # a discriminator cuts like any classifier
        head, tail = cut(victim, point)
        torch.testing.assert_close(tail(head(x)), victim(x), atol=1e-5, rtol=1e-5)


def test_gan_file_errors_are_one_line(tmp_path: Path, gan_file: Path) -> None:
    torch.save({"format": "something-else"}, tmp_path / "other.pt")
    torch.save(torch.nn.Linear(2, 2).state_dict(), tmp_path / "plain.pt")
    for path, message in (
        (tmp_path / "missing.pt", "do not exist"),
        (tmp_path / "other.pt", "not a DCGAN checkpoint"),
        (tmp_path / "plain.pt", "not a DCGAN checkpoint"),
    ):
        with pytest.raises(SplitinvError, match=message) as err:
            build_generator("dcgan", weights=path)
        assert "\n" not in str(err.value)
    ckpt = torch.load(gan_file, weights_only=True)
    ckpt["generator"].pop("net.block1.0.weight")
    torch.save(ckpt, tmp_path / "broken.pt")
    with pytest.raises(SplitinvError, match="missing 1"):
        build_generator("dcgan", weights=tmp_path / "broken.pt")
    with pytest.raises(SplitinvError, match="power of two"):
        DCGANGenerator(image_size=48)


def test_random_generator_warns() -> None:
    with pytest.warns(UserWarning, match="RANDOM weights"):
        build_generator("dcgan")


# ----------------------------------------------------------------------------------------- GAN inversion


def test_optimisation_recovers_generated_images_and_their_latent(generator: DCGANGenerator) -> None:
    z = generator.sample_latent(4, generator=torch.Generator().manual_seed(1))
    x = generator(z)
    start = generator.sample_latent(4, generator=torch.Generator().manual_seed(2))
    start_err = state_error(generator.head(start, "latent"), {"h": z[:, :, None, None]})["state_error_h"]
    state, x_hat = invert(generator, x, "latent", method="optimize", steps=300, lr=0.05, perceptual_weight=0)
    err = state_error(state, generator.head(z, "latent"))["state_error_h"]
    assert float(err.median()) < 0.1 * float(start_err.median()), (err, start_err)
    assert float(metrics.ssim(x, x_hat).mean()) > 0.9
    assert float(metrics.ssim(x, generator(start)).mean()) < 0.6  # the start was far from the target


def test_deeper_layers_fit_real_images_better(generator: DCGANGenerator) -> None:
    """The trade-off a layer sweep shows: more of the generator cut away, more freedom, higher fidelity."""
    from splitinv.data import FashionMNISTDataModule

    dm = FashionMNISTDataModule(vendored=True, image_size=32, channels=1, n_eval=4, augment=False)
    x = torch.stack([dm.eval_dataset()[i][0] for i in range(4)])
    scores = {}
    for layer in ("latent", "block3"):
        _, x_hat = invert(generator, x, layer, method="optimize", steps=150, lr=0.05, perceptual_weight=0)
        scores[layer] = float(metrics.ssim(x, x_hat).mean())
    assert scores["block3"] > scores["latent"] + 0.2, scores


def test_encoder_predicts_the_layer_state_and_hybrid_refines_it(generator: DCGANGenerator) -> None:
    torch.manual_seed(0)
    encoder = train_encoder(generator, "block1", _quiet_trainer(150), steps=150, batch_size=32, lr=2e-3)
    z = generator.sample_latent(8, generator=torch.Generator().manual_seed(3))
    true = generator.head(z, "block1")
    x = generator.tail(true, "block1").detach()
    enc_state, enc_x = invert(generator, x, "block1", method="encoder", encoder=encoder)
    _, hyb_x = invert(
        generator, x, "block1", method="hybrid", encoder=encoder, steps=100, lr=0.02, perceptual_weight=0
    )
    prior = generator.head(generator.sample_latent(8, generator=torch.Generator().manual_seed(4)), "block1")
    assert (
        state_error(enc_state, true)["state_error_h"].mean()
        < state_error(prior, true)["state_error_h"].mean()
    )
    assert (hyb_x - x).abs().mean() < (enc_x - x).abs().mean()  # the optimisation improves on the encoder


def test_layer_encoder_shapes_for_maps_and_vectors() -> None:
    enc = LayerEncoder((3, 32, 32), {"h": (64, 8, 8), "cond": (20,), "v": (16, 1, 1)})
    out = enc(torch.rand(2, 3, 32, 32))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "h": (2, 64, 8, 8),
        "cond": (2, 20),
        "v": (2, 16, 1, 1),
    }


def test_inversion_bad_inputs(generator: DCGANGenerator) -> None:
    x = torch.rand(2, 1, 32, 32)
    with pytest.raises(SplitinvError, match="not a cut point"):
        invert(generator, x, "block9", method="optimize")
    with pytest.raises(SplitinvError, match="needs a trained encoder"):
        invert(generator, x, "block1", method="hybrid")
    with pytest.raises(SplitinvError, match="unknown GAN inversion method"):
        invert(generator, x, "block1", method="magic")
    with pytest.raises(SplitinvError, match="NaN"):
        invert(generator, x * float("nan"), "block1", method="optimize")


def test_gan_invert_layer_sweep_writes_results_the_table_reads(gan_file: Path, tmp_path: Path) -> None:
    for layer in ("latent", "block2"):
        cfg = compose(
            [
                f"generator.weights={gan_file}", f"layer={layer}", "method=hybrid", "images=generated",
                "n_images=4", "encoder.steps=20", "optimize.steps=20", "lpips=off",
                "trainer.accelerator=cpu",
            ],
            output_dir=tmp_path / layer,
            config_name="gan_invert",
        )  # fmt: skip
        record = gan_invert(cfg)
        assert (
            record["victim"] == "dcgan"
            and record["cut"] == layer
            and record["attack"] == "gan_inversion/hybrid"
        )
        assert record["state_error_h"]["n"] == 4 and record["ssim"]["n"] == 4
        assert record["details"]["cut"]["relative_depth"] == {"latent": 0.0, "block2": 0.5}[layer]
        saved = json.loads((tmp_path / layer / "metrics.json").read_text())
        assert saved["contract"]["state_error"].startswith("GAN inversion")
    text = table(collect(tmp_path), rows="cut", cols="victim", metrics=["ssim", "state_error_h"])
    assert "latent" in text and "block2" in text and "state_error_h" in text
    cfg = compose([f"generator.weights={gan_file}", "images=real", "method=encoder", "layer=block1",
                   "n_images=4", "encoder.steps=5", "lpips=off", "trainer.accelerator=cpu"],
                  output_dir=tmp_path / "real", config_name="gan_invert")  # fmt: skip
    record = gan_invert(cfg)  # real 3-channel images, resized and averaged to the GAN's 1 channel
    assert record["data"] == "fashion_mnist" and "state_error_h" not in record


# ------------------------------------------------------------------------------------- GAN-prior attack


@pytest.fixture(scope="module")
def head_and_images(generator: DCGANGenerator):
    """A (random-weight, seeded) ResNet head at layer1 and 4 images in the trained generator's range."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        victim = build_victim("resnet10t", None, num_classes=10, image_size=32)
    head, _ = cut(victim, "layer1")
    g = generator
    with torch.no_grad():
        x = g(g.sample_latent(4, generator=torch.Generator().manual_seed(5))).expand(-1, 3, -1, -1)
    return victim, head, g, x


@pytest.mark.parametrize("search", ["z", "block2"])
def test_gan_prior_attack_recovers_images_in_the_generators_range(head_and_images, search: str) -> None:
    victim, head, g, x = head_and_images
    attack = GANPriorAttack(g, search=search, steps=150, lr=0.05, restarts=3, progress=False)
    attack.fit(AttackContext.for_attack(attack, Split(head), (3, 32, 32), victim=victim))
    with torch.no_grad():
        features = head(x)
    x_hat, losses = attack.invert(features, index=torch.arange(4))
    assert x_hat.shape == x.shape and losses is not None and losses.shape == (4,)
    baseline = g(g.sample_latent(4, generator=torch.Generator().manual_seed(9))).expand(-1, 3, -1, -1)
    ssim_hat, ssim_base = float(metrics.ssim(x, x_hat).mean()), float(metrics.ssim(x, baseline).mean())
    assert ssim_hat > ssim_base + 0.2, (ssim_hat, ssim_base)
    again = attack.invert(features, index=torch.arange(4)).images
    torch.testing.assert_close(again, x_hat)  # seeded per image: the same starts, the same result
    assert attack.describe()["search"] == search and attack.steps_per_image == 450


def test_gan_prior_decoder_init_starts_closer(head_and_images) -> None:
    victim, head, g, x = head_and_images
    with torch.no_grad():
        features = head(x)
    losses = {}
    for init in ("prior", "decoder"):
        attack = GANPriorAttack(
            g, steps=1, lr=1e-6, restarts=1, init=init, init_samples=512, init_epochs=15, progress=False
        )
        attack.fit(AttackContext.for_attack(attack, Split(head), (3, 32, 32), victim=victim))
        losses[init] = float(attack.invert(features, index=torch.arange(4)).losses.mean())
    assert losses["decoder"] < losses["prior"], losses


def test_gan_prior_bad_settings(head_and_images) -> None:
    _, _, g, _ = head_and_images
    assert GANPriorAttack(g, search="latent").start(torch.zeros(1, g.nz)).keys() == {"z"}  # = search z
    with pytest.raises(SplitinvError, match="not a cut point"):
        GANPriorAttack(g, search="w+")
    with pytest.raises(SplitinvError, match="restarts"):
        GANPriorAttack(g, restarts=0)
    with pytest.raises(SplitinvError, match="must be a splitinv generator"):
        GANPriorAttack(torch.nn.Linear(2, 2))  # type: ignore[arg-type]


def test_gan_prior_through_splitinv_run(gan_file: Path, tmp_path: Path) -> None:
    record = run(
        compose(
            [
                "victim=resnet10t", "victim.image_size=32", "data=fashion_mnist_mini", "data.n_eval=2",
                "attack=gan_prior", f"attack.generator.weights={gan_file}", "attack.steps=5",
                "attack.restarts=2", "attack.progress=false", "cut=layer1", "logger=csv", "lpips=off",
                "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
            ],
            output_dir=tmp_path,
        )
    )  # fmt: skip
    assert record["attack"] == "gan_prior" and record["ssim"]["n"] == 2
    assert record["details"]["attack"]["generator"]["weights"] == str(gan_file)
    assert record["cost"]["steps_per_image"] == 10 and record["access"] == "white-box"


def test_readme_generator_adapter_example_runs() -> None:
    """docs/gans.md's "your own generator" example is code that works, not prose."""
    text = (Path(__file__).parents[1] / "docs" / "gans.md").read_text()
    start = text.index("```python", text.index("**Your own generator**")) + len("```python")
    code = text[start : text.index("```", start)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the example builds a random generator on purpose
        exec(compile(code, "docs/gans.md", "exec"), {})
    g = build_generator("mygan")
    assert (
        g.cut_points() == ["latent", "block1", "block2", "output"] and g(g.sample_latent(1)).shape[-1] == 16
    )
