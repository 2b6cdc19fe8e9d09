"""The DCI study (experiments/dci_study.sh): its configs, and the whole study at test size."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_study_runs_dci_at_its_own_defaults() -> None:
    from splitinv.config import compose

    defaults = compose(["attack=dci"]).attack
    study = compose(["experiment=dci_study", "+experiment/dci_setting=dci"])
    for key, value in study.dci_study.dci.items():
        assert study.attack[key] == value == defaults[key], key
    assert study.trainer.max_epochs == compose(["attack=dci"]).trainer.max_epochs  # the trainer's default
    alone = compose(["+experiment/dci_setting=dci"])  # outside the study: the same defaults (fallbacks)
    assert {k: alone.attack[k] for k in study.dci_study.dci} == {k: defaults[k] for k in study.dci_study.dci}
    assert alone.trainer.max_epochs == study.trainer.max_epochs
    for setting, key, value in [
        ("dci_nocycle", "cycle_weight", 0.0),
        ("dci_single", "blocks", "single"),
        ("dci_aux", "inverter_data", "aux"),
        ("dci_synth", "synth_iterations", 25),  # dci_study_cpu's ablation_synth_iterations
    ]:
        attack = compose(["experiment=dci_study_cpu", f"+experiment/dci_setting={setting}"]).attack
        assert attack[key] == value and attack.name.startswith(setting.split("_")[0] + "_")
        assert attack.synth_images == 64  # the variant's budget reaches every DCI setting
    rmle = compose(["experiment=dci_study_cpu", "+experiment/dci_setting=rmle"]).attack
    assert (rmle.name, rmle.steps) == ("rmle", 1500) and "synth_images" not in rmle


def test_interval_is_students_t() -> None:
    sys.path.insert(0, str(ROOT / "experiments" / "scripts"))
    from dci_study_report import interval

    mean, lo, hi, n = interval(pd.Series([0.2, 0.4, 0.6]))
    assert n == 3 and mean == pytest.approx(0.4)
    assert hi - mean == pytest.approx(4.302653 * 0.2 / 3**0.5, rel=1e-5)  # t(0.975, 2) s / sqrt(n)
    assert mean - lo == pytest.approx(hi - mean)


@pytest.mark.slow
def test_the_study_runs_end_to_end_at_test_size(tmp_path: Path) -> None:
    """Victim, both sweeps (2 cuts x 3 seeds x 3 attacks; 4 ablations x 3 seeds), the table, the figure."""
    out = tmp_path / "study"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        ["bash", "experiments/dci_study.sh", str(out), "dci_study_tiny", "trainer.enable_progress_bar=false"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = pd.read_csv(out / "study.csv")
    assert len(rows) == 2 * 3 * 3 + 4 * 3 and set(rows["status"]) == {"ok"}
    assert set(rows["attack"]) == {
        "dci",
        "rmle",
        "decoder",
        "dci_nocycle",
        "dci_single",
        "dci_synth4",
        "dci_aux",
    }
    aux = rows[rows["attack"] == "dci_aux"]
    assert set(aux["aux_data"]) == {"same"} and set(rows[rows["attack"] == "dci"]["aux_data"]) == {"none"}
    table = (out / "table.md").read_text()
    for line in (
        "| dci SSIM |",
        "| rmle SSIM |",
        "| decoder SSIM |",
        "| lowpass4 SSIM (baseline) |",
        "| dci_aux |",
    ):
        assert line in table
    assert "over 3 seeds" in table and "n/a" not in table and "(1 seed)" not in table
    assert (out / "ssim_vs_depth.png").stat().st_size > 10_000
