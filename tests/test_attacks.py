"""White-box optimisation attacks (rMLE, Mahendran & Vedaldi, BN prior), hybrid, their priors and batching.

One small victim is trained once for the module (ResNet-18 at 32 px on the vendored Fashion-MNIST subset);
attacks run with short schedules so the file stays fast on two shared CPU cores.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import splitinv.attacks.optimize as optimize_module
from splitinv import metrics
from splitinv.attacks import AttackContext, BNStatsPrior, HybridAttack, OptimizationAttack
from splitinv.attacks.optimize import DEPTH_THRESHOLD, feature_loss, image_generator
from splitinv.attacks.priors import alpha_norm, random_flip, random_jitter, total_variation
from splitinv.config import compose, instantiate
from splitinv.cut import cut
from splitinv.data import FashionMNISTDataModule
from splitinv.errors import SplitinvError
from splitinv.evaluate import ReconstructionStore, evaluate, reconstruct
from splitinv.results import IMAGES_FILE, load_images
from splitinv.run import run
from splitinv.split import Split, split
from splitinv.train_victim import save_victim
from splitinv.victims import build_victim

N_EVAL = 6
STEPS = {"rmle": 120, "mahendran": 120, "hybrid": 60}
BASE = [
    "victim=resnet18",
    "victim.image_size=32",
    "data=fashion_mnist_mini",
    f"data.n_eval={N_EVAL}",
    "data.n_aux=512",
    "data.batch_size=3",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "trainer.max_epochs=2",
    "logger=csv",
    "utility_test=false",
    "attack.progress=false",
]


@pytest.fixture(scope="module")
def victim_path(tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> Path:
    """A ResNet-18 trained briefly (80 SGD steps) on the vendored Fashion-MNIST subset at 32 px."""
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="RANDOM weights"):
        victim = build_victim("resnet18", image_size=32, num_classes=10)
    dm = FashionMNISTDataModule(vendored=True, image_size=32, n_eval=N_EVAL, batch_size=32, augment=False)
    opt = torch.optim.SGD(victim.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    steps = 80
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 0.05, steps)
    victim.train()
    done = 0
    while done < steps:
        for x, y, _ in dm.train_dataloader():
            loss = F.cross_entropy(victim(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            done += 1
            if done == steps:
                break
    victim.eval()
    return save_victim(victim, tmp_path_factory.mktemp("victim") / "victim.pt")


@pytest.fixture(scope="module")
def alexnet_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("alexnet") / "alexnet-owt-7be5be79.pth"
    torch.save(torchvision.models.alexnet().state_dict(), path)
    return path


@pytest.fixture
def lpips_backbone(alexnet_file: Path) -> None:
    """A seeded RANDOM AlexNet in this test's (empty) torch cache, so the LPIPS code path runs offline.

    LPIPS with a random backbone is only a weak check: real LPIPS needs torchvision's trained AlexNet.
    """
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    cache.mkdir(parents=True, exist_ok=True)
    os.symlink(alexnet_file, cache / alexnet_file.name)
    metrics.clear_lpips_cache()


_RUNS: dict[tuple[str, ...], tuple[dict[str, Any], Path]] = {}


def _run(out: Path, attack: str, cut_point: str, victim: Path, *extra: str) -> dict[str, Any]:
    overrides = [*BASE, f"victim.weights={victim}", f"attack={attack}", f"cut={cut_point}", *extra]
    if not any(e.startswith("attack.steps=") for e in extra):
        overrides.append(f"attack.steps={STEPS[attack]}")
    return run(compose(overrides, output_dir=out))


def _cached(tmp_path_factory: pytest.TempPathFactory, victim: Path, attack: str, cut_point: str) -> Any:
    """One run per (attack, cut) for the whole module: (record, run folder)."""
    key = (attack, cut_point)
    if key not in _RUNS:
        out = tmp_path_factory.mktemp(f"{attack}-{cut_point}")
        _RUNS[key] = (_run(out, attack, cut_point, victim), out)
    return _RUNS[key]


def _trivial_scores() -> dict[str, dict[str, float]]:
    """SSIM and LPIPS of the constant 0.5 image and of the mean auxiliary image on the evaluation images."""
    dm = FashionMNISTDataModule(vendored=True, image_size=32, n_eval=N_EVAL, n_aux=512, augment=False)
    x = torch.stack([dm.eval_dataset()[i][0] for i in range(N_EVAL)])
    aux = dm.aux_dataset()
    mean = torch.stack([aux[i][0] for i in range(len(aux))]).mean(0, keepdim=True)
    out = {}
    for name, guess in (("constant", torch.full_like(x, 0.5)), ("mean_aux", mean.expand_as(x))):
        out[name] = {
            "ssim": float(metrics.ssim(x, guess).mean()),
            "lpips": float(metrics.lpips(x, guess).mean()),
        }
    return out


# ------------------------------------------------------------------------------------------------ priors


def test_total_variation_and_alpha_norm() -> None:
    flat = torch.full((2, 3, 8, 8), 0.5, requires_grad=True)
    tv = total_variation(flat)
    assert tv.shape == (2,) and torch.all(tv == 0)
    tv.sum().backward()
    assert torch.isfinite(flat.grad).all()  # finite gradient on rMLE's flat start
    x = torch.zeros(1, 1, 3, 3)
    x[0, 0, :, 1] = 1.0  # a vertical line: in the 2x2 valid area, 2 rows x (one step up, one step down)
    assert total_variation(x, beta=2.0).item() == pytest.approx(4.0)
    assert total_variation(x, beta=1.0).item() == pytest.approx(4.0, abs=1e-3)
    assert alpha_norm(torch.full((1, 3, 2, 2), -0.5), alpha=6.0).item() == pytest.approx(12 * 0.5**6)
    with pytest.raises(SplitinvError, match="beta > 0"):
        total_variation(x, beta=0)
    with pytest.raises(SplitinvError, match=r"\(B, C, H, W\)"):
        alpha_norm(torch.zeros(3, 4, 4))


def test_jitter_and_flip_are_seeded_per_image() -> None:
    x = torch.rand(4, 3, 8, 8)
    gens = lambda: [image_generator(0, i) for i in range(4)]  # noqa: E731
    g = gens()
    a = random_flip(random_jitter(x, 2, g), 0.5, g)
    b = torch.cat([random_flip(random_jitter(x[i : i + 1], 2, [g]), 0.5, [g]) for i, g in enumerate(gens())])
    assert torch.equal(a, b)  # the same draws whether an image is alone or in a batch
    assert torch.equal(random_jitter(x, 0), x) and torch.equal(random_flip(x, 0.0), x)
    with pytest.raises(SplitinvError, match="one per image"):
        random_jitter(x, 2, gens()[:3])


def test_bn_prior_is_zero_on_matching_statistics_and_leaves_running_stats() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4))
    mean, std = torch.tensor([0.5, -1.0, 2.0, 0.0]), torch.tensor([1.0, 0.5, 2.0, 3.0])
    net[0].running_mean.copy_(mean)
    net[0].running_var.copy_(std**2)
    matching = mean.view(1, 4, 1, 1) + std.view(1, 4, 1, 1) * torch.randn(512, 4, 8, 8)
    with torch.no_grad():  # let the second layer's running stats describe the first one's output
        net.train()
        for bn in (net[0], net[3]):
            bn.momentum = None
            bn.reset_running_stats()
        net(matching)
    net[0].running_mean.copy_(mean)
    net[0].running_var.copy_(std**2)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    for mode in (False, True):
        net.train(mode)
        with BNStatsPrior(net) as prior:
            net(matching)
            good = prior.loss()
            net(matching * 3 + 1)
            bad = prior.loss()
            assert prior.n_layers == 2
        assert good.ndim == 0 and good.item() < 0.05 * bad.item() and bad.item() > 1.0
        with BNStatsPrior(net, per_image=True) as prior:
            net(matching[:5])
            assert prior.loss().shape == (5,)
        for k, v in net.state_dict().items():
            assert torch.equal(v, before[k]), k  # running stats and counters untouched, train mode too
        assert net[0].momentum is None
    with pytest.raises(SplitinvError, match="outside its context"):
        BNStatsPrior(net).loss()


def test_feature_losses() -> None:
    f = torch.randn(3, 8, 2, 2)
    for kind in ("mse", "nmse", "cosine"):
        assert torch.allclose(feature_loss(f, f, kind), torch.zeros(3), atol=1e-6)
    assert feature_loss(2 * f, f, "cosine").abs().max() < 1e-6  # scale-invariant
    assert torch.allclose(feature_loss(2 * f, f, "nmse"), torch.ones(3))
    with pytest.raises(SplitinvError, match="unknown attack.feature_loss 'l3'"):
        feature_loss(f, f, "l3")


# ------------------------------------------------------------------------------------- configuration


def test_schedule_follows_the_paper_by_cut_depth() -> None:
    attack = OptimizationAttack(progress=False)
    attack.cut_info = {"relative_depth": DEPTH_THRESHOLD - 0.05}
    assert attack.resolve_schedule() == "shallow"
    assert (attack.settings.lr, attack.steps_per_image) == (1e-2, 500)
    attack.cut_info = {"relative_depth": DEPTH_THRESHOLD + 0.05}
    assert attack.resolve_schedule() == "deep"
    assert (attack.settings.lr, attack.steps_per_image) == (1e-3, 5000)
    attack = OptimizationAttack(schedule="deep", steps=7, progress=False)
    attack.resolve_schedule()
    assert (attack.settings.lr, attack.steps_per_image) == (1e-3, 7)
    with pytest.raises(SplitinvError, match="schedule=auto needs the cut's relative depth"):
        OptimizationAttack().resolve_schedule()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"feature_loss": "l3"}, "unknown attack.feature_loss 'l3'"),
        ({"schedule": "medium"}, "unknown attack.schedule 'medium'.*auto, shallow, deep"),
        ({"optimizer": "lbfgs"}, "unknown attack.optimizer"),
        ({"lr": -1.0}, "attack.lr must be a finite number > 0"),
        ({"tv_wieght": 1.0}, "unknown setting attack.tv_wieght"),
        ({"access": "black-box"}, "need the head's weights"),
        ({"lr_schedule": "step"}, "lr_step_every"),
        ({"feature_weight": 0.0}, "every loss weight"),
    ],
)
def test_bad_settings_are_one_line_errors(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(SplitinvError, match=message) as err:
        OptimizationAttack(**kwargs)
    assert "\n" not in str(err.value)


def test_configs_compose_and_missing_decoder_is_one_line(tmp_path: Path) -> None:
    for name, target in (("rmle", "OptimizationAttack"), ("mahendran", "OptimizationAttack")):
        cfg = compose([f"attack={name}"])
        attack = instantiate(cfg.attack)
        assert type(attack).__name__ == target and attack.name == name
        assert attack.knowledge.access == "white-box" and attack.knowledge.aux_data == "none"
    mahendran = instantiate(compose(["attack=mahendran"]).attack).describe()
    assert (mahendran["feature_loss"], mahendran["optimizer"], mahendran["tv_beta"]) == ("nmse", "sgd", 2.0)
    assert mahendran["alpha"] == 6.0 and mahendran["alpha_weight"] == mahendran["tv_weight"] == 1e-5
    with pytest.raises(SplitinvError, match="aux_data=same or other"):
        instantiate(compose(["attack=hybrid", "attack.aux_data=none"]).attack)
    with pytest.raises(SplitinvError, match="decoder_checkpoint .*nope.pt does not exist") as err:
        instantiate(compose(["attack=hybrid", f"attack.decoder_checkpoint={tmp_path}/nope.pt"]).attack)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "options",
    [
        {"param": "sigmoid", "lr": 0.1},
        {"optimizer": "adamw", "lr_schedule": "cosine", "feature_loss": "cosine", "lr": 0.05},
        {"optimizer": "sgd", "feature_loss": "nmse", "lr": 50.0, "lr_schedule": "step", "lr_step_every": 20},
        {"bn_weight": 0.01, "bn_per_image": False, "lr": 0.05},
    ],
)
def test_loop_options_reduce_the_feature_loss(options: dict[str, Any]) -> None:
    torch.manual_seed(0)
    head = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3)
    ).eval()
    x = torch.rand(3, 3, 12, 12)
    with torch.no_grad():
        f = head(x)
    attack = OptimizationAttack(steps=60, progress=False, **options)
    attack.fit(AttackContext.for_head(head, (3, 12, 12)))
    x_hat = attack.invert(f, index=[0, 1, 2]).images
    assert x_hat.shape == x.shape and 0 <= x_hat.min() and x_hat.max() <= 1
    kind = options.get("feature_loss", "mse")
    start = feature_loss(head(torch.full_like(x, 0.5)), f, kind)
    assert (feature_loss(head(x_hat), f, kind) < 0.7 * start).all()
    assert all(not p.requires_grad or p.grad is None for p in head.parameters())


def test_nan_loss_is_a_clear_error() -> None:
    head = nn.Conv2d(3, 4, 3)
    attack = OptimizationAttack(schedule="shallow", steps=3, progress=False, check_every=1)
    attack.fit(AttackContext.for_head(head, (3, 8, 8)))
    with pytest.raises(SplitinvError, match="loss became nan/inf by step 1: lower attack.lr") as err:
        attack.invert(torch.full((2, 4, 6, 6), float("nan")))
    assert "\n" not in str(err.value)


ZERO_GRADIENT = [  # the issue's case: He et al.'s preset starts a random-weight BatchNorm ResNet at 0
    "victim=resnet18", "victim.image_size=32", "data=fashion_mnist_mini", "data.n_eval=2", "attack=rmle",
    "attack.preset=he2019", "attack.steps=30", "cut=layer1", "logger=csv", "lpips=off", "utility_test=false",
    "attack.progress=false",
]  # fmt: skip


@pytest.mark.usefixtures("one_thread")
def test_a_start_with_a_zero_gradient_stops_in_one_line_and_noise_starts_it(tmp_path: Path) -> None:
    with pytest.raises(SplitinvError, match="gradient is exactly zero at the start image for 2 of 2") as err:
        run(compose(ZERO_GRADIENT, output_dir=tmp_path / "mean"))
    assert "\n" not in str(err.value) and "attack.init=noise" in str(err.value)
    assert not (tmp_path / "mean" / "metrics.json").exists()
    # the fix the message names: the preset's other settings, from a noisy start, move the image
    noisy = [*ZERO_GRADIENT, "attack.init=noise", "attack.steps=5"]
    record = run(compose(noisy, output_dir=tmp_path / "noise"))
    _, images = load_images(tmp_path / "noise" / IMAGES_FILE)
    assert record["details"]["attack"]["init"] == "noise" and record["details"]["attack"]["eps"] == 1e-3
    assert float(images.flatten(1).std(1).min()) > 0


# ----------------------------------------------------------------------------------- on a trained victim


@pytest.mark.parametrize("attack", ["rmle", "mahendran", "hybrid"])
def test_attack_beats_trivial_reconstructions(
    tmp_path_factory: pytest.TempPathFactory, victim_path: Path, lpips_backbone: None, attack: str
) -> None:
    record, out = _cached(tmp_path_factory, victim_path, attack, "layer1")
    trivial = _trivial_scores()
    best_ssim = max(t["ssim"] for t in trivial.values())
    best_lpips = min(t["lpips"] for t in trivial.values())
    assert record["ssim"]["n"] == N_EVAL and record["lpips"]["n"] == N_EVAL
    assert record["ssim"]["mean"] > best_ssim + 0.15, (record["ssim"], trivial)
    assert record["lpips"]["mean"] < best_lpips - 0.02, (record["lpips"], trivial)  # random AlexNet: weak
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["access"] == "white-box"
    assert saved["aux_data"] == ("same" if attack == "hybrid" else "none")
    assert saved["cost"]["steps_per_image"] == STEPS[attack]
    assert saved["details"]["attack"]["schedule_used"] in ("shallow", "explicit")
    assert sorted(p.name for p in (out / "reconstructions").iterdir()) == [f"{i}.pt" for i in range(N_EVAL)]
    if attack == "hybrid":
        assert (out / "decoder.pt").is_file() and saved["cost"]["train_steps"] > 0


def test_deeper_cut_scores_worse(
    tmp_path_factory: pytest.TempPathFactory, victim_path: Path, lpips_backbone: None
) -> None:
    shallow, _ = _cached(tmp_path_factory, victim_path, "rmle", "layer1")
    deep, _ = _cached(tmp_path_factory, victim_path, "rmle", "layer3")
    assert deep["ssim"]["mean"] < shallow["ssim"]["mean"] - 0.1
    assert deep["lpips"]["mean"] > shallow["lpips"]["mean"]
    assert deep["feature_error"]["mean"] < 1.0  # the optimisation did match the deep features


def test_rerun_is_identical_and_skips_images_done(
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    victim_path: Path,
    lpips_backbone: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first, _ = _cached(tmp_path_factory, victim_path, "rmle", "layer1")
    attacked: list[int] = []
    real = optimize_module.optimize

    def counting(head: nn.Module, target: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        attacked.append(target.shape[0])
        return real(head, target, *args, **kwargs)

    monkeypatch.setattr(optimize_module, "optimize", counting)
    again = _run(tmp_path, "rmle", "layer1", victim_path)  # a fresh folder: every image attacked again
    assert sum(attacked) == N_EVAL
    for name in ("ssim", "psnr", "lpips", "feature_error"):
        assert again[name] == first[name], name  # same seed, same numbers
    # an interrupted job: results gone, one reconstruction missing -> only its batch (0, 1, 2) is attacked
    (tmp_path / "metrics.json").unlink()
    (tmp_path / "reconstructions" / "2.pt").unlink()
    attacked.clear()
    resumed = _run(tmp_path, "rmle", "layer1", victim_path)
    assert attacked == [3]
    assert resumed["ssim"] == first["ssim"] and resumed["psnr"] == first["psnr"]
    samples = pd.read_csv(tmp_path / "samples.csv")
    assert sorted(samples["index"]) == list(range(N_EVAL))
    # a changed setting never reuses stale reconstructions
    (tmp_path / "metrics.json").unlink()
    attacked.clear()
    _run(tmp_path, "rmle", "layer1", victim_path, "attack.steps=5")
    assert sum(attacked) == N_EVAL


def test_results_do_not_depend_on_batch_size(victim_path: Path, one_thread: None) -> None:
    victim = build_victim("resnet18", weights=str(victim_path), image_size=32, num_classes=10).eval()
    head, _ = cut(victim, "layer1")
    # random start, jitter, flips and the BN prior: every per-image random draw and term is exercised
    attack = OptimizationAttack(
        seed=3,
        init="noise",
        jitter=1,
        flip=True,
        bn_weight=0.01,
        steps=15,
        lr=0.01,
        tv_weight=1e-4,
        progress=False,
    )
    attack.fit(AttackContext.for_head(head, (3, 32, 32)))
    results = []
    for batch_size, trainer in ((N_EVAL, None), (2, "lightning"), (4, "lightning")):
        dm = FashionMNISTDataModule(vendored=True, image_size=32, n_eval=N_EVAL, batch_size=batch_size)
        tr = None
        if trainer:
            import lightning.pytorch as L

            # the default Trainer (inference_mode=True): the predict path switches it off itself
            tr = L.Trainer(
                accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
            )
        store, _prefix, attacked = reconstruct(Split(head), attack, dm.predict_dataloader(), trainer=tr)
        assert attacked == N_EVAL
        results.append(torch.stack([store._memory[i]["image"] for i in range(N_EVAL)]))
    assert torch.allclose(results[0], results[1], atol=1e-5) and torch.allclose(
        results[0], results[2], atol=1e-5
    )
    assert not torch.allclose(results[0], torch.full_like(results[0], 0.5), atol=0.05)


def test_bf16_autocast_gives_float32_images(victim_path: Path, one_thread: None) -> None:
    import lightning.pytorch as L

    victim = build_victim("resnet18", weights=str(victim_path), image_size=32, num_classes=10).eval()
    head, _ = cut(victim, "layer1")
    attack = OptimizationAttack(steps=5, lr=0.01, tv_weight=1e-4, bn_weight=0.01, progress=False)
    attack.fit(AttackContext.for_head(head, (3, 32, 32)))
    dm = FashionMNISTDataModule(vendored=True, image_size=32, n_eval=2, batch_size=2)
    images = []
    for precision in ("32-true", "bf16-mixed"):
        trainer = L.Trainer(
            accelerator="cpu",
            precision=precision,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        store, _prefix, _n = reconstruct(Split(head), attack, dm.predict_dataloader(), trainer=trainer)
        images.append(torch.stack([store._memory[i]["image"] for i in range(2)]))
    assert images[1].dtype == torch.float32 and torch.isfinite(images[1]).all()
    assert (images[1] - images[0]).abs().mean() < 0.01  # 5 steps of lr 0.01 in bf16 stay close


def test_evaluate_without_trainer_keeps_per_image_files(
    tmp_path: Path, victim_path: Path, one_thread: None
) -> None:
    victim = build_victim("resnet18", weights=str(victim_path), image_size=32, num_classes=10).eval()
    the_split = split(victim, "layer1")
    attack = OptimizationAttack(steps=5, lr=0.01, tv_weight=1e-4, progress=False)
    attack.fit(AttackContext.for_attack(attack, the_split, (3, 32, 32)))
    dm = FashionMNISTDataModule(vendored=True, image_size=32, n_eval=4, batch_size=3)
    ev = evaluate(
        the_split,
        attack,
        dm.predict_dataloader(),
        lpips="off",
        progress=False,
        reconstructions_dir=tmp_path,
    )
    assert ev.attacked == 4 and ev.extra["skipped"] == 0 and attack.calls == 2
    ev2 = evaluate(
        the_split,
        attack,
        dm.predict_dataloader(),
        lpips="off",
        progress=False,
        reconstructions_dir=tmp_path,
    )
    assert ev2.attacked == 0 and attack.calls == 2 and ev2.per_image["ssim"] == ev.per_image["ssim"]
    obj = torch.load(tmp_path / "0.pt", weights_only=True)
    assert obj["image"].shape == (3, 32, 32) and obj["loss"] is not None
    assert ReconstructionStore(tmp_path).get(0, "wrong key") is None


def test_hybrid_reuses_a_decoder_checkpoint(
    tmp_path_factory: pytest.TempPathFactory, victim_path: Path, lpips_backbone: None
) -> None:
    _record, out = _cached(tmp_path_factory, victim_path, "hybrid", "layer1")
    victim = build_victim("resnet18", weights=str(victim_path), image_size=32, num_classes=10).eval()
    head, _ = cut(victim, "layer1")
    attack = HybridAttack(decoder_checkpoint=str(out / "decoder.pt"), steps=3, lr=0.01, progress=False)
    stats = attack.fit(AttackContext.for_head(head, (3, 32, 32)))  # no data needed: the decoder is loaded
    assert stats == {} and attack.describe()["init"] == "decoder"
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        f = head(x)
    start = attack.decoder_attack.invert(f).images
    x_hat = attack.invert(f, index=torch.tensor([0, 1])).images
    assert x_hat.shape == x.shape and (x_hat - start).abs().max() < 0.0301  # 3 Adam steps of lr 0.01
    deep_head, _ = cut(victim, "layer2")
    with pytest.raises(SplitinvError, match="trained on features of shape \\(64, 8, 8\\).*same cut point"):
        HybridAttack(decoder_checkpoint=str(out / "decoder.pt"), schedule="deep", progress=False).fit(
            AttackContext.for_head(deep_head, (3, 32, 32))
        )
