"""Defenses in runs: the identity reproduces the undefended numbers, adaptive attackers differentiate through
the defense (EOT for stochastic ones, straight-through for quantisation), and the CPU-sized defense comparison
runs end to end (sweep -> privacy-utility figure -> table)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from splitinv.attacks import AttackContext, OptimizationAttack
from splitinv.attacks.optimize import expected_feature_loss, feature_loss
from splitinv.config import compose
from splitinv.defenses import Defense, GaussianNoise, Quantize
from splitinv.report import collect, table
from splitinv.run import run
from splitinv.split import Split

TINY = [
    "victim=resnet18", "victim.image_size=32", "data=fashion_mnist_mini", "data.n_aux=32",
    "data.n_eval=4", "data.batch_size=8", "trainer.max_epochs=1", "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false", "logger=csv", "cut=layer1", "lpips=off", "attack=decoder",
    "utility_test=false",
]  # fmt: skip
NUMBERS = ("ssim", "psnr", "feature_error", "label_agreement")


@pytest.mark.usefixtures("one_thread")
def test_a_zero_strength_defense_reproduces_the_undefended_numbers(tmp_path: Path) -> None:
    plain = run(compose(TINY, output_dir=tmp_path / "none"))
    zero = run(compose([*TINY, "defense=gaussian", "defense.scale=0"], output_dir=tmp_path / "zero"))
    for name in NUMBERS:
        assert zero[name] == plain[name], name  # bit for bit: the defense draws from its own generator
    assert zero["utility"] == plain["utility"]
    assert (zero["defense"], zero["defense_strength"], plain["defense"]) == ("gaussian", 0.0, "none")


class Scales(Defense):
    """Multiplies by 1, 2, 3, ... on successive calls: a stand-in stochastic defense with known draws."""

    name = "scales"
    stochastic = True

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        out = torch.cat([h[i : i + 1] * (self.calls + i + 1) for i in range(h.shape[0])])
        self.calls += h.shape[0]
        return out


def test_eot_averages_the_draws_in_one_batch() -> None:
    head = nn.Conv2d(3, 4, 3)
    x, target = torch.rand(2, 3, 8, 8), torch.rand(2, 4, 6, 6)
    model = nn.Sequential(head, Scales())
    loss = expected_feature_loss(model, x, target, "mse", samples=3)
    assert model[1].calls == 6  # 3 replicas of 2 images, one forward pass
    with torch.no_grad():
        h = head(x)
    draws = [feature_loss(h * (r * 2 + torch.arange(1, 3).view(2, 1, 1, 1)), target) for r in range(3)]
    torch.testing.assert_close(loss, torch.stack(draws).mean(0))


def test_adaptive_attacks_use_eot_only_against_stochastic_defenses() -> None:
    head = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    for defense, expected in ((GaussianNoise(scale=0.1), 4), (Quantize(bits=2), 1)):
        attack = OptimizationAttack(steps=2, lr=0.01, progress=False, eot_samples=4)
        attack.fit(AttackContext.for_attack(attack, Split(head, defense=defense), (3, 8, 8)))
        assert attack.describe()["eot_samples"] == expected
    naive = OptimizationAttack(steps=2, lr=0.01, progress=False, eot_samples=4, defense_aware=False)
    naive.fit(AttackContext.for_attack(naive, Split(head, defense=GaussianNoise(scale=0.1)), (3, 8, 8)))
    assert naive.describe()["eot_samples"] == 1  # the naive attacker models no defense


def test_an_adaptive_attacker_optimises_through_quantisation() -> None:
    torch.manual_seed(0)
    head = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3)).eval()
    the_split = Split(head, defense=Quantize(bits=3))
    x = torch.rand(2, 3, 12, 12)
    with torch.no_grad():
        v = the_split.observe(x)
    results = {}
    for aware in (True, False):
        attack = OptimizationAttack(steps=80, lr=0.05, progress=False, defense_aware=aware)
        attack.fit(AttackContext.for_attack(attack, the_split, (3, 12, 12)))
        x_hat = attack.invert(v, index=[0, 1]).images
        with torch.no_grad():
            results[aware] = float(feature_loss(the_split.observe(x_hat), v).mean())
    with torch.no_grad():
        start = float(feature_loss(the_split.observe(torch.full_like(x, 0.5)), v).mean())
    # the straight-through gradient lets the adaptive attacker match the quantised observation
    assert results[True] < 0.5 * start, (results, start)


@pytest.mark.slow
def test_the_cpu_defense_comparison_runs_end_to_end(tmp_path: Path, quickstart_victim: Path) -> None:
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    common = [
        "experiment=defense_comparison_cpu", f"victim.weights={quickstart_victim}", "data.n_aux=32",
        "data.n_eval=4", "cut=layer1", f"cache.dir={tmp_path / 'cache'}",
    ]  # fmt: skip
    sweeps = {
        "none": ["defense=none", "attack.defense_aware=true"],
        "gaussian": ["defense=gaussian", "defense.relative=true", "defense.scale=0.5,4"],
    }
    script = Path(sys.executable).with_name("splitinv-run")
    for name, overrides in sweeps.items():
        proc = subprocess.run(
            [str(script), "-m", *common, *overrides, f"hydra.sweep.dir={tmp_path / 'sweep' / name}"],
            capture_output=True, text=True, env=env, timeout=600,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
    frame = collect(tmp_path / "sweep")
    assert len(frame) == 1 + 2 * 2 and (frame["status"] == "ok").all()
    assert set(frame["attacker"]) == {"-", "naive", "adaptive"}
    assert set(frame["defense_setting"]) == {"none", "gaussian@0.5", "gaussian@4.0"}
    text = table(frame, rows="defense_setting", cols="cut+attacker", metrics=["utility", "ssim"])
    assert "layer1/naive accuracy ↑" in text and "| gaussian@4.0 |" in text
    cli = Path(sys.executable).with_name("splitinv")
    proc = subprocess.run(
        [str(cli), "plot", "--privacy-utility", str(tmp_path / "sweep"), "--metrics", "ssim"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "sweep" / "figures" / "privacy_utility_ssim.png").is_file()
    agreement = frame.groupby("defense_setting")["utility_agreement"].mean()
    assert agreement["none"] == 1.0 and agreement.between(0, 1).all()
    # on the trained victim, the whole test split: noise at 4x the activations' std costs accuracy
    accuracy = frame.groupby("defense_setting")["utility_test"].mean()
    assert accuracy["gaussian@4.0"] < accuracy["none"] - 0.05, accuracy
