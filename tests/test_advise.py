"""The split-point advisor: FLOPs, params, memory, bytes per cut, leakage rows, Pareto, constraints, CLI."""

from __future__ import annotations

import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from splitinv import advise as adv
from splitinv.cli import main
from splitinv.cut import cut_points, stage_points
from splitinv.defenses import Defense
from splitinv.errors import SplitinvError
from splitinv.results import write_digest
from splitinv.split import split
from splitinv.victims import build_victim

pytestmark = pytest.mark.usefixtures("one_thread")


def _victim(size: int = 32, num_classes: int = 10):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_victim("resnet18", image_size=size, num_classes=num_classes)


def _tiny() -> nn.Module:
    # 3x8x8 -> conv 3->8 (3x3, pad 1) -> ReLU -> flatten (512) -> linear 512->10
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(512, 10))


# ------------------------------------------------------------------------------------------ device cost


def test_flops_match_a_hand_count() -> None:
    x = torch.rand(1, 3, 8, 8)
    conv_macs = 8 * 8 * 8 * (3 * 3 * 3)  # output positions x output channels x (k x k x C_in)
    linear_macs = 512 * 10
    assert adv.count_flops(_tiny(), x) == 2 * (conv_macs + linear_macs) == 37888
    # a real head: resnet18's conv1 at 32 px, 64 filters of 3x7x7 over a 16x16 output (BN, ReLU: not counted)
    victim = _victim()
    costs = adv.cut_costs(victim, ["conv1", "relu"], latency_runs=1, warmup=0)
    assert list(costs["device_flops"]) == [2 * 64 * 16 * 16 * 3 * 7 * 7] * 2
    assert (costs["device_macs"] * 2 == costs["device_flops"]).all()
    # head + tail FLOPs add up to the whole network's, at every point
    whole = adv.count_flops(victim, torch.rand(1, 3, 32, 32))
    every = adv.cut_costs(victim, ["layer1", "layer3", "fc"], latency_runs=1, warmup=0)
    assert ((every["device_flops"] + every["tail_flops"]) == whole).all()


def test_params_and_peak_memory_match_hand_counts_for_fx_and_hook_heads() -> None:
    x = torch.rand(1, 3, 8, 8)
    assert adv.device_params(_tiny(), x) == (8 * 27 + 8) + (512 * 10 + 10)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(8, 8, 3, padding=1))
    # alive at the second conv: the input (3x8x8 fp32 = 768 B), the first conv's output (ReLU in place: the
    # same storage, 2048 B) and the second conv's output (2048 B)
    assert adv.peak_activation_bytes(net, x) == 768 + 2048 + 2048
    victim = _victim()
    image = torch.rand(1, 3, 32, 32)
    expected = sum(
        p.numel()
        for n, p in victim.model.named_parameters()
        if n.startswith(("conv1", "bn1", "layer1", "layer2"))
    )
    for method in ("fx", "hooks"):  # the hook head wraps the whole body: only modules that ran count
        s = split(victim, "layer2", method=method)
        assert adv.device_params(s.client, image) == expected, method
    peaks = {
        m: adv.peak_activation_bytes(split(victim, "layer2", method=m).client, image) for m in ("fx", "hooks")
    }
    assert peaks["fx"] == peaks["hooks"] > 3 * 32 * 32 * 4


def test_payload_bytes_follow_the_shapes_and_the_defense() -> None:
    row = adv.payload((128, 4, 4))
    assert (row["elements"], row["bytes_fp32"], row["bytes_fp16"], row["bytes_int8"]) == (
        2048,
        8192,
        4096,
        2048,
    )
    assert row["payload_bytes"] == 8192

    class Half(Defense):  # a projection sending half the numbers
        name = "half"

        def forward(self, h: torch.Tensor) -> torch.Tensor:
            return h

        def payload_elements(self, shape: tuple[int, ...]) -> int:
            return math.prod(shape) // 2

    assert adv.payload((128, 4, 4), Half(), wire="fp16")["payload_bytes"] == 1024 * 2
    victim = _victim()
    costs = adv.cut_costs(
        victim, stage_points(victim), {"half": Half()}, [("layer2", "half")], latency_runs=1, warmup=0
    )
    for _, r in costs.iterrows():
        elements = math.prod(int(d) for d in r["shape"].split("x"))
        assert (r["bytes_fp32"], r["bytes_fp16"], r["bytes_int8"]) == (4 * elements, 2 * elements, elements)
        assert r["payload_bytes"] == (2 * elements if r["defense"] == "half" else 4 * elements)
    assert costs["device_latency_ms"].gt(0).all()
    with pytest.raises(SplitinvError, match="wire precision"):
        adv.payload((4,), wire="fp8")


def test_profiles_and_the_end_to_end_estimate() -> None:
    phone = adv.load_profile("phone")
    assert {"phone", "iot"} <= set(adv.profile_names()) and phone.uplink_mbps > 0
    table = pd.DataFrame(
        {"device_flops": [2e9], "device_latency_ms": [3.0], "payload_bytes": [125_000], "tail_flops": [4e9]}
    )
    out = adv.estimate_latency(table, adv.DeviceProfile("t", device_gflops=1, uplink_mbps=1, server_gflops=2))
    assert out.loc[0, "e2e_ms"] == pytest.approx(2000 + 1000 + 2000)
    measured = adv.estimate_latency(table, adv.DeviceProfile("t", uplink_mbps=8))  # device: measured here
    assert measured.loc[0, "e2e_ms"] == pytest.approx(3.0 + 125.0)
    with pytest.raises(SplitinvError, match="unknown device profile 'fone'"):
        adv.load_profile("fone")
    with pytest.raises(SplitinvError, match="positive"):
        adv.DeviceProfile("t", device_gflops=-1, uplink_mbps=1)


# ------------------------------------------------------------------------------ Pareto and constraints


def _rows() -> pd.DataFrame:
    #            flops  bytes  ssim   utility
    data = [
        ("a", 10, 400, 0.80, 0.90),  # cheapest: optimal
        ("b", 20, 200, 0.50, 0.90),  # optimal
        ("c", 30, 200, 0.55, 0.90),  # dominated by b (more flops, same bytes, more leakage)
        ("d", 40, 100, 0.20, 0.80),  # optimal: least leakage, fewest bytes
        ("e", 40, 100, 0.20, 0.80),  # a tie with d: neither is strictly better, both optimal
        ("f", 40, 100, 0.20, 0.70),  # dominated by d (less utility)
        ("g", 5, 50, math.nan, math.nan),  # not attacked: not ranked, even though it is cheapest
    ]
    frame = pd.DataFrame(data, columns=["cut", "device_flops", "payload_bytes", "ssim", "utility"])
    frame["defense"] = "none"
    frame["ssim_attack"] = "decoder"
    frame["device_latency_ms"] = 1.0
    return frame


def test_pareto_marks_the_undominated_attacked_cuts() -> None:
    marks = dict(zip(_rows()["cut"], adv.pareto(_rows()), strict=True))
    assert marks == {"a": True, "b": True, "c": False, "d": True, "e": True, "f": False, "g": None}
    # without utility everywhere, it drops out of the objectives: f now ties d and e
    no_utility = _rows().assign(utility=math.nan)
    assert adv.pareto(no_utility).tolist()[5] is True


def test_constraints_keep_the_qualifying_cuts_best_first_or_name_what_binds() -> None:
    table = _rows()
    verdict = adv.constrain(table, {"max_ssim": 0.6, "max_device_mflops": 45e-6, "min_utility": 0.75})
    assert list(verdict.rows["cut"]) == ["d", "e", "b", "c"]  # lowest SSIM, then fewest FLOPs, bytes
    assert "4 of 7 rows meet" in verdict.summary() and "1. d: SSIM 0.200" in verdict.summary()
    none = adv.constrain(table, {"max_ssim": 0.3, "max_device_mflops": 35e-6})
    assert none.rows.empty and none.binding == ["max_ssim", "max_device_mflops"]
    text = none.summary()
    assert text.startswith("no row meets all of max_ssim <= 0.3, max_device_mflops <= 3.5e-05 MFLOPs.")
    assert "max_ssim <= 0.3 binds: without it, b, c, a, g." in text  # g, not attacked, comes last
    assert "max_device_mflops <= 3.5e-05 MFLOPs binds: without it, d, e, f" in text
    # each constraint alone leaves nothing: none binds on its own
    both = adv.constrain(table, {"max_ssim": 0.1, "max_payload_kb": 0.01})
    assert both.binding == [] and "max_ssim 0/7, max_payload_kb 0/7" in both.summary()
    for bad, message in (
        ({"max_sim": 0.3}, "unknown constraint 'max_sim'"),
        ({"max_payload_kb": -1}, "negative"),
        ({"min_utility": 2}, r"\[0, 1\]"),
        ({"max_ssim": float("nan")}, "finite"),
        ({"max_e2e_ms": 10}, "device profile"),
        ({}, "no constraint"),
    ):
        with pytest.raises(SplitinvError, match=message):
            adv.constrain(table, bad)


# ---------------------------------------------------------------------------- sweep rows -> the table


def _fake_run(
    root: Path,
    job: str,
    cut: str,
    attack: str,
    ssim: float,
    *,
    seed: int = 0,
    victim: str = "resnet18",
    size: int = 32,
    lpips: float | None = None,
    utility: dict | None = None,
    defense: dict | None = None,
    beats: tuple[float, float] | None = (1.0, 1.0),
    std: float = 0.0,
) -> None:
    """A finished job's metrics.json as run.py writes it; ``beats``: the fractions of images beating grey
    and the 4x4 low-pass (None: baselines not scored)."""
    from splitinv.baselines import verdict

    folder = root / job
    folder.mkdir(parents=True)
    record = {
        "format": "splitinv-results/1",
        "status": "ok",
        "ssim": {"mean": ssim, "std": std, "n": 4},
        "psnr": {"mean": 10.0, "std": 0.0, "n": 4},
        "lpips": None if lpips is None else {"mean": lpips, "std": 0.0, "n": 4},
        "victim": victim,
        "weights": "random",
        "cut": cut,
        "cut_spec": cut,
        "attack": attack,
        "data": "fashion_mnist",
        "seed": seed,
        "access": "black-box",
        "aux_data": "same",
        "details": {"victim": {"name": victim, "image_size": size, "num_classes": 10}, "cut": {"name": cut}},
    }
    if beats is not None:
        record["beats_grey"], record["beats_lowpass4"] = ({"mean": b, "std": 0.0, "n": 4} for b in beats)
    record["verdict"] = verdict(*(beats or (None, None)))
    if utility is not None:
        record["utility"] = utility
    if defense is not None:
        record["defense"], record["details"]["defense"] = defense["name"], defense
    (folder / "metrics.json").write_text(json.dumps(record))
    write_digest(folder / "metrics.json")  # as splitinv writes it: an unsigned file counts as edited


def _sweep(tmp_path: Path) -> Path:
    root = tmp_path / "sweep"
    util = {"accuracy": 0.8, "agreement": 1.0, "n": 4}
    _fake_run(root, "0", "layer1", "decoder", 0.70, utility=util)
    _fake_run(root, "1", "layer1", "rmle", 0.75, lpips=0.30, utility=util)
    _fake_run(root, "2", "layer1", "rmle", 0.78, seed=1, lpips=0.35, utility=util)  # the strongest run
    _fake_run(root, "3", "layer2.1", "decoder", 0.40, utility=util)  # an alias of layer2
    _fake_run(root, "4", "layer3", "decoder", 0.20, utility=util)
    _fake_run(root, "5", "layer3", "rmle", 0.25, utility=util)
    return root


def test_leakage_rows_name_the_strongest_attack_and_flag_cuts_with_fewer_attacks(tmp_path: Path) -> None:
    from scipy import stats

    table = adv.advise(_sweep(tmp_path), cuts="stages", latency_runs=1, warmup=0)
    # relu, layer1, layer2, layer3, avgpool between the two reference rows
    assert list(table["cut"]) == ["image", *stage_points(_victim()), "device"]
    rows = table.set_index("cut")
    # rmle: seeds 0 and 1 (0.75, 0.78): the mean and the 95 % t interval over them, by hand
    half = stats.t.ppf(0.975, 1) * 0.015
    assert rows.loc["layer1", "ssim"] == pytest.approx(0.765) and rows.loc["layer1", "ssim_attack"] == "rmle"
    assert (
        rows.loc["layer1", "ssim_hi"] == pytest.approx(0.765 + half)
        and rows.loc["layer1", "ssim_n"] == "2 × 4"
    )
    assert rows.loc["layer1", "lpips"] == pytest.approx(0.325) and rows.loc["layer1", "runs"] == 3
    assert math.isnan(rows.loc["layer3", "lpips"])  # LPIPS null offline: n/a, not an error
    assert rows.loc["layer2", "attacks"] == 1 and rows.loc["layer2", "flagged"]  # the alias layer2.1 counted
    assert not rows.loc["layer1", "flagged"] and not rows.loc["relu", "flagged"]
    # relu, avgpool: not attacked; the image and device rows: shown, not ranked
    assert rows["pareto"].tolist() == [None, None, True, True, True, None, None]
    assert table.attrs["utility_metric"] == "accuracy" and table.attrs["max_attacks"] == 2
    md = adv.render(table, "md")
    assert "| 1 attack† |" in md and "† attacked by fewer attacks than the most-attacked cut (2)" in md
    assert "not attacked" in md and "| n/a |" in md and "**layer3**" in md
    assert f"| {0.765:.3f} ± {half:.3f} | 2 × 4 |" in md and "| leaks |" in md
    assert r"$^\dagger$" in adv.render(table, "latex") and r"\bottomrule" in adv.render(table, "latex")
    csv = pd.read_csv(io.StringIO(adv.render(table, "csv")))
    assert list(csv["cut"]) == list(table["cut"]) and "pareto" in csv
    paths = adv.plot(table, tmp_path / "fig")
    assert all(p.stat().st_size > 1000 for p in paths)
    # every listed cut point by default, the attacked ones only on request
    every = adv.advise(_sweep(tmp_path / "b"), latency_runs=1, warmup=0)
    assert list(every["cut"]) == ["image", *cut_points(_victim()), "device"]
    attacked = adv.advise(_sweep(tmp_path / "c"), latency_runs=1, warmup=0, attacked_only=True)
    assert list(attacked["cut"]) == ["image", "layer1", "layer2", "layer3", "device"]


def test_a_sweep_with_defenses_gives_one_row_per_cut_and_defense(tmp_path: Path) -> None:
    root = tmp_path / "sweep"
    _fake_run(root, "0", "layer2", "decoder", 0.40, utility={"accuracy": 0.8, "agreement": 1.0, "n": 4})
    noise = {"name": "noise", "sigma": 0.5}  # no saved config to rebuild it from: counted undefended, said so
    _fake_run(
        root, "1", "layer2", "decoder", 0.10, defense=noise, utility={"accuracy": 0.6, "agreement": 0.7}
    )
    with pytest.warns(UserWarning, match="defense 'noise sigma=0.5'"):
        table = adv.advise(root, cuts="layer1,layer2", latency_runs=1, warmup=0)
    assert list(zip(table["cut"], table["defense"], strict=True)) == [
        ("image", "none"),
        ("layer1", "none"),
        ("layer2", "none"),
        ("layer2", "noise sigma=0.5"),
        ("device", "none"),
    ]
    # the reference rows run the whole undefended victim: its accuracy
    assert table["utility"].tolist()[2:] == [0.8, 0.6, 0.8] and table["utility"].iloc[0] == 0.8
    assert table["pareto"].tolist() == [None, None, True, True, None]
    assert "| defense |" in adv.render(table, "md") and "sent KiB (fp32)" in adv.render(table, "md")


def _cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = 0
    try:
        main(["advise", *args])
    except SystemExit as stop:
        code = int(stop.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_bad_input_ends_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    sweep = _sweep(tmp_path)
    failed = tmp_path / "failed" / "0"
    (failed / ".hydra").mkdir(parents=True)
    (failed / ".hydra" / "config.yaml").write_text("victim: {name: resnet18}\ncut: layer1\n")
    (failed / "failed.json").write_text(json.dumps({"error": "boom"}))
    cases = [
        ((str(sweep), "--victim", "vgg16_bn"), "attacked resnet18, not vgg16_bn"),
        ((str(sweep), "--image-size", "64"), "at 32 px, not 64 px"),
        ((str(tmp_path / "failed"),), "no finished runs below .* \\(1 failed\\)"),
        ((str(tmp_path / "nowhere/sweep"),), "is not a folder"),
        ((str(sweep), "--max-ssim", "-0.1"), "negative"),
        ((str(sweep), "--max-payload-kb", "-5"), "negative"),
        ((str(sweep), "--min-utility", "1.5"), r"\[0, 1\]"),
        ((str(sweep), "--profile", "fone"), "unknown device profile"),
        ((str(sweep), "--max-e2e-ms", "5", "--latency-runs", "1"), "needs a device profile"),
        ((str(sweep), "--attacks", "decoder"), "add --run"),
        (("--run", "resnet18"), "--run needs --attacks"),
    ]
    for args, message in cases:
        code, _, err = _cli(capsys, *args)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("splitinv: error: "), (args, err)
        assert re.search(message, lines[0]), (args, lines[0])
    # an unknown constraint flag: one line too (no argparse usage block)
    code, _, err = _cli(capsys, str(sweep), "--max-flops", "3")
    assert code == 2 and err.strip().splitlines() == [
        "splitinv: error: unrecognized arguments: --max-flops 3 (see splitinv --help)"
    ]


def test_the_cli_writes_tables_and_figure_and_answers_a_constraint_query(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "advice"
    code, text, err = _cli(
        capsys,
        str(_sweep(tmp_path)),
        "--cuts",
        "stages",
        "--latency-runs",
        "1",
        "--max-ssim",
        "0.5",
        "--profile",
        "phone",
        "--output",
        str(out),
    )
    assert code == 0, err
    # under the cap: layer3, layer2 and the device row, fastest end to end first (phone profile)
    assert "e2e ms (est.)" in text and "3 of 7 rows meet max_ssim <= 0.5 (fastest end to end first)" in text
    assert "  1. device: no leakage (only the label is sent), 74.03 MFLOPs, 1 B sent" in text
    assert "  2. layer3: SSIM 0.250 ± 0.000§ (rmle)" in text and "  3. layer2: SSIM 0.400 ± 0.000§" in text
    for name in ("advise.md", "advise.tex", "advise.csv", "advise_pareto.png", "advise_pareto.pdf"):
        assert (out / name).stat().st_size > 100, name


# ------------------------------------------------------------------------------------- end to end


def _console(name: str, *args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    script = shutil.which(name)
    modules = {"splitinv": "splitinv.cli", "splitinv-train-victim": "splitinv.train_victim"}
    command = [script] if script else [sys.executable, "-c", f"from {modules[name]} import main; main()"]
    return subprocess.run(
        [*command, *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=timeout
    )


@pytest.mark.slow
def test_split_advisor_cpu_runs_end_to_end(tmp_path: Path, quickstart_victim: Path) -> None:
    weights = quickstart_victim  # the quickstart victim's setting, trained briefly (tests/conftest.py)
    # splitinv advise runs the experiment's sweep itself (splitinv-run -m experiment=split_advisor_cpu)
    out = tmp_path / "advise"
    proc = _console(
        "splitinv",
        "advise",
        "--run",
        "--experiment",
        "split_advisor_cpu",
        "--weights",
        str(weights),
        "--set",
        f"cache.dir={tmp_path / 'cache'}",
        "--latency-runs",
        "3",
        "--output",
        str(out),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "splitinv-run -m experiment=split_advisor_cpu" in proc.stdout
    records = [json.loads(p.read_text()) for p in (out / "sweep").rglob("metrics.json")]
    assert len(records) == 10 and {r["attack"] for r in records} == {"decoder", "rmle"}
    table = pd.read_csv(out / "advise.csv")
    victim = _victim()
    # every cut point between the image and device rows, the 5 stages attacked
    assert list(table["cut"]) == ["image", *cut_points(victim), "device"]
    attacked = table[table["attacked"]]
    assert list(attacked["cut"]) == stage_points(victim) and (attacked["attacks"] == 2).all()
    assert not attacked.iloc[0]["weak"]  # the CPU-sized attacks beat the 4x4 low-pass at the shallowest cut
    strong, weak = attacked[~attacked["weak"]], attacked[attacked["weak"]]
    assert strong["pareto"].isin([True, False]).all() and strong["pareto"].any()
    assert weak["pareto"].isna().all()
    assert table.loc[~table["attacked"], "pareto"].isna().all()
    assert attacked["accuracy"].notna().all()
    md = (out / "advise.md").read_text()
    assert "| Pareto |" in md and "not attacked" in md
    assert (out / "advise_pareto.png").stat().st_size > 10_000
    # a constraint query on the finished sweep (read, not rerun): the answer the table implies
    limit = float(strong["ssim_hi"].median())  # at least one strong cut meets it
    budget = (float(attacked["device_flops"].max()) + 1) / 1e6  # every attacked cut fits
    expected = strong[(strong["ssim_hi"] <= limit) & (strong["device_flops"] <= budget * 1e6)]
    expected = expected.sort_values(
        ["ssim_hi", "device_flops", "payload_bytes"]
    )  # the device row: too costly
    proc = _console(
        "splitinv",
        "advise",
        str(out / "sweep"),
        "--max-ssim",
        str(limit),
        "--max-device-mflops",
        str(budget),
        "--latency-runs",
        "1",
        "--output",
        str(tmp_path / "again"),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(rf"{len(expected)} of 17 rows meets? max_ssim <= {limit:g}", proc.stdout)
    ranked = [
        ln.split(":")[0].split(". ", 1)[1]
        for ln in proc.stdout.splitlines()
        if ln.startswith("  ") and ". " in ln
    ]
    assert ranked == list(expected["cut"])
    proc = _console(
        "splitinv",
        "advise",
        str(out / "sweep"),
        "--max-ssim",
        str(limit),
        "--max-device-mflops",
        "0.001",
        "--latency-runs",
        "1",
        "--output",
        str(tmp_path / "none"),
        cwd=tmp_path,
    )
    assert proc.returncode == 0 and "no row meets all of" in proc.stdout
    assert "max_device_mflops <= 0.001 MFLOPs binds" in proc.stdout


def test_weak_and_unscored_attacks_the_reference_rows_and_the_capped_ranking(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from scipy import stats

    from splitinv.results import save_images

    root = tmp_path / "sweep"
    util = {"accuracy": 0.8, "agreement": 1.0, "n": 4}
    # layer1: the decoder beats the low-pass on 3 of 4 images; rMLE was run without baselines (unscored)
    _fake_run(root, "0", "layer1", "decoder", 0.60, utility=util, beats=(1.0, 0.75))
    _fake_run(root, "1", "layer1", "rmle", 0.50, utility=util, beats=None)
    # layer2: its strongest attack beats grey, not the low-pass (seed means 0.5 and 0.25 -> 0.375)
    _fake_run(root, "2", "layer2", "decoder", 0.20, utility=util, beats=(1.0, 0.5))
    _fake_run(root, "3", "layer2", "decoder", 0.202, seed=1, utility=util, beats=(1.0, 0.25))
    # layer3: one seed, SSIM 0.28 with std 0.1 over 4 images: its upper end (0.28 + t_3 x 0.05) is above 0.3
    _fake_run(root, "4", "layer3", "decoder", 0.28, std=0.1, utility=util)
    _fake_run(root, "5", "avgpool", "decoder", 0.10, utility=util)
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    save_images(root / "0" / "images.pt", images, images)
    table = adv.advise(root, cuts="stages", latency_runs=1, warmup=0, jpeg_quality=75)
    rows = table.set_index("cut")
    assert rows.loc["layer1", "attacks"] == 1 and rows.loc["layer1", "attack_names"] == "decoder"
    assert rows.loc["layer1", "verdict"] == "leaks" and not rows.loc["layer1", "weak"]
    assert rows.loc["layer2", "verdict"] == "no better than a low-pass image" and rows.loc["layer2", "weak"]
    assert rows.loc["layer2", "pareto"] is None  # a weak attack's low SSIM is not a private cut
    upper = 0.28 + stats.t.ppf(0.975, 3) * 0.1 / 2
    assert (
        rows.loc["layer3", "ssim_hi"] == pytest.approx(upper) and rows.loc["layer3", "ssim_over"] == "images"
    )
    # the reference rows: the image's uint8 bytes and its JPEG size measured on images.pt; the label's byte
    image, device = rows.loc["image"], rows.loc["device"]
    assert image["payload_bytes"] == 3 * 32 * 32 and image["device_flops"] == 0 and image["ssim"] == 1.0
    assert image["jpeg_bytes"] == pytest.approx(sum(adv.jpeg_bytes(images, 75)) / 3)
    assert device["payload_bytes"] == 1 and device["tail_flops"] == 0
    assert device["device_flops"] == image["tail_flops"] == rows.loc["avgpool", "device_flops"] + 2 * 512 * 10
    md = adv.render(table, "md")
    assert rows.loc["layer2", "ssim_hi"] < 0.3  # under the cap, yet left out below
    assert "| 0.201 ±" in md and "⚠ |" in md and "attack too weak" in md and "| baseline |" in md
    assert "JPEG at quality 75" in md and "the 3 evaluation images in job 0's images.pt" in md
    verdict = adv.constrain(table, {"max_ssim": 0.3})
    # layer2 (weak) and layer3 (upper end above the cap) are left out, the device row leaks nothing
    assert list(verdict.rows["cut"]) == ["device", "avgpool"]
    fast = adv.constrain(
        adv.estimate_latency(table, adv.DeviceProfile("t", 1000, 0.1, 1000)), {"max_ssim": 1}
    )
    e2e = fast.rows["e2e_ms"].tolist()
    assert e2e == sorted(e2e) and fast.rows["cut"].iloc[0] == "device"  # a slow uplink: the label wins
    with pytest.raises(SplitinvError, match="JPEG quality 0"):
        adv.jpeg_bytes(images, 0)
