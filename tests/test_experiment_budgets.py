"""Every CPU-sized experiment (conf/experiment/*_cpu.yaml) gives its decoder a budget that learns: at the
shallowest cut it sweeps, at the experiment's own size, most reconstructions beat their own image's 4x4
low-pass (verdict ``leaks``). The config is the experiment's; only the swept keys are fixed to one job each:
the first cut, the first seed, every option that makes the attack a decoder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from splitinv import baselines
from splitinv.config import compose, config_groups
from splitinv.run import run

CPU_EXPERIMENTS = sorted(e for e in config_groups()["experiment"] if e.endswith("_cpu"))
# experiments documented with a trained victim (victim.weights=...): the fixture that trains one
TRAINED = {"split_advisor_cpu": "quickstart_victim", "defense_comparison_cpu": "quickstart_victim",
           "he2019_mnist_cpu": "lenet_victim"}  # fmt: skip


def decoder_jobs(experiment: str) -> list[list[str]]:
    """The experiment's sweep reduced to its decoder jobs at its shallowest cut: one override list each."""
    cfg = compose([f"experiment={experiment}"], return_hydra_config=True)
    jobs: list[list[str]] = [[]]
    for key, values in cfg.hydra.sweeper.params.items():
        options = [v.strip() for v in str(values).split(",")]
        if key in ("cut", "seed"):
            options = options[:1]  # the sweep lists cuts from the shallowest
        jobs = [[*job, f"{key}={o}"] for job in jobs for o in options]
    return [job for job in jobs if compose([f"experiment={experiment}", *job]).attack.name == "decoder"]


@pytest.fixture(scope="module")
def lenet_victim(tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> Path:
    """He et al.'s LeNet trained briefly with its recipe (2 epochs on the vendored MNIST subset)."""
    from splitinv.train_victim import train_victim

    out = tmp_path_factory.mktemp("lenet")
    overrides = ["recipe=he2019_mnist", "trainer.max_epochs=2", "trainer.enable_progress_bar=false",
                 f"checkpoint={out / 'lenet.pt'}", "logger=csv"]  # fmt: skip
    train_victim(compose(overrides, output_dir=out, config_name="train_victim"))
    return out / "lenet.pt"


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("experiment", CPU_EXPERIMENTS)
def test_the_shallowest_cut_decoder_beats_the_lowpass(
    experiment: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    trained = TRAINED.get(experiment)
    weights = [f"victim.weights={request.getfixturevalue(trained)}"] if trained else []
    common = [f"experiment={experiment}", *weights, "logger=csv", "lpips=off",
              "trainer.enable_progress_bar=false", f"cache.dir={tmp_path / 'cache'}"]  # fmt: skip
    jobs = decoder_jobs(experiment)
    assert jobs and all(any(o.startswith("cut=") for o in job) for job in jobs), jobs
    failed: list[dict[str, Any]] = []
    for i, job in enumerate(jobs):
        record = run(compose([*common, *job], output_dir=tmp_path / str(i)))
        assert record["attack"] == "decoder" and record["n_eval"] >= 4
        if record["verdict"] != baselines.LEAKS:
            failed.append({"job": job, "ssim": record["ssim"]["mean"], "beats": record["beats_lowpass4"]})
    assert not failed, failed
