"""dFIL (splitinv/leakage.py): the Cramer-Rao bound attained by least squares on an orthonormal linear head,
Hutchinson against the exact trace, the relative-noise scale term against a Monte Carlo Fisher information,
null bounds for defenses without a noise model, and target_dfil calibration."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from splitinv.defenses import ActivationDropout, GaussianNoise, LaplaceNoise
from splitinv.errors import SplitinvError
from splitinv.leakage import dfil, jacobian_trace, leakage_bound, van_trees_mse
from splitinv.split import Split
from splitinv.victims import Normalize


class LinearHead(nn.Module):
    """x in [0, 1] (B, 1, 4, 4) -> A ((x - 0.5) / 0.25) with A^T A = I (an orthogonal expansion)."""

    def __init__(self, a: torch.Tensor) -> None:
        super().__init__()
        self.normalize = Normalize((0.5,), (0.25,))
        self.register_buffer("a", a)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.normalize(x).flatten(1) @ self.a.T


def orthonormal(m: int, d: int, seed: int = 0) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(m, d, generator=torch.Generator().manual_seed(seed)))
    return q  # m x d, Q^T Q = I


def test_least_squares_attains_the_cramer_rao_bound_on_an_orthonormal_linear_head():
    torch.manual_seed(0)
    a = orthonormal(40, 16)
    head = LinearHead(a)
    sigma = 0.3
    the_split = Split(head, defense=GaussianNoise(scale=sigma, seed=1))
    x = torch.rand(8, 1, 4, 4)
    bound = dfil(head, the_split.defense, x, probes=8)
    # the normalisation's 1/0.25 is in the Jacobian: dFIL = Tr(A^T A) / 0.25^2 / (d sigma^2) = 16 / sigma^2
    draws = []
    for _ in range(400):
        v = the_split.observe(x)
        x_hat = 0.5 + 0.25 * (v @ a).reshape(x.shape)  # least squares: the pseudo-inverse of the head
        draws.append((x_hat - x).pow(2).flatten(1).mean(1))
    mse = torch.stack(draws).mean(0)
    assert torch.allclose(mse * bound.float(), torch.ones(8), rtol=0.05)


def test_laplace_fisher_is_one_over_b_squared_and_gaussian_one_over_sigma_squared():
    head = LinearHead(orthonormal(40, 16))
    x = torch.rand(3, 1, 4, 4)
    g = dfil(head, GaussianNoise(scale=0.2), x, probes=0)
    lap = dfil(head, LaplaceNoise(scale=0.2), x, probes=0)
    assert torch.allclose(g, torch.full((3,), 16 / 0.04, dtype=torch.float64))
    assert torch.allclose(lap, g)  # Laplace(0, b): location information 1 / b^2, as N(0, b^2)'s


def small_cnn() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 6, 3, stride=2), nn.ReLU())


def exact_trace(head: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = []
    for xi in x:
        jac = torch.autograd.functional.jacobian(lambda z: head(z[None])[0], xi)
        out.append(jac.reshape(-1, xi.numel()).double().pow(2).sum())
    return torch.stack(out)


def test_hutchinson_agrees_with_the_exact_trace_on_a_small_cnn_head():
    head = small_cnn().eval()
    x = torch.rand(3, 1, 10, 10)
    exact = exact_trace(head, x)
    assert torch.allclose(jacobian_trace(head, x, probes=0), exact, rtol=1e-4)
    estimate = jacobian_trace(head, x, probes=256, seed=5)
    assert torch.allclose(estimate, exact, rtol=0.05)
    assert not torch.allclose(estimate, exact, rtol=1e-6)  # an estimate, not the basis-vector trace


def test_relative_noise_adds_the_information_in_its_scale():
    """Tr I for N(h(x), s(x)^2 I), s = scale * std(h(x)), against E ||grad_x log p(e | x)||^2 by sampling."""
    head = small_cnn().eval()
    x = torch.rand(1, 1, 10, 10)
    defense = GaussianNoise(scale=20.0, relative=True)  # the scale term dominates
    d = x.numel()
    computed = float(dfil(head, defense, x, probes=0)) * d
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        h0 = head(x)
        s0 = 20.0 * h0.flatten().std(correction=0)
    scores = []
    for _ in range(3000):
        e = h0 + s0 * torch.randn(h0.shape, generator=gen)
        xg = x.clone().requires_grad_(True)
        h = head(xg)
        s = 20.0 * h.flatten().std(correction=0)
        logp = -h.numel() * torch.log(s) - (e - h).pow(2).sum() / (2 * s**2)
        (g,) = torch.autograd.grad(logp, xg)
        scores.append(g.double().pow(2).sum())
    monte_carlo = float(torch.stack(scores).mean())
    assert computed == pytest.approx(monte_carlo, rel=0.1)
    mean_only = float(jacobian_trace(head, x, probes=0)) / float(s0) ** 2
    assert computed > 2 * mean_only  # the scale term matters here


def test_defenses_without_a_noise_model_get_null_with_the_reason():
    head = small_cnn()
    batches = [torch.rand(2, 1, 10, 10)]
    for defense, why in ((None, "no noise"), (ActivationDropout(p=0.5), "dropout")):
        bound = leakage_bound(head, defense, batches)
        assert bound["dfil_mean"] is None and why in bound["reason"]
    with pytest.raises(SplitinvError, match="no dFIL") as err:
        dfil(head, ActivationDropout(p=0.5), batches[0])
    assert "\n" not in str(err.value)


def test_bound_record_and_van_trees():
    head = LinearHead(orthonormal(40, 16))
    bound = leakage_bound(head, GaussianNoise(scale=0.5), [torch.rand(4, 1, 4, 4)], probes=4)
    assert bound["dfil_mean"] == pytest.approx(64.0) and bound["dfil_min"] == pytest.approx(64.0)
    assert bound["mse_floor_mean"] == pytest.approx(1 / 64)
    assert bound["psnr_ceiling_mean"] == pytest.approx(10 * math.log10(64))
    json.dumps(bound)
    # a prior adds information: the biased floor is lower than the unbiased one
    assert van_trees_mse(64.0, 16 * 64.0, 16) == pytest.approx(1 / 128)


def test_target_dfil_and_scale_are_exclusive():
    with pytest.raises(SplitinvError, match="both set") as err:
        GaussianNoise(scale=0.1, target_dfil=10.0)
    assert "\n" not in str(err.value)
    with pytest.raises(SplitinvError, match="relative"):
        GaussianNoise(target_dfil=10.0, relative=True)
    with pytest.raises(SplitinvError, match="not calibrated"):
        GaussianNoise(target_dfil=10.0)(torch.zeros(2, 3))


LENET = [
    "victim=he2019_mnist", "data=mnist_mini", "data.n_aux=64", "data.n_eval=16", "data.batch_size=16",
    "trainer.max_epochs=1", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "logger=csv",
    "cut=conv1", "lpips=off", "attack=decoder", "utility_test=false", "baselines=false", "sheets=none",
]  # fmt: skip


@pytest.mark.usefixtures("one_thread")
def test_target_dfil_is_met_on_the_evaluation_images(tmp_path):
    from splitinv.config import compose
    from splitinv.run import run

    target = 40.0
    # ReLU2: a nonlinear head, whose Jacobian (and dFIL) differs from one image to the next
    overrides = [
        *LENET,
        "cut=ReLU2",
        "defense=gaussian",
        f"defense.target_dfil={target}",
        "defense.calibration_images=64",
    ]
    record = run(compose(overrides, output_dir=tmp_path / "target"))
    bound = record["leakage_bound"]
    # calibrated on 64 auxiliary digits, measured on 16 other (evaluation) digits
    assert bound["dfil_mean"] == pytest.approx(target, rel=0.10)
    sigma = bound["calibration"]["sigma"]
    assert (
        record["details"]["defense"]["scale"] == sigma
        and record["details"]["defense"]["target_dfil"] == target
    )
    assert bound["dfil_min"] < 0.99 * bound["dfil_mean"]  # the images differ: not a constant Jacobian
    stored = json.loads((tmp_path / "target" / "metrics.json").read_text())
    assert stored["leakage_bound"]["dfil_mean"] == bound["dfil_mean"]
    with pytest.raises(SplitinvError, match="both set"):
        run(compose([*overrides, "defense.scale=0.2"], output_dir=tmp_path / "both"))


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_the_bound_reaches_tables_figure_and_advisor(tmp_path):
    """A two-strength gaussian sweep: psnr_ceiling in collect's rows and the table, a dotted ceiling curve in
    the privacy-utility figure, the advisor's dFIL column and --max-dfil keeping the noisier row only."""
    import subprocess

    from splitinv import advise as adv
    from splitinv.report import collect, plot_privacy_utility, table

    sweep = tmp_path / "sweep"
    cmd = [
        "splitinv-run",
        "-m",
        *LENET,
        "defense=gaussian",
        "defense.scale=0.5,2.0",
        f"hydra.sweep.dir={sweep}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    frame = collect(sweep)
    by_scale = frame.set_index("defense_strength")
    # conv1 is linear: dFIL is the same for every image, and scales as 1 / sigma^2
    assert by_scale.loc[0.5, "dfil_mean"] == pytest.approx(16 * by_scale.loc[2.0, "dfil_mean"], rel=0.05)
    assert by_scale.loc[0.5, "psnr_ceiling"] == pytest.approx(
        10 * math.log10(by_scale.loc[0.5, "dfil_mean"]), abs=0.01
    )
    text = table(frame, rows="defense_setting", cols=None, metrics=["psnr", "psnr_ceiling"])
    assert "PSNR ceiling" in text and f"{by_scale.loc[2.0, 'psnr_ceiling']:.2f}" in text
    (png, *_) = plot_privacy_utility(frame, tmp_path / "fig", metric="psnr")
    assert png.is_file()
    rows = adv.advise(sweep, latency_runs=1, warmup=0, attacked_only=True)
    assert "dFIL" in adv.render(rows)
    low = float(rows["dfil"].min())
    verdict = adv.constrain(rows, {"max_dfil": low * 1.01})
    cuts = verdict.rows[verdict.rows["baseline"].isna()]  # the device row sends no features: it meets any cap
    assert len(cuts) == 1 and float(cuts["dfil"].iloc[0]) == low  # the sigma = 2 row
    assert list(verdict.rows["baseline"].dropna()) == ["device"]
    assert list(adv.constrain(rows, {"max_dfil": low * 0.5}).rows["cut"]) == ["device"]
