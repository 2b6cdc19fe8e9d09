"""DCI (divide-and-conquer inversion): data-free, one inverter per block, cycle-consistency, reuse.

One small victim (timm's tiny test_resnet, with a ResNet's stage names) is trained for a few SGD steps once
per module; one DCI attack is fitted on it at ``layer1`` with a datamodule whose auxiliary images raise on
access.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import Dataset

from splitinv import build_victim, metrics
from splitinv.attacks.base import AttackContext
from splitinv.attacks.dci import (
    DCIAttack,
    DCIModule,
    InverterChain,
    build_blocks,
    chain_points,
    load_chain,
    synthesize,
)
from splitinv.cut import cut
from splitinv.data import FashionMNISTDataModule
from splitinv.errors import SplitinvError
from splitinv.split import Split, split

SHAPE = (3, 32, 32)
# CPU-sized settings for the tests (the config defaults are the published-style ones)
SMALL: dict[str, Any] = {
    "synth_images": 64,
    "synth_batch": 64,
    "synth_iterations": 60,
    "batch_size": 16,
    "finetune_epochs": 6,
    "width": 32,
    "tv_weight": 3e-3,
}
EPOCHS = 24


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


class RaisingImages(Dataset):
    """An auxiliary set that fails the test if any image is read from it."""

    def __init__(self, n: int) -> None:
        self.n, self.reads = n, 0

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> Any:
        self.reads += 1
        raise AssertionError(f"DCI read real auxiliary image {index}: it must be data-free")


class NoAuxData(FashionMNISTDataModule):
    """The vendored Fashion-MNIST evaluation images, with auxiliary data that raises on access."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(vendored=True, image_size=32, channels=3, **kwargs)
        self.raising = RaisingImages(6000)

    def aux_dataset(self) -> Dataset:
        return self.raising

    def train_dataloader(self) -> Any:
        raise AssertionError("DCI asked for the auxiliary dataloader: it must be data-free")


def _context(head: nn.Module, trainer: L.Trainer, victim: nn.Module | None = None) -> AttackContext:
    """What a run gives DCI (white-box, data-free) on a split at ``head``."""
    return AttackContext.for_attack(DCIAttack(), Split(head), SHAPE, trainer=trainer, victim=victim)


def _trainer(epochs: int = EPOCHS, logger: Any = False) -> L.Trainer:
    return L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=logger,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )


@pytest.fixture(scope="module")
def victim() -> nn.Module:
    """timm's test_resnet at 32 px, trained for 120 SGD steps on the vendored Fashion-MNIST subset."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_victim("test_resnet", image_size=32, num_classes=10)
    data = FashionMNISTDataModule(vendored=True, image_size=32, channels=3, batch_size=32, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    model.train()
    steps = 0
    while steps < 120:
        for x, y, _ in data.train_dataloader():
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
            if steps == 120:
                break
    return model.eval()


@pytest.fixture(scope="module")
def eval_images() -> torch.Tensor:
    data = FashionMNISTDataModule(vendored=True, image_size=32, channels=3, n_eval=16, seed=0)
    return torch.stack([data.eval_dataset()[i][0] for i in range(16)])


@pytest.fixture(scope="module")
def fitted(victim: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """DCI at layer1, fitted with auxiliary data that raises on access, logging to a CSV file."""
    head, _ = cut(victim, "layer1")
    data = NoAuxData(n_eval=16, seed=0)
    attack = DCIAttack(**SMALL, seed=0)
    logs = tmp_path_factory.mktemp("dci_logs")
    logger = CSVLogger(logs, name="dci")
    start = time.perf_counter()
    # for_attack gives a data-free attack no auxiliary data, whatever the caller has
    context = AttackContext.for_attack(attack, Split(head), SHAPE, data=data, trainer=_trainer(logger=logger))
    stats = attack.fit(context)
    return {
        "attack": attack,
        "stats": stats,
        "head": head,
        "data": data,
        "logs": Path(logger.log_dir),
        "seconds": time.perf_counter() - start,
    }


def test_fit_reads_no_real_image(fitted: dict[str, Any], victim: nn.Module) -> None:
    attack, data = fitted["attack"], fitted["data"]
    assert data.raising.reads == 0
    assert attack.knowledge.as_dict() == {"access": "white-box", "aux_data": "none", "defense_aware": True}
    assert attack.synthetic is not None and attack.synthetic.shape == (64, *SHAPE)
    # the evaluation images (scoring only) still reach the attack through the head, as in a run
    from splitinv.evaluate import evaluate

    ev = evaluate(split(victim, "layer1"), attack, data.predict_dataloader(), progress=False)
    assert ev.images == 16 and data.raising.reads == 0


def test_reconstructions_beat_a_constant_image(fitted: dict[str, Any], eval_images: torch.Tensor) -> None:
    attack, head = fitted["attack"], fitted["head"]
    with torch.no_grad():
        x_hat = attack.invert(head(eval_images)).images
    assert x_hat.shape == eval_images.shape and 0 <= x_hat.min() and x_hat.max() <= 1
    ssim = metrics.ssim(eval_images, x_hat).mean().item()
    constant = metrics.ssim(eval_images, torch.full_like(eval_images, 0.5)).mean().item()
    assert ssim > constant + 0.2, (ssim, constant)
    assert (
        metrics.psnr(eval_images, x_hat).mean()
        > metrics.psnr(eval_images, torch.full_like(x_hat, 0.5)).mean()
    )


def test_one_inverter_per_block_and_the_cycle_term_is_used(fitted: dict[str, Any]) -> None:
    attack, head = fitted["attack"], fitted["head"]
    # test_resnet's head at layer1: stem (16x16, ends at act1) | maxpool + layer1 (8x8)
    assert attack.describe()["chain"] == ["act1"]
    assert len(attack.chain.inverters) == 2 and attack.describe()["n_inverters"] == 2
    assert attack.chain.shapes == [SHAPE, (32, 16, 16), (32, 8, 8)]
    # every loss component was logged, block-wise and end to end
    losses = fitted["stats"]["losses"]
    assert {"rec/0", "cycle/0", "rec/1", "cycle/1", "finetune/rec", "finetune/cycle", "loss"} <= set(losses)
    logged = (fitted["logs"] / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/cycle/0_epoch", "train/finetune/cycle_epoch", "synth/bn"} <= set(logged)
    # the cycle term is in the loss and in the gradient: loss = rec + w * cycle, and w changes the gradient
    blocks = build_blocks(head, attack.points)
    x = attack.synthetic[:8]
    grads = {}
    for w in (0.0, 1.0):
        module = DCIModule(blocks, attack.chain, cycle_weight=w)
        attack.chain.zero_grad()
        terms = module.losses(x, finetune=False)
        expected = sum(terms[f"rec/{k}"] + w * terms[f"cycle/{k}"] for k in range(2))
        assert torch.allclose(terms["loss"], expected)
        assert terms["cycle/0"] > 0
        terms["loss"].backward()
        grads[w] = attack.chain.inverters[0].out.weight.grad.clone()
    assert not torch.allclose(grads[0.0], grads[1.0])
    attack.chain.zero_grad()


def test_save_and_load_give_identical_outputs(
    fitted: dict[str, Any], victim: nn.Module, tmp_path: Path
) -> None:
    attack, head = fitted["attack"], fitted["head"]
    path = tmp_path / "dci.pt"
    attack.save(path)
    obj = torch.load(path, weights_only=True)  # plain tensors and lists: no pickled code
    assert obj["format"] == "splitinv-dci/1" and obj["shapes"][0] == list(SHAPE)
    chain, meta = load_chain(path)
    z = head(torch.rand(4, *SHAPE))
    with torch.no_grad():
        assert torch.equal(chain(z).clamp(0, 1), attack.invert(z).images)
    reused = DCIAttack(checkpoint=str(path))
    reused.fit(_context(head, trainer=_trainer()))  # no training: the checkpoint is the attack
    assert torch.equal(reused.invert(z).images, attack.invert(z).images) and reused.points == meta["points"]
    with pytest.raises(SplitinvError, match="inverts .* features .* this head gives"):
        DCIAttack(checkpoint=str(path)).fit(_context(cut(victim, "act1")[0], trainer=_trainer()))
    with pytest.raises(SplitinvError, match=r"^DCI checkpoint .*nope.pt does not exist: train one"):
        DCIAttack(checkpoint=str(tmp_path / "nope.pt")).fit(_context(head, trainer=_trainer()))


def test_same_seed_same_reconstructions(victim: nn.Module) -> None:
    head, _ = cut(victim, "layer1")
    tiny = {**SMALL, "synth_images": 16, "synth_batch": 16, "synth_iterations": 3, "finetune_epochs": 1}
    outs = []
    for seed in (3, 3, 4):
        attack = DCIAttack(**tiny, seed=seed)
        attack.fit(_context(head, trainer=_trainer(epochs=2)))
        with torch.no_grad():
            outs.append(
                attack.invert(head(torch.rand(4, *SHAPE, generator=torch.Generator().manual_seed(0)))).images
            )
    assert torch.equal(outs[0], outs[1])
    assert not torch.equal(outs[0], outs[2])


def test_the_full_victim_adds_its_bn_layers_and_cross_entropy(victim: nn.Module) -> None:
    head, _ = cut(victim, "layer1")
    tiny = {**SMALL, "synth_images": 8, "synth_batch": 8, "synth_iterations": 2, "finetune_epochs": 0}
    attack = DCIAttack(**tiny)
    stats = attack.fit(_context(head, trainer=_trainer(epochs=1), victim=victim))
    assert attack.describe()["synthesis_model"] == "victim" and stats["synth_ce"] > 0
    head_only = DCIAttack(**tiny)
    stats = head_only.fit(_context(head, trainer=_trainer(epochs=1)))
    assert head_only.describe()["synthesis_model"] == "head" and stats["synth_ce"] == 0


def test_config_defaults_are_the_published_style_settings() -> None:
    from hydra.utils import instantiate

    from splitinv.config import compose

    attack = instantiate(compose(["attack=dci", "seed=5"]).attack)
    assert isinstance(attack, DCIAttack) and attack.name == "dci"
    described = attack.describe()
    assert (described["access"], described["aux_data"]) == ("white-box", "none")
    assert described["bn_weight"] == 0.01 and described["synth_iterations"] == 2000  # DeepInversion
    assert described["blocks"] == "stages" and described["seed"] == 5
    listed = instantiate(compose(["attack=dci", "attack.blocks=[relu,layer1]"]).attack)
    assert listed.describe()["blocks"] == ["relu", "layer1"]


def test_chain_points_follow_the_victims_cut_points() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        resnet = build_victim("resnet18", image_size=32, num_classes=10).eval()
    head, _ = cut(resnet, "layer3")
    assert chain_points(head, "stages", 32) == ["body.relu", "body.layer1", "body.layer2"]
    assert chain_points(head, "single", 32) == []
    assert chain_points(head, ["layer2", "relu"], 32) == ["body.relu", "body.layer2"]
    assert chain_points(head, 3, 32) == ["body.relu", "body.layer1", "body.layer3.0"]
    blocks = build_blocks(head, chain_points(head, "stages", 32))
    x = torch.rand(2, *SHAPE)
    h = x
    for block in blocks:
        h = block(h)
    assert len(blocks) == 4 and torch.allclose(h, head(x), atol=1e-5)
    for spec, message in (
        ("stagez", r"^unknown attack.blocks 'stagez': use stages, single"),
        (["layer9"], r"^attack.blocks names 'layer9'.*valid points before the cut: conv1, bn1, relu"),
        (["layer3"], r"attack.blocks names 'layer3'"),  # the cut point itself is not inside the head
        (0, r"^unknown attack.blocks 0"),
    ):
        with pytest.raises(SplitinvError, match=message) as err:
            chain_points(head, spec, 32)
        assert "\n" not in str(err.value)


def test_bad_settings_and_nan_losses_are_one_line_errors(victim: nn.Module) -> None:
    head, _ = cut(victim, "layer1")
    with pytest.raises(SplitinvError, match=r"^attack.synth_images must be an integer >= 1"):
        DCIAttack(synth_images=0)
    with pytest.raises(SplitinvError, match=r"^unknown attack.blocks 'stagez': use stages, single"):
        DCIAttack(blocks="stagez")
    with pytest.raises(SplitinvError, match="finetune_epochs=2 leaves no block-wise epochs"):
        DCIAttack(**{**SMALL, "synth_iterations": 0, "finetune_epochs": 2}).fit(
            _context(head, trainer=_trainer(2))
        )

    class NoBN(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    with pytest.raises(SplitinvError, match="no BatchNorm2d layer"):
        synthesize(NoBN(), 2, SHAPE, iterations=1)

    class NaNHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bn = nn.BatchNorm2d(3).eval()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.bn(x * float("nan"))

    with pytest.raises(
        SplitinvError, match=r"synthesis loss became nan at iteration 0: lower attack.synth_lr"
    ):
        synthesize(NaNHead(), 2, SHAPE, iterations=1)
    chain = InverterChain([SHAPE, SHAPE])
    module = DCIModule([NaNHead()], chain)
    with pytest.raises(SplitinvError, match="inverter loss became nan.*lower attack.lr"):
        module.training_step((torch.rand(2, *SHAPE),), 0)


def test_dci_runs_end_to_end_from_the_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from splitinv.config import compose
    from splitinv.data import ImageDataModule
    from splitinv.run import run

    raising = RaisingImages(6000)
    monkeypatch.setattr(ImageDataModule, "aux_dataset", lambda self: raising)
    out = tmp_path / "run"
    overrides = [
        "victim=resnet18",
        "victim.image_size=32",
        "data=fashion_mnist_mini",
        "data.n_eval=8",
        "cut=layer1",
        "attack=dci",
        "logger=csv",
        "attack.synth_images=16",
        "attack.synth_batch=16",
        "attack.synth_iterations=2",
        "attack.batch_size=16",
        "attack.finetune_epochs=1",
        "trainer.max_epochs=2",
        "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false",
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        record = run(compose(overrides, output_dir=out))
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["status"] == "ok" and saved["attack"] == "dci" and record["ssim"]["n"] == 8
    assert (saved["access"], saved["aux_data"]) == ("white-box", "none")
    described = saved["details"]["attack"]
    assert described["jitter_px"] == 4  # 30 px at 224 px, scaled to 32 px
    assert (
        described["chain"] == ["relu"] and described["synth_images"] == 16 and described["blocks"] == "stages"
    )
    assert raising.reads == 0 and described["inverter_data"] == "synthetic"
    chain, _ = load_chain(out / "decoder.pt")
    assert chain.feature_shape == (64, 8, 8)


class CountingImages(Dataset):
    """A small auxiliary set of known images that counts its reads."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images, self.reads = images, 0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Any:
        self.reads += 1
        return self.images[index], 0, index


class KnownAux:
    """A datamodule stand-in whose auxiliary data is ``CountingImages``."""

    def __init__(self, images: torch.Tensor) -> None:
        self.counting = CountingImages(images)

    def aux_dataset(self) -> Dataset:
        return self.counting


def test_inverter_data_aux_trains_on_the_auxiliary_images(victim: nn.Module) -> None:
    head, _ = cut(victim, "layer1")
    tiny = {**SMALL, "synth_images": 12, "synth_batch": 12, "synth_iterations": 2, "finetune_epochs": 0}
    real = torch.rand(20, *SHAPE, generator=torch.Generator().manual_seed(3))
    data = KnownAux(real)
    synthetic = DCIAttack(**tiny)
    context = AttackContext.for_attack(synthetic, Split(head), SHAPE, data=data, trainer=_trainer(1))
    assert (
        context.data is None and synthetic.knowledge.aux_data == "none"
    )  # data-free: the run's data withheld
    synthetic.fit(context)
    assert data.counting.reads == 0 and synthetic.describe()["inverter_data"] == "synthetic"
    aux = DCIAttack(**tiny, inverter_data="aux")
    assert aux.knowledge.aux_data == "same" and aux.uses_aux_data
    context = AttackContext.for_attack(aux, Split(head), SHAPE, data=data, trainer=_trainer(1))
    stats = aux.fit(context)
    assert data.counting.reads == 12 and stats["synth_images"] == 12
    assert aux.synthetic is not None  # the training images are 12 distinct images of the auxiliary set
    match = (aux.synthetic[:, None] == real[None]).flatten(2).all(2)
    assert match.sum(1).eq(1).all() and match.any(0).sum() == 12
    assert aux.describe()["inverter_data"] == "aux" and aux.describe()["synthesis_model"] is None
    with pytest.raises(SplitinvError, match="inverter_data"):
        DCIAttack(inverter_data="real")
    without = DCIAttack(**tiny, inverter_data="aux")
    with pytest.raises(SplitinvError, match="auxiliary data"):
        without.fit(AttackContext.for_attack(without, Split(head), SHAPE, trainer=_trainer(1)))


def test_inverter_data_aux_is_recorded_by_a_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from splitinv.config import compose
    from splitinv.data import ImageDataModule
    from splitinv.run import run

    counting = CountingImages(torch.rand(32, *SHAPE, generator=torch.Generator().manual_seed(4)))
    monkeypatch.setattr(ImageDataModule, "aux_dataset", lambda self: counting)
    out = tmp_path / "run"
    overrides = [
        "victim=resnet18",
        "victim.image_size=32",
        "data=fashion_mnist_mini",
        "data.n_eval=8",
        "cut=layer1",
        "attack=dci",
        "attack.inverter_data=aux",
        "attack.synth_images=16",
        "attack.batch_size=16",
        "attack.finetune_epochs=0",
        "trainer.max_epochs=1",
        "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false",
        "baselines=false",
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run(compose(overrides, output_dir=out))
    saved = json.loads((out / "metrics.json").read_text())
    assert (saved["access"], saved["aux_data"]) == ("white-box", "same")
    assert saved["details"]["attack"]["inverter_data"] == "aux" and counting.reads >= 16
