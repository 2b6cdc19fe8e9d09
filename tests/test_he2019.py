"""He et al. (ACSAC 2019) reproduced: their networks and cut names, the MNIST data, the presets checked
against a line-by-line port of their public code, auxiliary data as its own choice, and the published
numbers beside ours in one table."""

from __future__ import annotations

import gzip
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from splitinv.attacks.base import AttackContext
from splitinv.attacks.optimize import OptimizationAttack, OptimizeSettings, optimize
from splitinv.config import compose
from splitinv.cut import cut_points
from splitinv.data import MNISTDataModule, NoiseDataModule
from splitinv.errors import SplitinvError
from splitinv.nets.he2019 import PAPER_CUTS, he2019_decoder
from splitinv.split import split
from splitinv.victims import build_victim

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:.*RANDOM weights"),
]
ROOT = Path(__file__).resolve().parents[1]


def _reference():
    """experiments/scripts/he2019_reference.py: a port of the authors' rMLE loop (no splitinv code)."""
    spec = importlib.util.spec_from_file_location(
        "he2019_reference", ROOT / "experiments/scripts/he2019_reference.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------------ architectures


@pytest.mark.parametrize(
    ("name", "channels", "size", "shapes"),
    [
        ("he2019_mnist", 1, 28, {"conv1": (8, 24, 24), "ReLU2": (16, 8, 8)}),
        ("he2019_cifar", 3, 32, {"conv11": (64, 32, 32), "ReLU22": (128, 16, 16), "ReLU32": (128, 8, 8)}),
    ],
)
def test_paper_networks_cut_names_shapes_and_round_trip(name, channels, size, shapes):
    victim = build_victim(name)
    points = list(cut_points(victim))
    assert set(shapes) <= set(points) and set(PAPER_CUTS[name]) == set(shapes)
    x = torch.rand(3, channels, size, size)
    with torch.no_grad():
        full = victim(x)
        assert full.shape == (3, 10)
        for cut, shape in shapes.items():
            the_split = split(victim, cut)
            f = the_split.observe(x)
            assert tuple(f.shape[1:]) == shape
            assert torch.allclose(the_split.serve(f), full, atol=1e-6)  # head + tail = the network
            assert he2019_decoder(name, cut)(f).shape == x.shape  # the paper's inverse network fits


def test_paper_parameter_names_load_and_wrong_size_refused(tmp_path):
    victim = build_victim("he2019_mnist")
    state = victim.model.state_dict()
    assert {"conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight", "fc3.bias"} <= set(
        state
    )  # the code's
    path = tmp_path / "authors.pt"
    torch.save(state, path)  # a plain state_dict, as the authors' model.state_dict() would be
    loaded = build_victim("he2019_mnist", weights=str(path))
    assert torch.equal(loaded.model.conv1.weight, victim.model.conv1.weight) and loaded.weights == str(path)
    assert loaded.mean == (0.5,) and loaded.std == (0.5,) and loaded.image_size == 28
    with pytest.raises(SplitinvError, match="takes 28 px images"):
        build_victim("he2019_mnist", image_size=32)
    with pytest.raises(SplitinvError, match="no inverse network for he2019_mnist at fc1"):
        he2019_decoder("he2019_mnist", "fc1")


# -------------------------------------------------------------------------------------------------- data


def test_vendored_mnist_subset_and_torchvision_files(tmp_path):
    dm = MNISTDataModule(vendored=True, download=False, image_size=28, channels=1, n_eval=10)
    aux, ev = dm.aux_dataset(), dm.eval_dataset()
    assert len(aux) == 4000 and len(ev) == 10 and dm.describe()["vendored"]
    x, y, _ = ev[0]
    assert x.shape == (1, 28, 28) and 0 <= x.min() < x.max() <= 1 and 0 <= y < 10
    labels = np.array([aux[i][1] for i in range(0, 4000, 7)])
    assert len(set(labels.tolist())) == 10  # every digit
    assert (ROOT / "splitinv/assets/MNIST_LICENSE.txt").is_file()
    # the torchvision path: MNIST/raw IDX files as torchvision writes them (here: made from the subset)
    z = np.load(ROOT / "splitinv/assets/mnist_subset.npz")
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for stem, arr in (
        ("train-images-idx3-ubyte", z["x_train"][:50]),
        ("train-labels-idx1-ubyte", z["y_train"][:50]),
        ("t10k-images-idx3-ubyte", z["x_test"][:20]),
        ("t10k-labels-idx1-ubyte", z["y_test"][:20]),
    ):
        header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
        (raw / stem).write_bytes(header + arr.astype(np.uint8).tobytes())
    online = MNISTDataModule(root=tmp_path, download=False, image_size=28, channels=1, n_eval=4)
    assert len(online.aux_dataset()) == 50 and len(online.held_out_dataset()) == 20
    assert torch.allclose(
        online.eval_dataset()[0][0][0], torch.from_numpy(z["x_test"][online.eval_ids[0]]) / 255
    )
    with pytest.raises(
        SplitinvError, match=r"MNIST not found in .* and download=False: place .*data=mnist_mini"
    ):
        MNISTDataModule(root=tmp_path / "none", download=False).setup()


def test_mnist_subset_script_rebuilds_the_asset(tmp_path):
    z = np.load(ROOT / "splitinv/assets/mnist_subset.npz")
    rows = np.zeros((5000, 785), dtype=np.int64)
    rows[z["train_ids"], :784] = z["x_train"].reshape(-1, 784)
    rows[z["train_ids"], 784] = z["y_train"]
    rows[z["test_ids"], :784] = z["x_test"].reshape(-1, 784)
    rows[z["test_ids"], 784] = z["y_test"]
    csv = tmp_path / "mnist_5k.csv.gz"
    with gzip.open(csv, "wt") as f:
        np.savetxt(f, rows, fmt="%d", delimiter=",")
    out = tmp_path / "subset.npz"
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "experiments/scripts/make_mnist_subset.py"),
            "--source",
            str(csv),
            "--out",
            str(out),
        ],
        check=True,
        capture_output=True,
    )
    rebuilt = np.load(out)
    for key in z.files:
        assert np.array_equal(rebuilt[key], z[key]), key


def test_noise_images_are_seeded_per_image_and_clipped():
    dm = NoiseDataModule(n_aux=20, image_size=12, channels=1, seed=3)
    a = dm.aux_dataset()
    first = torch.stack([a[i][0] for i in range(20)])
    again = torch.stack(
        [NoiseDataModule(n_aux=20, image_size=12, channels=1, seed=3).aux_dataset()[i][0] for i in range(20)]
    )
    assert torch.equal(first, again) and first.min() >= 0 and first.max() <= 1
    assert not torch.equal(
        first,
        torch.stack(
            [
                NoiseDataModule(n_aux=20, image_size=12, channels=1, seed=4).aux_dataset()[i][0]
                for i in range(20)
            ]
        ),
    )
    inner = first[(first > 0) & (first < 1)]
    assert abs(float(inner.mean()) - 0.5) < 0.1 and a[0][1] == -1
    with pytest.raises(SplitinvError, match="std > 0"):
        NoiseDataModule(std=0)


# ----------------------------------------------------------------------------------------------- presets


def test_rmle_preset_matches_a_port_of_the_authors_code():
    """Same network, same images, same iterations: splitinv's preset and the port agree to float precision."""
    ref = _reference()
    torch.manual_seed(0)
    victim = build_victim("he2019_mnist")
    x = torch.rand(2, 1, 28, 28)
    for cut, tv in (("conv1", 1.0), ("ReLU2", 1.0)):
        the_split = split(victim, cut)
        attack = OptimizationAttack(name="rmle", preset="he2019", steps=40, progress=False, tv_weight=1e-4)
        cut_info = {
            "name": cut,
            "canonical": cut,
            "relative_depth": 0.3,
            "paper_depth": PAPER_CUTS["he2019_mnist"][cut],
        }
        attack.fit(AttackContext(image_shape=(1, 28, 28), split=the_split, victim=victim, cut=cut_info))
        assert attack.settings.tv_weight == tv and attack.settings.eps == 1e-3 and attack.settings.amsgrad
        ours = attack.invert(the_split.observe(x), torch.arange(2)).images
        names = [n for n, _ in victim.model.named_children()]
        head = victim.model[: names.index(cut) + 1]
        mean, std = victim.normalize.mean, victim.normalize.std
        for i in range(2):
            z_ref = (x[i : i + 1] - mean) / std
            with torch.no_grad():
                target = head(z_ref)
            z = ref.invert_one(head, target, tuple(z_ref.shape), 40, 1e-2, tv, 0.0)
            theirs = (mean + std * z).clamp(0, 1)
            assert torch.allclose(ours[i : i + 1], theirs, atol=5e-4), (
                cut,
                float((ours[i] - theirs).abs().max()),
            )


def test_preset_schedule_follows_the_paper_names_and_lr_steps_still_win():
    victim = build_victim("he2019_mnist")
    the_split = split(victim, "ReLU2")
    ctx = AttackContext(
        image_shape=(1, 28, 28),
        split=the_split,
        victim=victim,
        cut={"name": "ReLU2", "relative_depth": 0.36, "paper_depth": "deep"},
    )
    default = OptimizationAttack(name="rmle", progress=False)
    default.fit(ctx)  # relative depth 0.36 would say shallow: the paper's name for the cut wins
    assert default.describe()["schedule_used"] == "deep" and default.settings.steps == 5000
    assert default.settings.lr == 1e-3 and "paper" in default.describe()["schedule_reason"]
    preset = OptimizationAttack(name="rmle", preset="he2019", progress=False)
    preset.fit(ctx)
    assert (preset.settings.steps, preset.settings.lr) == (
        5000,
        1e-2,
    ) and preset.settings.param == "normalized"
    capped = OptimizationAttack(name="rmle", preset="he2019", steps=7, progress=False)
    capped.fit(ctx)
    assert capped.settings.steps == 7 and capped.describe()["preset"] == "he2019"
    with pytest.raises(SplitinvError, match="preset"):
        OptimizationAttack(name="rmle", preset="he2020")


def test_normalized_param_needs_the_victims_normalisation():
    s = OptimizeSettings(steps=2, param="normalized")
    with pytest.raises(SplitinvError, match="param=normalized needs the victim's normalisation"):
        optimize(torch.nn.Conv2d(1, 2, 3), torch.zeros(1, 2, 6, 6), torch.full((1, 1, 8, 8), 0.5), s)


def test_decoder_preset_trains_saves_and_reloads_the_paper_network(tmp_path):
    import lightning.pytorch as L

    from splitinv.attacks.decoder import DecoderAttack, load_decoder
    from splitinv.decoders import PaperDecoder

    victim = build_victim("he2019_mnist")
    the_split = split(victim, "ReLU2")
    dm = MNISTDataModule(
        vendored=True, download=False, image_size=28, channels=1, n_aux=64, n_eval=2, batch_size=32
    )
    attack = DecoderAttack(preset="he2019", shuffle=True)
    assert attack.settings["eps"] == 1e-3 and attack.settings["lr_step_every"] == 10 and not attack.shuffle
    trainer = L.Trainer(
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    cut = {
        "name": "ReLU2",
        "canonical": "ReLU2",
        "victim": "he2019_mnist",
        "input_mean": [0.5],
        "input_std": [0.5],
    }
    ctx = AttackContext.for_attack(attack, the_split, (1, 28, 28), data=dm, trainer=trainer, cut=cut)
    attack.fit(ctx)
    assert isinstance(attack.decoder, PaperDecoder) and attack.decoder.net.deconv2.stride == (2, 2)
    x = torch.stack([dm.eval_dataset()[i][0] for i in range(2)])
    out = attack.invert(the_split.observe(x)).images
    assert out.shape == x.shape and 0 <= out.min() and out.max() <= 1
    attack.save(tmp_path / "decoder.pt")
    again = load_decoder(tmp_path / "decoder.pt")
    with torch.no_grad():
        assert torch.allclose(again(the_split.observe(x)).clamp(0, 1), out)


def test_victim_recipe_configures_adam_amsgrad_and_step_decay(tmp_path):
    from splitinv.config import instantiate
    from splitinv.train_victim import ClassifierModule

    cfg = compose(["recipe=he2019_mnist"], output_dir=tmp_path, config_name="train_victim")
    assert cfg.victim.name == "he2019_mnist" and cfg.data.batch_size == 32 and cfg.data.channels == 1
    module = ClassifierModule(instantiate(cfg.victim), **cfg.optim)
    conf = module.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    group = opt.param_groups[0]
    assert (
        isinstance(opt, torch.optim.Adam)
        and group["eps"] == 1e-3
        and group["amsgrad"]
        and group["lr"] == 1e-3
    )
    assert isinstance(sched, torch.optim.lr_scheduler.StepLR) and sched.step_size == 20 and sched.gamma == 0.5
    with pytest.raises(SplitinvError, match="optim.optimizer='rmsprop'"):
        ClassifierModule(instantiate(cfg.victim), optimizer="rmsprop")


# ------------------------------------------------------------------------------------------ aux and runs


def _tiny(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "victim=he2019_mnist",
        "data=mnist_mini",
        "data.n_aux=64",
        "data.n_eval=2",
        "logger=csv",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
        "utility_test=false",
        "lpips=off",
        f"hydra.run.dir={tmp_path}",
        *extra,
    ]


def test_aux_choice_sets_the_recorded_aux_data(tmp_path):
    from splitinv.run import run

    same = run(compose(_tiny(tmp_path, "attack=decoder"), output_dir=tmp_path / "same"))
    noise = run(
        compose(_tiny(tmp_path, "attack=decoder", "aux=noise", "aux.n_aux=64"), output_dir=tmp_path / "noise")
    )
    other = run(
        compose(
            _tiny(tmp_path, "attack=decoder", "aux=fashion_mnist_mini", "aux.n_aux=64"),
            output_dir=tmp_path / "fm",
        )
    )
    rmle = run(
        compose(_tiny(tmp_path, "attack=rmle", "aux=noise", "attack.steps=2"), output_dir=tmp_path / "rmle")
    )
    assert same["aux_data"] == "same" and same["details"]["aux"] == "same"
    assert noise["aux_data"] == "other" and noise["details"]["aux"]["name"] == "noise"
    assert other["aux_data"] == "other" and other["details"]["aux"]["name"] == "fashion_mnist"
    assert other["details"]["aux"]["channels"] == 1  # follows data's channels and size
    assert rmle["aux_data"] == "none"  # a data-free attack learns from no auxiliary data whatever aux says
    assert noise["details"]["data"]["name"] == "mnist"  # evaluation images still come from data
    assert noise["baselines"]["mean"] != same["baselines"]["mean"]  # the attacker's own mean image
    assert same["details"]["cut"]["paper_depth"] == "shallow"


def test_evaluator_agreement_is_scored_with_an_independent_classifier(tmp_path):
    from splitinv.run import run
    from splitinv.train_victim import save_victim

    other = build_victim("he2019_mnist")
    other.weights = "trained"
    save_victim(other, tmp_path / "evaluator.pt")
    overrides = _tiny(
        tmp_path,
        "attack=rmle",
        "attack.steps=2",
        "+evaluator._target_=splitinv.victims.build_victim",
        "+evaluator.name=he2019_mnist",
        f"+evaluator.weights={tmp_path / 'evaluator.pt'}",
    )
    record = run(compose(overrides, output_dir=tmp_path / "run"))
    assert 0.0 <= record["evaluator_agreement"]["mean"] <= 1.0 and record["evaluator_agreement"]["n"] == 2
    # a constant classifier agrees with itself on every image, whatever the reconstruction
    with torch.no_grad():
        other.model.fc3.weight.zero_()
        other.model.fc3.bias.copy_(torch.arange(10.0))
    save_victim(other, tmp_path / "constant.pt")
    overrides[-1] = f"+evaluator.weights={tmp_path / 'constant.pt'}"
    record = run(compose(overrides, output_dir=tmp_path / "constant"))
    assert record["evaluator_agreement"]["mean"] == 1.0
    with pytest.raises(SplitinvError, match="evaluator is the victim itself"):
        same = _tiny(
            tmp_path,
            "attack=rmle",
            "attack.steps=2",
            "+evaluator._target_=splitinv.victims.build_victim",
            "+evaluator.name=he2019_mnist",
        )
        run(compose(same, output_dir=tmp_path / "same"))


def test_published_rows_sit_beside_ours_and_are_never_best(tmp_path):
    import pandas as pd

    from splitinv.report import KEYS, published, table

    ours = pd.DataFrame(
        [
            {
                **dict.fromkeys(KEYS),
                "victim": "he2019_mnist",
                "cut": "conv1",
                "attack": "rmle",
                "aux_data": "none",
                "preset": "he2019",
                "status": "ok",
                "job": "0",
                "cut_depth": 0.0,
                "psnr": 21.0,
                "ssim": 0.8,
            },
            {
                **dict.fromkeys(KEYS),
                "victim": "he2019_mnist",
                "cut": "conv1",
                "attack": "rmle",
                "aux_data": "none",
                "preset": "splitinv",
                "status": "ok",
                "job": "1",
                "cut_depth": 0.0,
                "psnr": 45.0,
                "ssim": 0.99,
            },
        ]
    )
    frame = published("he2019", ours)
    assert set(frame["preset"]) == {"he2019", "splitinv", "paper"}
    assert set(frame[frame["preset"] == "paper"]["cut"]) == {"conv1"}  # only the pairs we ran
    text = table(frame, rows="attack+aux_data+preset", cols="cut", metrics=["psnr", "ssim"])
    assert "| rmle/none/paper | 39.69 | 0.997 |" in text  # published, not bolded although highest PSNR
    assert "| rmle/none/splitinv | 45.00 | **0.990** |" not in text and "**45.00**" in text
    with pytest.raises(SplitinvError, match="named 'he2020': use --published with one of he2019"):
        published("he2020")


def test_lpips_auto_is_null_on_images_too_small_for_the_backbone():
    from splitinv import metrics

    x = torch.rand(2, 1, 16, 16)  # SSIM takes 11 px and more; LPIPS-alex 32
    with pytest.warns(UserWarning, match="needs images of at least"):
        out = metrics.score(x, x.flip(-1), lpips="auto")
    assert out["lpips"] is None and out["psnr"].shape == (2,)
    with pytest.raises(SplitinvError, match="needs images of at least"):
        metrics.score(x, x, lpips="required")


@pytest.mark.slow
def test_he2019_mnist_cpu_experiment_end_to_end(tmp_path):
    """The documented script at CPU size: victim, 12-job sweep, one table with the paper's numbers beside."""
    import os

    proc = subprocess.run(
        ["bash", str(ROOT / "experiments/he2019.sh"), str(tmp_path), "he2019_mnist_cpu", "lpips=off"],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "VICTIM_EPOCHS": "3"},  # the recipe's 20 epochs are for the README's run
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = (tmp_path / "table.md").read_text()
    for row in (
        "rmle/none/he2019",
        "rmle/none/splitinv",
        "rmle/none/paper",
        "decoder/same/he2019",
        "decoder/same/paper",
        "decoder/other/he2019",
        "decoder/other/splitinv",
        "decoder/other/paper",
    ):
        assert f"| {row} |" in table
    assert "n/a" not in table.split("paper")[0] and "failed" not in table and "missing" not in table
    from splitinv.report import collect

    frame = collect(tmp_path / "sweep")
    assert len(frame) == 12 and (frame["status"] == "ok").all()
    paper = frame[frame["preset"] == "he2019"].set_index(["attack", "aux_data", "cut"])["psnr"]
    # the paper's reading that survives tiny budgets: same-distribution data beats random data at both cuts
    for cut in ("conv1", "ReLU2"):
        assert paper[("decoder", "same", cut)] > paper[("decoder", "other", cut)]


def test_overriding_steps_alone_says_which_schedule_lr_it_kept(caplog):
    import logging

    attack = OptimizationAttack(name="rmle", steps=100, schedule="deep", progress=False)
    with caplog.at_level(logging.WARNING, logger="splitinv.attacks.optimize"):
        attack.resolve_schedule()
    assert (attack.settings.steps, attack.settings.lr) == (100, 1e-3)
    assert "attack.steps=100 overrides the deep schedule, which still gives lr 0.001" in caplog.text
    assert "steps=100 with the deep schedule's lr 0.001" in attack.describe()["schedule_reason"]
