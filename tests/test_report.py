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
    lines = text.strip().splitlines()
    assert lines[0].startswith("| cut | resnet18 SSIM ↑ | resnet18 PSNR ↑ | vgg16_bn SSIM ↑")
    # rows ordered by cut depth: layer1 (0.2) before layer3 (0.6), then the failed layer4 (unknown depth)
    assert [line.split("|")[1].strip() for line in lines[2:]] == ["layer1", "layer3", "layer4"]
    layer1 = lines[2].split("|")
    assert layer1[2].strip() == "**0.810 ± 0.014**"  # mean of 0.80 and 0.82, sample std, best in column
    assert layer1[4].strip() == "**0.860 ± 0.014**"
    assert lines[3].split("|")[2].strip() == "0.410 ± 0.014"  # not the best: no bold
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
    assert text.startswith(r"\begin{tabular}{lcc}") and r"\toprule" in text and r"\bottomrule" in text
    assert r"\multicolumn{1}{c}{vgg16\_bn}" in text
    assert r"\textbf{0.810 $\pm$ 0.014}" in text and r"SSIM $\uparrow$" in text


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
