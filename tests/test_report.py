"""Tables from a sweep folder, and the `splitinv` command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from splitinv import cli
from splitinv.report import collect, table
from splitinv.results import RESULTS_FORMAT, write_digest


def _job(
    root: Path, name: str, victim: str, cut: str, depth: float, seed: int, ssim: float, psnr: float
) -> None:
    job = root / name
    job.mkdir(parents=True)
    (job / ".hydra").mkdir()
    (job / ".hydra" / "config.yaml").write_text(f"victim: {{name: {victim}}}\ncut: {cut}\nseed: {seed}\n")
    record = {
        "format": RESULTS_FORMAT,
        "status": "ok",
        "lpips": None,
        "ssim": {"mean": ssim, "std": 0.01, "n": 8},
        "psnr": {"mean": psnr, "std": 1.0, "n": 8},
        "victim": victim,
        "weights": "trained",
        "cut": cut,
        "attack": "decoder",
        "data": "photos",
        "seed": seed,
        "details": {"cut": {"index": int(depth * 10), "relative_depth": depth}},
    }
    (job / "metrics.json").write_text(json.dumps(record))
    write_digest(job / "metrics.json")  # as splitinv writes it: an unsigned file counts as edited


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    root = tmp_path / "sweep"
    n = 0
    for victim in ("resnet18", "vgg16_bn"):
        for cut, depth, base in (("layer3", 0.6, 0.4), ("layer1", 0.2, 0.8)):
            for seed in (0, 1):
                bump = 0.02 * seed + (0.05 if victim == "vgg16_bn" else 0)
                _job(root, str(n), victim, cut, depth, seed, base + bump, 20 * base + seed)
                n += 1
    failed = root / str(n)
    (failed / ".hydra").mkdir(parents=True)
    (failed / ".hydra" / "config.yaml").write_text("victim: {name: resnet18}\ncut: layer4\nseed: 0\n")
    (failed / "failed.json").write_text(json.dumps({"error": "decoder loss became nan"}))
    return root


def test_collect_keeps_failed_jobs(sweep: Path) -> None:
    frame = collect(sweep)
    assert len(frame) == 9
    failed = frame[frame["status"] == "failed"]
    assert list(failed["cut"]) == ["layer4"] and "nan" in failed["error"].iloc[0]


def test_markdown_table_means_over_seeds_and_marks_the_best(sweep: Path) -> None:
    text = table(collect(sweep), rows="cut", cols="victim", metrics=["ssim", "psnr"], fmt="md")
    lines = [line for line in text.strip().splitlines() if line.startswith("|")]  # the legend follows
    assert lines[0].startswith("| cut | resnet18 SSIM ↑ | resnet18 PSNR ↑ | vgg16_bn SSIM ↑")
    # rows ordered by cut depth: layer1 (0.2) before layer3 (0.6), then the failed layer4 (unknown depth)
    assert [line.split("|")[1].strip() for line in lines[2:]] == ["layer1", "layer3", "layer4"]
    layer1 = lines[2].split("|")
    # mean of 0.80 and 0.82 ± the 95 % t half-width over the two seeds (12.706 x 0.01), best in column
    assert layer1[2].strip() == "**0.810 ± 0.127**"
    assert layer1[4].strip() == "**0.860 ± 0.127**" and layer1[-2].strip() == "2 × 8"  # seeds x images
    assert lines[3].split("|")[2].strip() == "0.410 ± 0.127"  # not the best: no bold
    assert "failed" in lines[4]  # the failed job is shown, not dropped


def test_lower_is_better_for_lpips_direction(tmp_path: Path) -> None:
    root = tmp_path / "s"
    for i, (cut, psnr) in enumerate((("a", 10.0), ("b", 20.0))):
        _job(root, str(i), "resnet18", cut, i / 2, 0, 0.5, psnr)
    frame = collect(root)
    frame["lpips"] = [0.2, 0.1]
    text = table(frame, rows="cut", cols=None, metrics=["lpips"], fmt="md")
    assert "LPIPS ↓" in text and "**0.100**" in text and "**0.200**" not in text


def test_latex_table_is_booktabs_with_bold_best(sweep: Path) -> None:
    text = table(collect(sweep), rows="cut", cols="victim", metrics=["ssim"], fmt="latex")
    assert text.startswith(r"\begin{tabular}{lccc}") and r"\toprule" in text and r"\bottomrule" in text
    assert r"\multicolumn{1}{c}{vgg16\_bn}" in text
    assert r"\textbf{0.810 $\pm$ 0.127}" in text and r"SSIM $\uparrow$" in text
    assert r"attacker: SSIM $\uparrow$" in text  # whose view the arrow is


def test_csv_table_has_numbers_and_counts(sweep: Path) -> None:
    text = table(collect(sweep), rows="cut", cols="victim", metrics=["ssim"], fmt="csv")
    header = text.splitlines()[0].split(",")
    assert header[:5] == ["cut", "victim", "ssim_mean", "ssim_std", "ssim_count"]
    assert "layer1,resnet18,0.81" in text


def test_table_command_prints_and_writes(sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cli.main(["table", str(sweep), "--metrics", "ssim"])
    assert "| layer1 |" in capsys.readouterr().out
    out = tmp_path / "t.tex"
    cli.main(["table", str(sweep), "--format", "latex", "-o", str(out)])
    assert out.read_text().startswith(r"\begin{tabular}")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["table", "/no/such/sweep"], "not a folder"),
        (["table", "SWEEP", "--metrics", "ssimm"], "unknown metric 'ssimm'"),
        (["table", "SWEEP", "--rows", "layer"], "unknown table key 'layer'"),
        (["layers", "resnt18"], "unknown victim 'resnt18'.*resnet18"),
    ],
)
def test_cli_errors_are_one_line(
    argv: list[str], message: str, sweep: Path, capsys: pytest.CaptureFixture
) -> None:
    import re

    with pytest.raises(SystemExit) as exit_info:
        cli.main([a.replace("SWEEP", str(sweep)) for a in argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(message, err), err


def test_layers_command_lists_points_with_shapes(capsys: pytest.CaptureFixture) -> None:
    cli.main(["layers", "resnet18", "--image-size", "64", "--width", "120"])
    out = capsys.readouterr().out
    for name, shape in (("layer1", "64x16x16"), ("layer2", "128x8x8"), ("layer4", "512x2x2"), ("fc", "1000")):
        line = next(line for line in out.splitlines() if f" {name} " in line)
        assert shape in line
    assert "layer1.0.conv1" not in out  # inside a residual block: not a valid cut point


def test_table_help_names_every_metric_it_accepts():
    import re

    from splitinv.baselines import NAMES, SCORED
    from splitinv.cli import TABLE_METRICS
    from splitinv.report import BASELINES, DIRECTIONS

    listed = set(re.findall(r"[a-z_0-9]+", TABLE_METRICS.split(", and the")[0]))
    assert listed == set(DIRECTIONS) - set(BASELINES)
    assert all(name in TABLE_METRICS for name in (*NAMES, *SCORED))


def test_unresolved_placeholders_never_show_in_tables(tmp_path):
    from splitinv.report import collect

    job = tmp_path / "0" / ".hydra"
    job.mkdir(parents=True)
    (job / "config.yaml").write_text(
        "layer: block2\ncut: ${layer}\nattack:\n  name: gan_invert\nvictim:\n  name: dcgan\n"
        "  weights: ${paths.x}\npaths:\n  x: ${hydra:runtime.output_dir}\n"
    )
    frame = collect(tmp_path)
    row = frame.iloc[0]
    assert row["cut"] == "block2" and row["status"] == "missing"
    assert not any("${" in str(v) for v in row.values)


def test_depth_figure_is_titled_with_what_it_shows(tmp_path):
    import pandas as pd

    from splitinv.report import _figure_title

    frame = pd.DataFrame(
        {"victim": ["resnet18", "vit_b_16"], "attack": ["decoder"] * 2, "data": ["photos"] * 2,
         "defense_setting": ["none", "none"], "seed": [0, 1]}
    )  # fmt: skip
    assert _figure_title(frame) == "victim resnet18, vit_b_16; attack decoder; data photos (2 seeds)"


def _seeded_job(root: Path, name: str, cut: str, seed: int, ssim: float, grey: float, lowpass: float) -> None:
    """A finished job as run.py writes it, with known SSIM (mean, std 0.1 over 8 images) and the fractions
    of images beating grey and the 4x4 low-pass (with their verdict)."""
    from splitinv.baselines import verdict

    job = root / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "config.yaml").write_text(f"victim: {{name: resnet18}}\ncut: {cut}\nseed: {seed}\n")
    record = {
        "format": RESULTS_FORMAT,
        "status": "ok",
        **{k: {"mean": v, "std": 0.1, "n": 8} for k, v in (("ssim", ssim), ("psnr", 10 * ssim))},
        "lpips": None,
        "beats_grey": {"mean": grey, "std": 0.5, "n": 8},
        "beats_lowpass4": {"mean": lowpass, "std": 0.5, "n": 8},
        "verdict": verdict(grey, lowpass),
        **{"victim": "resnet18", "weights": "trained", "cut": cut, "attack": "decoder", "seed": seed},
        "details": {"cut": {"index": {"layer1": 2, "layer2": 5}[cut], "relative_depth": 0.1}},
    }
    (job / "metrics.json").write_text(json.dumps(record))
    write_digest(job / "metrics.json")


def test_tables_show_the_t_interval_over_seeds_n_and_the_verdict_of_the_seed_means(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import numpy as np
    from scipy import stats

    root = tmp_path / "sweep"
    # layer1: three seeds; seed 0 alone would leak (0.75 of its images beat the low-pass), their mean does not
    seeds = {0: (0.50, 0.75), 1: (0.60, 0.25), 2: (0.85, 0.20)}
    for seed, (ssim, lowpass) in seeds.items():
        _seeded_job(root, f"l1s{seed}", "layer1", seed, ssim, 0.9, lowpass)
    _seeded_job(root, "l2s0", "layer2", 0, 0.30, 0.25, 0.0)  # one seed, no better than grey
    values = np.array([v for v, _ in seeds.values()])
    half = stats.t.ppf(0.975, 2) * values.std(ddof=1) / np.sqrt(3)  # by hand: t over the 3 seed means
    images_half = stats.t.ppf(0.975, 7) * 0.1 / np.sqrt(8)  # one seed: t over its 8 images
    assert round(half, 3) != round(images_half, 3)
    assert cli.main(["table", str(root), "--cols", "none", "--metrics", "ssim,utility"]) is None
    text = capsys.readouterr().out
    rows = {
        line.split("|")[1].strip(): line.split("|")[2:-1] for line in text.splitlines() if "| layer" in line
    }
    assert [c.strip() for c in rows["layer1"]] == [f"**{values.mean():.3f} ± {half:.3f}†**", "n/a", "3 × 8"]
    assert [c.strip() for c in rows["layer2"]] == [f"0.300 ± {images_half:.3f}§‡", "n/a", "1 × 8"]
    assert "95 % Student-t interval over the per-seed means" in text
    assert "§ one seed: the interval is over that seed's images" in text
    assert "† no better than a low-pass image" in text and "‡ no better than grey" in text
    assert "Arrows: which way is better, and for whom (attacker: SSIM ↑; user: accuracy ↑)" in text
    # --no-intervals: the same means and markers, no ± and no n column
    assert cli.main(["table", str(root), "--cols", "none", "--metrics", "ssim", "--no-intervals"]) is None
    compact = capsys.readouterr().out
    assert f"| layer1 | **{values.mean():.3f}†** |" in compact and "| layer2 | 0.300‡ |" in compact
    assert "±" not in compact and "n (seeds" not in compact and "no interval shown" in compact
    csv = table(collect(root), rows="cut", cols=None, metrics=["ssim"], fmt="csv")
    import io

    import pandas as pd

    frame = pd.read_csv(io.StringIO(csv)).set_index("cut")
    assert frame.loc["layer1", "ssim_half"] == pytest.approx(half)
    assert frame.loc["layer1", "ssim_seeds"] == 3 and frame.loc["layer1", "ssim_over"] == "seeds"
    assert frame.loc["layer1", "beats_lowpass4"] == pytest.approx(0.4)
    assert frame.loc["layer1", "verdict"] == "no better than a low-pass image"
    assert (
        frame.loc["layer2", "ssim_over"] == "images"
        and frame.loc["layer2", "verdict"] == "no better than grey"
    )
