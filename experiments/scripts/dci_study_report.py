"""The DCI study's table and figure from its sweeps (experiments/dci_study.sh).

Reads every job below SWEEP_DIR (splitinv.report.collect), then writes into OUTPUT:

- ``table.md``: SSIM (mean [95 % interval] over seeds, Student's t) per attack and cut point, with the trivial
  baselines scored on the same images, the fraction of images beating their 4x4 low-pass, PSNR; then the
  ablations at ``--ablation-cut``;
- ``ssim_vs_depth.png`` / ``.pdf``: SSIM against the cut point, one line per attack with its interval, the
  baselines dashed;
- ``study.csv``: the per-job rows the two are made from.

    python experiments/scripts/dci_study_report.py outputs/dci_study_cpu/sweep --ablation-cut layer2 \
        --output outputs/dci_study_cpu
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pandas as pd
from scipy import stats

from splitinv.errors import SplitinvError
from splitinv.report import collect, require_finished

MAIN = ("dci", "rmle", "decoder")
BASELINES = ("grey", "lowpass4", "lowpass8")


def interval(values: pd.Series) -> tuple[float, float, float, int]:
    """Mean and the 95 % Student-t interval of ``values`` (NaN bounds for fewer than two)."""
    v = values.dropna().astype(float)
    n = len(v)
    mean = float(v.mean()) if n else math.nan
    if n < 2:
        return mean, math.nan, math.nan, n
    half = float(stats.t.ppf(0.975, n - 1) * v.std(ddof=1) / math.sqrt(n))
    return mean, mean - half, mean + half, n


def cell(values: pd.Series, digits: int = 3, fraction: bool = False) -> str:
    """``mean [lo, hi]``; a ``fraction``'s interval clipped to [0, 1]."""
    mean, lo, hi, n = interval(values)
    if fraction:
        lo, hi = max(lo, 0.0), min(hi, 1.0)
    if n == 0:
        return "n/a"
    if n < 2:
        return f"{mean:.{digits}f} (1 seed)"
    return f"{mean:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def per_seed_baselines(frame: pd.DataFrame, cut: str) -> pd.DataFrame:
    """One row per seed at ``cut``: the baselines (the same evaluation images in every job of a seed)."""
    rows = frame[frame["cut"] == cut]
    return rows.groupby("seed")[[f"{b}_ssim" for b in BASELINES]].mean()


def depth_table(frame: pd.DataFrame, cuts: list[str]) -> str:
    head = "| | " + " | ".join(cuts) + " |\n|---|" + "---|" * len(cuts) + "\n"
    lines = []
    for attack in [a for a in MAIN if a in set(frame["attack"])]:
        rows = frame[frame["attack"] == attack]
        ssim = [cell(rows[rows["cut"] == c]["ssim"]) for c in cuts]
        psnr = [cell(rows[rows["cut"] == c]["psnr"], 2) for c in cuts]
        beats = [cell(rows[rows["cut"] == c]["beats_lowpass4"], 2, fraction=True) for c in cuts]
        lines.append(f"| {attack} SSIM | " + " | ".join(ssim) + " |")
        lines.append(f"| {attack} PSNR dB | " + " | ".join(psnr) + " |")
        lines.append(f"| {attack} images > 4x4 low-pass | " + " | ".join(beats) + " |")
    for b in BASELINES:
        values = [cell(per_seed_baselines(frame, c)[f"{b}_ssim"]) for c in cuts]
        lines.append(f"| {b} SSIM (baseline) | " + " | ".join(values) + " |")
    verdict = []
    for c in cuts:
        low = per_seed_baselines(frame, c)["lowpass4_ssim"].mean()
        marks = []
        for attack in ("dci", "rmle"):
            mean = frame[(frame["attack"] == attack) & (frame["cut"] == c)]["ssim"].mean()
            if not math.isnan(mean):
                marks.append(f"{attack} {'>' if mean > low else '<='}")
        verdict.append(", ".join(marks) or "n/a")
    lines.append("| mean SSIM vs 4x4 low-pass | " + " | ".join(verdict) + " |")
    return head + "\n".join(lines) + "\n"


def ablation_table(frame: pd.DataFrame, cut: str) -> str:
    rows = frame[(frame["cut"] == cut) & frame["attack"].str.startswith("dci")]
    if rows.empty:
        return ""
    low = per_seed_baselines(frame, cut)["lowpass4_ssim"].mean()
    out = f"Ablations at {cut} (4x4 low-pass SSIM {low:.3f}):\n\n"
    out += "| DCI setting | SSIM | PSNR dB | images > 4x4 low-pass | seeds |\n|---|---|---|---|---|\n"
    for attack in sorted(set(rows["attack"]), key=lambda a: (a != "dci", a)):
        r = rows[rows["attack"] == attack]
        beats = cell(r["beats_lowpass4"], 2, fraction=True)
        out += f"| {attack} | {cell(r['ssim'])} | {cell(r['psnr'], 2)} | {beats} | {r['seed'].nunique()} |\n"
    return out


def figure(frame: pd.DataFrame, cuts: list[str], stem: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    x = list(range(len(cuts)))
    for attack, marker in zip(MAIN, "osD", strict=True):
        rows = frame[frame["attack"] == attack]
        if rows.empty:
            continue
        cis = [interval(rows[rows["cut"] == c]["ssim"]) for c in cuts]
        means = [m for m, *_ in cis]
        err = [[m - lo if not math.isnan(lo) else 0 for m, lo, _, _ in cis],
               [hi - m if not math.isnan(hi) else 0 for m, _, hi, _ in cis]]  # fmt: skip
        ax.errorbar(x, means, yerr=err, marker=marker, capsize=3, label=attack)
    for b, style in zip(BASELINES, (":", "--", "-."), strict=True):
        ax.plot(x, [per_seed_baselines(frame, c)[f"{b}_ssim"].mean() for c in cuts], style, color="grey",
                label=f"{b} (baseline)")  # fmt: skip
    ax.set_xticks(x, cuts)
    ax.set_xlabel("cut point (ResNet-18 stage)")
    ax.set_ylabel("SSIM (mean, 95 % interval over seeds)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    paths = []
    for ext in ("png", "pdf"):
        path = stem.with_suffix(f".{ext}")
        fig.savefig(path, dpi=150)
        paths.append(path)
    plt.close(fig)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sweep_dir")
    parser.add_argument("--ablation-cut", default="layer2")
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    frame = require_finished(collect(args.sweep_dir), args.sweep_dir)
    bad = frame[frame["status"] != "ok"]
    if not bad.empty:
        raise SplitinvError(
            f"{len(bad)} job(s) below {args.sweep_dir} did not finish (first: {bad.iloc[0]['job']}, "
            f"{bad.iloc[0]['status']}): rerun experiments/dci_study.sh (finished jobs are skipped)."
        )
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    frame = frame.assign(cut=frame["cut"].astype(str), attack=frame["attack"].astype(str))
    order = frame.groupby("cut")["cut_depth"].mean().sort_values()
    cuts = list(order.index)
    frame.to_csv(out / "study.csv", index=False)
    seeds = frame["seed"].nunique()
    text = (
        f"SSIM / PSNR: mean [95 % Student-t interval] over {seeds} seeds; baselines scored on the same "
        "images.\n\n" + depth_table(frame, cuts) + "\n" + ablation_table(frame, args.ablation_cut)
    )
    (out / "table.md").write_text(text)
    figure(frame, cuts, out / "ssim_vs_depth")


if __name__ == "__main__":
    main()
