"""Defenses trained with the network (NoPeek, adversarial training against a proxy decoder, a learned
bottleneck), their fine-tuning command `splitinv-train-defense`, and the checkpoints that carry them."""

from __future__ import annotations

import copy
import logging
import os
import subprocess
import warnings
from pathlib import Path

import lightning.pytorch as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra import compose as hydra_compose
from hydra import initialize_config_module
from torch.utils.data import DataLoader, TensorDataset

from splitinv import build_victim
from splitinv.data import FashionMNISTDataModule
from splitinv.defenses import AdversarialDecoder, Bottleneck, NoDefense, NoPeek, distance_correlation
from splitinv.defenses.checkpoint import load_defense
from splitinv.defenses.train import DefenseModule, leakage, train_defense
from splitinv.errors import SplitinvError
from splitinv.split import split
from splitinv.train_victim import train_victim

pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------------------- distance correlation


def _dcor_reference(x: np.ndarray, y: np.ndarray) -> float:
    """Székely, Rizzo & Bakirov (2007), straight from the definition (loops over pairs, no shortcuts)."""
    x, y = x.reshape(len(x), -1).astype(np.float64), y.reshape(len(y), -1).astype(np.float64)
    n = len(x)

    def centred(z: np.ndarray) -> np.ndarray:
        a = np.array([[np.sqrt(np.sum((z[j] - z[k]) ** 2)) for k in range(n)] for j in range(n)])
        return a - a.mean(axis=0, keepdims=True) - a.mean(axis=1, keepdims=True) + a.mean()

    a, b = centred(x), centred(y)
    dcov2, dvar2x, dvar2y = (a * b).sum() / n**2, (a * a).sum() / n**2, (b * b).sum() / n**2
    if dvar2x * dvar2y <= 0:
        return 0.0
    return float(np.sqrt(max(dcov2, 0.0) / np.sqrt(dvar2x * dvar2y)))


def test_distance_correlation_matches_the_definition() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(24, 3, 4, 4, generator=g, dtype=torch.float64)
    y = torch.tanh(x.flatten(1)[:, :10] * 3) + 0.3 * torch.randn(24, 10, generator=g, dtype=torch.float64)
    y = y.reshape(24, 5, 2)
    for a, b in ((x, y), (x, torch.randn(24, 7, generator=g, dtype=torch.float64)), (x, x**2)):
        expected = _dcor_reference(a.numpy(), b.numpy())
        assert float(distance_correlation(a, b)) == pytest.approx(expected, abs=1e-10)
        assert float(distance_correlation(a.float(), b.float())) == pytest.approx(expected, abs=1e-5)
        assert float(distance_correlation(b, a)) == pytest.approx(expected, abs=1e-10)  # symmetric
    assert distance_correlation(x.float(), y.float()).dtype == torch.float32


def test_distance_correlation_known_cases() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 12, generator=g)
    y = torch.randn(64, 5, generator=g) + x[:, :5] ** 2
    assert float(distance_correlation(x, x)) == pytest.approx(1.0, abs=1e-6)
    assert float(distance_correlation(x, -3.0 * x + 7.0)) == pytest.approx(1.0, abs=1e-6)
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=g))  # rotations and shifts leave it unchanged
    assert float(distance_correlation(x @ q + 2.0, x)) == pytest.approx(1.0, abs=1e-6)
    base = float(distance_correlation(x, y))
    assert 0.2 < base < 1.0
    for a, b in ((10.0, 1.0), (1e-3, 1e4), (1.0, 0.05)):  # invariance to scaling either variable
        assert float(distance_correlation(a * x, b * y)) == pytest.approx(base, rel=1e-5)
    # independent samples: the sample dCor (a V-statistic) is biased upwards, ~ 1/sqrt(n), so near 0 for many
    u, w = torch.randn(2000, 3, generator=g), torch.randn(2000, 4, generator=g)
    independent = float(distance_correlation(u, w))
    assert independent < 0.1 and float(distance_correlation(u[:250], w[:250])) > 2 * independent
    assert float(distance_correlation(x, torch.ones(64, 3))) == 0.0  # a constant: no dependence


def test_distance_correlation_is_differentiable() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(8, 3, generator=g, dtype=torch.float64, requires_grad=True)
    y = (x.detach()[:, :2] ** 2 + 0.5 * torch.randn(8, 2, generator=g, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(distance_correlation, (x, y))
    # repeated rows (zero distances) and a constant input have finite gradients
    z = torch.cat([x.detach()[:4], x.detach()[:4]]).requires_grad_()
    c = torch.ones(8, 2, dtype=torch.float64, requires_grad=True)
    (distance_correlation(z, y) + distance_correlation(z, c)).backward()
    assert torch.isfinite(z.grad).all() and torch.isfinite(c.grad).all()


def test_distance_correlation_refuses_mismatched_batches() -> None:
    with pytest.raises(SplitinvError, match="same size") as err:
        distance_correlation(torch.zeros(4, 3), torch.zeros(5, 3))
    assert "\n" not in str(err.value)
    with pytest.raises(SplitinvError, match="at least 2 samples"):
        distance_correlation(torch.zeros(1, 3), torch.zeros(1, 3))


# ---------------------------------------------------------------------------------------- fine-tuning helpers


@pytest.fixture(scope="module")
def data() -> FashionMNISTDataModule:
    dm = FashionMNISTDataModule(
        vendored=True, download=False, image_size=32, n_aux=960, n_eval=128, batch_size=32
    )
    dm.setup()
    return dm


def _random_victim():
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_victim("resnet18", num_classes=10, image_size=32)


def _fine_tune(the_split, data, steps: int, adversary=None, lr: float = 0.01) -> None:
    """``steps`` batches of DefenseModule (two optimizer steps per batch with an adversary)."""
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    module = DefenseModule(the_split, adversary, lr=lr)
    trainer = L.Trainer(
        max_steps=steps * (2 if adversary is not None else 1),
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    the_split.train()
    batches = data.train_dataloader() if hasattr(data, "train_dataloader") else data  # or a DataLoader
    trainer.fit(module, train_dataloaders=batches)
    the_split.eval()


def _prepared(defense, cut: str, data):
    """A random resnet18 cut at ``cut`` with ``defense``, after its fit_start; (split, adversary)."""
    the_split = split(_random_victim(), cut, defense)
    x0 = next(iter(data.train_dataloader()))[0]
    with torch.no_grad():
        h0 = the_split.head(x0)
    defense.fit_start(x0, h0)
    return the_split, defense.build_adversary(tuple(x0.shape[1:]))


# ----------------------------------------------------------------------------------------------------- NoPeek


def test_nopeek_fine_tuning_lowers_distance_correlation(data) -> None:
    dcor = {}
    for weight in (0.0, 5.0):
        the_split, _ = _prepared(NoPeek(weight), "layer2", data)
        before = leakage(the_split, data.val_dataloader())  # held-out images
        _fine_tune(the_split, data, steps=20)
        dcor[weight] = (before, leakage(the_split, data.val_dataloader()))
    assert dcor[0.0][0] == pytest.approx(dcor[5.0][0])  # the same start
    assert dcor[5.0][1] < dcor[5.0][0] - 0.1  # NoPeek lowers dCor(x, h) on held-out images
    assert dcor[5.0][1] < dcor[0.0][1] - 0.1  # and not because of fine-tuning alone


def test_nopeek_is_the_identity_at_inference() -> None:
    d = NoPeek(weight=2)
    h = torch.randn(3, 4, 5, 5)
    assert torch.equal(d(h), h) and torch.equal(d.restore(h), h) and d.is_identity
    assert d.describe() == {"name": "nopeek", "weight": 2.0} and d.strength == 2.0
    assert d.payload_elements((4, 5, 5)) == 100 and d.trained
    x = torch.rand(3, 3, 8, 8)
    (loss,) = d.training_loss(x, h).values()
    assert float(loss) == pytest.approx(2.0 * float(distance_correlation(x, h)))


# ------------------------------------------------------------------------------------------------ adversarial


def test_adversarial_min_max_steps_have_the_right_signs(data) -> None:
    """Per batch: the proxy decoder's step lowers its MSE; the network's step then raises it."""
    d = AdversarialDecoder(weight=100.0)
    the_split, adversary = _prepared(d, "layer2", data)
    x = next(iter(data.train_dataloader()))[0]
    # the network's term is exactly -weight times the decoder's MSE: opposite gradients. The two are float32
    # sums taken in different orders (AVX2 and AVX-512/AMX kernels differ), so the tolerance is scaled to the
    # gradients' magnitude (about 1e-6 to 1e-4 here), not an absolute 1e-9 below float32 rounding.
    h = the_split.head(x).detach().requires_grad_()
    (term,) = d.training_loss(x, h, adversary).values()
    (g_term,) = torch.autograd.grad(term, h)
    (g_mse,) = torch.autograd.grad(F.mse_loss(adversary(h), x), h)
    expected = -100.0 * g_mse
    scale = float(expected.abs().max())
    assert scale > 0  # a zero gradient would make every comparison below vacuous
    torch.testing.assert_close(g_term, expected, rtol=1e-4, atol=1e-5 * scale)
    cosine = F.cosine_similarity(g_term.flatten(), g_mse.flatten(), dim=0)
    assert float(cosine) < -1 + 1e-6  # opposite directions
    assert float(g_term.norm() / g_mse.norm()) == pytest.approx(100.0, rel=1e-5)  # in the ratio weight

    head_before, decoder_before = copy.deepcopy(the_split.head).train(), copy.deepcopy(adversary).train()

    def mse(decoder, head) -> float:
        with torch.no_grad():
            return F.mse_loss(decoder(head(x)), x).item()

    one_batch = DataLoader(TensorDataset(x, torch.zeros(len(x), dtype=torch.long)), batch_size=len(x))
    _fine_tune(the_split, one_batch, steps=1, adversary=adversary, lr=1.0)
    the_split.train()
    adversary.train()
    assert mse(adversary, head_before) < mse(decoder_before, head_before)  # the decoder learned
    assert mse(adversary, the_split.head) > mse(adversary, head_before)  # the head moved away from it


def test_adversarial_training_keeps_the_proxy_decoder_from_inverting(data) -> None:
    x = torch.cat([b[0] for b in data.val_dataloader()])
    losses = {}
    for weight in (0.0, 50.0):
        the_split, adversary = _prepared(AdversarialDecoder(weight), "layer2", data)
        _fine_tune(the_split, data, steps=30, adversary=adversary)
        adversary.eval()
        with torch.no_grad():
            losses[weight] = F.mse_loss(adversary(the_split.head(x)), x).item()  # held-out images
    assert losses[50.0] > 1.5 * losses[0.0]


def test_adversarial_is_the_identity_and_keeps_its_decoder_out_of_its_state(data) -> None:
    d = AdversarialDecoder(weight=1, lr=0.01, width=32)
    the_split, adversary = _prepared(d, "layer2", data)
    assert adversary is not None and adversary.width == 32
    assert d.state_dict() == {} and set(the_split.client.parameters()) == set(the_split.head.parameters())
    h = torch.randn(2, 128, 4, 4)
    assert torch.equal(d(h), h) and d.is_identity
    assert d.describe() == {"name": "adversarial", "weight": 1.0, "lr": 0.01, "width": 32}


# ------------------------------------------------------------------------------------------------- bottleneck


@pytest.mark.parametrize(
    ("shape", "channels", "sent", "payload"),
    [((64, 8, 8), 0.25, (16, 8, 8), 16 * 64), ((5, 12), 3, (5, 3), 15), ((10,), 0.5, (5,), 5)],
)
def test_bottleneck_payload_and_restore_shapes(shape, channels, sent, payload) -> None:
    d = Bottleneck(channels)
    d.build(shape)
    h = torch.randn(2, *shape)
    v = d(h)
    assert tuple(v.shape) == (2, *sent) and d.payload_elements(shape) == payload
    assert tuple(d.restore(v).shape) == (2, *shape)
    assert set(d.state_dict()) == {
        "encoder.map.weight",
        "encoder.map.bias",
        "decoder.map.weight",
        "decoder.map.bias",
    }
    with pytest.raises(SplitinvError, match="expected observations of shape"):
        d.restore(h)


def test_bottleneck_in_a_split_starts_from_pca(data) -> None:
    x = next(iter(data.val_dataloader()))[0]
    full, _ = _prepared(Bottleneck(1.0), "layer2", data)  # every channel: PCA restores exactly
    with torch.no_grad():
        h = full.head(x)
        assert torch.allclose(full.defense.restore(full.observe(x)), h, atol=1e-4)
    the_split, _ = _prepared(Bottleneck(0.25), "layer2", data)
    with torch.no_grad():
        v = the_split.observe(x)
        assert tuple(v.shape) == (len(x), 32, 4, 4)
        logits = the_split.serve(v)  # tail(restore(observe(x)))
        assert tuple(logits.shape) == (len(x), 10) and torch.isfinite(logits).all()
        pca_error = F.mse_loss(the_split.defense.restore(v), h)
        random = Bottleneck(0.25)
        random.build(h.shape[1:])
        assert pca_error < F.mse_loss(random.restore(random(h)), h)
    assert the_split.utility(data.val_dataloader())["n"] == 128
    encoder = the_split.defense.encoder.map.weight.detach().clone()
    _fine_tune(the_split, data, steps=2)
    assert not torch.equal(encoder, the_split.defense.encoder.map.weight)  # trained with the network


def test_an_untrained_bottleneck_warns_and_builds_itself() -> None:
    d = Bottleneck(4)
    with pytest.warns(UserWarning, match="RANDOM weights"):
        v = d(torch.randn(2, 8, 3, 3))
    assert tuple(v.shape) == (2, 4, 3, 3)
    with pytest.raises(SplitinvError, match=r"built for activations of shape \(8, 3, 3\)"):
        d(torch.randn(2, 6, 3, 3))
    with pytest.raises(SplitinvError, match="restore needs its decoder"):
        Bottleneck().restore(torch.randn(2, 4, 3, 3))


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: NoPeek(weight=-1), "weight must be a finite number >= 0"),
        (lambda: NoPeek(weight=float("nan")), "weight must be a finite number >= 0"),
        (lambda: NoPeek(weight="big"), "weight must be a finite number >= 0"),
        (lambda: AdversarialDecoder(weight=True), "weight must be a finite number >= 0"),
        (lambda: AdversarialDecoder(lr=0), "lr must be a positive number"),
        (lambda: AdversarialDecoder(width=0), "width must be a positive integer or null"),
        (lambda: Bottleneck(channels=0), "channels must be >= 1"),
        (lambda: Bottleneck(channels=1.5), "neither a count"),
        (lambda: Bottleneck(channels="half"), "must be a count"),
        (lambda: Bottleneck(channels=300).build((128, 4, 4)), "larger than the 128 channels"),
        (lambda: Bottleneck().build((2, 3, 4, 5)), "expected \\(C, H, W\\) maps"),
    ],
)
def test_bad_parameters_are_one_line_errors(make, match) -> None:
    with pytest.raises(SplitinvError, match=match) as err:
        make()
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------------------------ the command, end to end

FAST = [
    "victim.image_size=32",
    "data=fashion_mnist_mini",
    "data.n_aux=64",
    "data.n_eval=64",
    "data.batch_size=32",
    "trainer.max_epochs=1",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
]


def _compose(config: str, tmp_path: Path, *overrides: str):
    with initialize_config_module(config_module="splitinv.conf", version_base="1.3"):
        return hydra_compose(config, overrides=[*FAST, f"paths.output_dir={tmp_path}", *overrides])


def _command(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        ["splitinv-train-defense", *FAST, *args], capture_output=True, text=True, env=env, timeout=300
    )


@pytest.fixture(scope="module")
def trained_victim(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("victim")
    # 4 steps leave it at chance accuracy: deliberately (allow_chance), the defense tests need only its shapes
    return Path(
        train_victim(_compose("train_victim", out, "data.n_aux=128", "allow_chance=true"))["checkpoint"]
    )


def test_the_command_writes_a_checkpoint_that_carries_the_defense(trained_victim, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = _command(
        f"victim.weights={trained_victim}", "cut=layer2", "defense=bottleneck", "defense.channels=0.5",
        f"paths.output_dir={out}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = proc.stdout.strip().splitlines()[-1]
    assert (
        summary.startswith("defense bottleneck (channels 0.5) at layer2: val_acc ")
        and "sends 1024 of 2048" in summary
    )
    ckpt = out / "victim.pt"
    obj = torch.load(ckpt, weights_only=True)
    assert (
        obj["format"] == "splitinv-victim/1"
        and obj["cut"] == "layer2"
        and obj["feature_shape"] == [128, 4, 4]
    )
    assert obj["defense"] == {"name": "bottleneck", "channels": 0.5}
    assert obj["base_weights"] == str(trained_victim)

    victim = build_victim("resnet18", weights=ckpt)  # the victim loader takes it
    assert victim.num_classes == 10 and victim.image_size == 32
    base = build_victim("resnet18", weights=trained_victim)
    assert not torch.equal(victim.model.conv1.weight, base.model.conv1.weight)  # fine-tuned
    defense = Bottleneck(0.5)
    load_defense(str(ckpt), defense, "layer2")  # the same defense: its trained state is loaded
    assert torch.equal(defense.encoder.map.weight, obj["defense_state"]["encoder.map.weight"])
    the_split = split(victim, "layer2", defense)
    assert tuple(the_split.observe(torch.rand(2, 3, 32, 32)).shape) == (2, 64, 4, 4)

    refusals = [
        (Bottleneck(0.25), "layer2", "not bottleneck (channels 0.25) at layer2"),
        (NoPeek(), "layer2", "not nopeek (weight 0.5) at layer2"),
        (None, "layer2", "not none at layer2"),
        (NoDefense(), "layer2", "not none at layer2"),
        (Bottleneck(0.5), "layer3", "not bottleneck (channels 0.5) at layer3"),
    ]
    for other, point, what in refusals:
        with pytest.raises(SplitinvError) as err:
            load_defense(ckpt, other, point)
        assert str(err.value) == (
            f"victim.pt was trained with defense bottleneck (channels 0.5) at layer2, {what}: "
            "pass defense=bottleneck defense.channels=0.5 cut=layer2."
        )
    # a trained defense needs a checkpoint of it; inference-time defenses and none do not
    with pytest.raises(SplitinvError, match=f"victim.weights={trained_victim} holds no defense") as err:
        load_defense(trained_victim, NoPeek(), "layer2")
    assert "\n" not in str(err.value)
    with pytest.raises(SplitinvError, match="victim.weights=null is not a checkpoint of it"):
        load_defense(None, Bottleneck(), "layer2")
    load_defense(trained_victim, None, "layer2")
    load_defense("imagenet", NoDefense(), "layer3")


def test_bad_command_lines_are_one_line_errors(tmp_path: Path) -> None:
    proc = _command("defense=nopeek", "defense.weight=-1", f"paths.output_dir={tmp_path}")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "splitinv-train-defense: error: nopeek defense: weight must be a finite number >= 0, got -1: set "
        "defense.weight, e.g. 0.5."
    )
    assert len([line for line in proc.stderr.splitlines() if "error" in line.lower()]) == 1


def test_fine_tuning_in_process_with_random_weights(trained_victim, tmp_path: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="splitinv.defenses.train"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = train_defense(_compose("train_defense", tmp_path, "defense=adversarial", "defense.weight=2"))
    assert "RANDOMLY initialised resnet18" in caplog.text
    # a random-weight victim fine-tuned briefly guesses: saved (a privacy-utility point), but said so once
    assert result["val_acc"] <= 0.2 and caplog.text.count("the defended victim classifies at chance") == 1
    assert result["defense"] == {"name": "adversarial", "weight": 2.0, "lr": 0.001, "width": None}
    assert 0 <= result["val_acc"] <= 1 and 0 <= result["dcor"] <= 1
    assert result["payload_elements"] == result["activation_elements"] == 2048
    ckpt = result["checkpoint"]
    load_defense(ckpt, AdversarialDecoder(weight=2.0), "layer2")
    assert torch.load(ckpt, weights_only=True)["defense_state"] == {}  # the proxy decoder is not kept
    with pytest.raises(SplitinvError, match="pass defense=adversarial defense.weight=2.0 defense.lr=0.001"):
        load_defense(ckpt, AdversarialDecoder(weight=1.0), "layer2")
    # a defended checkpoint is not fine-tuned again, and defense=none has nothing to train
    with pytest.raises(SplitinvError, match="already carries defense adversarial"):
        train_defense(_compose("train_defense", tmp_path / "again", f"victim.weights={ckpt}"))
    with pytest.raises(SplitinvError, match="defense=none: there is no defense to fine-tune"):
        train_defense(_compose("train_defense", tmp_path / "none", "defense=none"))
    with pytest.raises(SplitinvError, match="no cut point 'layer9'"):
        train_defense(
            _compose("train_defense", tmp_path / "cut", f"victim.weights={trained_victim}", "cut=layer9")
        )
