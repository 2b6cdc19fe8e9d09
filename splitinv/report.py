"""Sweep folder -> tables: every job's metrics.json (one flat row each) gathered, grouped and formatted.

A job folder without metrics.json (it failed, or has not run yet) is a row with status ``failed`` or
``missing``, one whose metrics.json does not read (truncated, empty) a row with status ``broken`` (and a
warning naming the file); tables show them as such instead of dropping them or stopping.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from splitinv.baselines import NAMES as BASELINE_NAMES
from splitinv.baselines import NO_BETTER_THAN_GREY, NO_BETTER_THAN_LOWPASS, verdict
from splitinv.baselines import SCORED as BASELINE_METRICS
from splitinv.errors import SplitinvError
from splitinv.metrics import DIRECTION
from splitinv.results import FAILED_FILE, METRICS_FILE, edited

log = logging.getLogger(__name__)

KEYS = (
    "victim", "weights", "cut", "cut_spec", "attack", "data", "seed", "access", "aux_data",
    "defense", "defense_strength", "defense_setting", "defense_aware", "attacker", "preset",
)  # fmt: skip
# what the defended split still does (metrics.json "utility"), beside the attack metrics
UTILITY = {"utility": "higher", "utility_agreement": "higher", "utility_test": "higher"}
# the trivial reconstructions scored on the same images (metrics.json "baselines"): e.g. lowpass4_ssim
BASELINES = {f"{name}_{metric}": DIRECTION[metric] for name in BASELINE_NAMES for metric in BASELINE_METRICS}
# the Fisher-information bound of a noisy defense (metrics.json "leakage_bound", splitinv.leakage): dFIL's
# mean and minimum over the evaluation images and the PSNR ceiling it puts on an unbiased attacker (higher:
# more leakage)
LEAKAGE = {"dfil_mean": "higher", "dfil_min": "higher", "psnr_ceiling": "higher"}
BEATS = {"beats_lowpass4": "higher", "beats_grey": "higher"}  # fractions of images above a trivial image
DIRECTIONS = {**DIRECTION, **UTILITY, **BEATS, **BASELINES, **LEAKAGE}
LABELS = {
    "beats_lowpass4": "> lowpass4",
    "beats_grey": "> grey",
    **{k: f"{k.split('_')[0]} {k.split('_')[1].upper()}" for k in BASELINES},
    "utility": "accuracy",
    "utility_agreement": "agreement",
    "utility_test": "test acc.",
    "lpips": "LPIPS",
    "ssim": "SSIM",
    "psnr": "PSNR",
    "feature_error": "feat. err.",
    "label_agreement": "label agr.",
    "recognisable": "SSIM≥0.3",
    "accuracy_hat": "acc.",
    "dfil_mean": "dFIL",
    "dfil_min": "dFIL min",
    "psnr_ceiling": "PSNR ceiling",
}


def _leakage_keys(rec: dict[str, Any]) -> dict[str, float]:
    """The row's :data:`LEAKAGE` columns from metrics.json's ``leakage_bound`` (NaN where it has none)."""
    bound = rec.get("leakage_bound") or {}

    def number(key: str) -> float:
        value = bound.get(key)
        return math.nan if value is None else float(value)

    return {
        "dfil_mean": number("dfil_mean"),
        "dfil_min": number("dfil_min"),
        "psnr_ceiling": number("psnr_ceiling_mean"),
    }


def _defense_keys(rec: dict[str, Any]) -> dict[str, Any]:
    """defense (name, ``none`` for rows written before defenses existed), its strength, a label of both
    (``gaussian@0.5``) and the attacker (``adaptive`` / ``naive``; ``-`` without a defense)."""
    name = rec.get("defense") or "none"
    strength = rec.get("defense_strength")
    aware = rec.get("defense_aware")
    return {
        "defense": name,
        "defense_strength": strength,
        "defense_setting": name if strength is None else f"{name}@{strength}",
        "defense_aware": aware,
        "attacker": "-" if name == "none" else ("naive" if aware is False else "adaptive"),
    }


def _resolved(cfg: dict[str, Any]) -> dict[str, Any]:
    """Hydra saves a job's config unresolved (``cut: ${layer}``): resolve what resolves from the config
    itself, and blank what does not (``${hydra:...}``, ``${oc.env:...}``) rather than show a placeholder."""
    from omegaconf import OmegaConf

    def blank(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: blank(v) for k, v in node.items()}
        if isinstance(node, list):
            return [blank(v) for v in node]
        return None if isinstance(node, str) and "${" in node else node

    conf = OmegaConf.create(cfg)
    out: dict[str, Any] = {}
    for key in cfg:
        try:
            out[key] = (
                OmegaConf.to_container(conf[key], resolve=True)
                if OmegaConf.is_config(conf[key])
                else conf[key]
            )
        except Exception:  # an interpolation that needs Hydra's runtime: leave it blank
            out[key] = blank(cfg[key])
    return blank(out)


def _job_row_from_config(job: Path) -> dict[str, Any]:
    """Identifying keys of a job that wrote no metrics.json, from the config Hydra saved for it."""
    cfg_file = job / ".hydra" / "config.yaml"
    cfg = yaml.safe_load(cfg_file.read_text()) if cfg_file.is_file() else {}
    cfg = _resolved(cfg if isinstance(cfg, dict) else {})
    victim = cfg.get("victim") or {}
    attack = cfg.get("attack") or {}
    data = cfg.get("data") or {}
    target = str(data.get("_target_", ""))
    hydra_file = job / ".hydra" / "hydra.yaml"
    choices = (yaml.safe_load(hydra_file.read_text()) or {}).get("hydra", {}) if hydra_file.is_file() else {}
    defense = ((choices.get("runtime") or {}).get("choices") or {}).get("defense") or "none"
    return {
        "victim": victim.get("name"),
        "weights": victim.get("weights"),
        "cut": cfg.get("cut"),
        "cut_spec": cfg.get("cut"),
        "attack": attack.get("name"),
        "data": target.rsplit(".", 1)[-1].replace("DataModule", "").lower() or None,
        "seed": cfg.get("seed"),
        **_defense_keys({"defense": defense, "defense_aware": attack.get("defense_aware")}),
    }


def _read_json(path: Path) -> tuple[Any, str | None]:
    """A JSON file's content, or (None, why) for one that does not read (truncated, empty), warned about."""
    try:
        return json.loads(path.read_text()), None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        text = str(err).strip().splitlines()[0][:120] if str(err).strip() else ""
        why = f"{path} does not read as JSON ({type(err).__name__}: {text})"
        log.warning("%s: its job is shown as broken; rerun it", why)
        return None, why


def collect(sweep_dir: str | Path, *, trust_edited: bool = False) -> pd.DataFrame:
    """One row per job below ``sweep_dir``: :data:`KEYS`, status, cut depth, metric means and stds.

    A metrics.json whose digest does not match (edited by hand, :func:`splitinv.results.edited`) is a row
    with status ``edited`` and no numbers, warned about in one line, unless ``trust_edited``."""
    root = Path(sweep_dir)
    if not root.is_dir():
        raise SplitinvError(f"{root} is not a folder: pass a run or sweep folder written by splitinv-run.")
    rows: list[dict[str, Any]] = []
    seen: set[Path] = set()
    for path in sorted(root.rglob(METRICS_FILE)):
        rec, broken = _read_json(path)
        if broken is not None:
            seen.add(path.parent)
            row = _job_row_from_config(path.parent)
            row.update(status="broken", job=str(path.parent.relative_to(root)), error=broken)
            rows.append(row)
            continue
        if not isinstance(rec, dict) or not str(rec.get("format", "")).startswith("splitinv-results"):
            continue
        seen.add(path.parent)
        if not trust_edited and (why := edited(path)):
            why += ": its job is left out; rerun it, or pass --trust-edited to accept the edit."
            log.warning("%s", why)
            row = {k: rec.get(k) for k in KEYS}  # where it belongs; none of its numbers
            row.update(_defense_keys(rec))
            row.update(status="edited", job=str(path.parent.relative_to(root)), error=why)
            rows.append(row)
            continue
        row = {k: rec.get(k) for k in KEYS}
        row.update(_defense_keys(rec))
        cut_info = (rec.get("details") or {}).get("cut") or {}
        row.update(status=rec.get("status", "ok"), job=str(path.parent.relative_to(root)), error=None)
        row.update(cut_index=cut_info.get("index"), cut_depth=cut_info.get("relative_depth"))
        row["n_images"] = (rec.get("ssim") or {}).get("n")  # images scored: one seed's interval needs it
        # the attack's published setting (attack.preset), or splitinv's own defaults
        row["preset"] = ((rec.get("details") or {}).get("attack") or {}).get("preset") or "splitinv"
        for name in DIRECTION:
            value = rec.get(name)
            row[name] = value["mean"] if isinstance(value, dict) else math.nan
            row[f"{name}_std"] = value["std"] if isinstance(value, dict) else math.nan
        utility = rec.get("utility") or {}
        row["utility"] = math.nan if utility.get("accuracy") is None else utility["accuracy"]
        row["utility_agreement"] = math.nan if utility.get("agreement") is None else utility["agreement"]
        test = rec.get("utility_test") or {}
        row["utility_test"] = math.nan if test.get("accuracy") is None else test["accuracy"]
        for name in ("beats_grey", "beats_lowpass4"):
            beats = rec.get(name)
            row[name] = beats["mean"] if isinstance(beats, dict) else math.nan
        row["verdict"] = rec.get("verdict", "unscored")
        row.update(_leakage_keys(rec))
        for name, scores in (rec.get("baselines") or {}).items():
            for metric, value in (scores or {}).items():
                row[f"{name}_{metric}"] = value["mean"] if isinstance(value, dict) else math.nan
        rows.append(row)
    for hydra_dir in sorted(root.rglob(".hydra")):
        job = hydra_dir.parent
        if job in seen or not (hydra_dir / "config.yaml").is_file():
            continue
        failed = job / FAILED_FILE
        record, why = _read_json(failed) if failed.is_file() else (None, None)
        error = record.get("error") if isinstance(record, dict) else why
        row = _job_row_from_config(job)
        row.update(
            status="failed" if failed.is_file() else "missing", job=str(job.relative_to(root)), error=error
        )
        rows.append(row)
    if not rows:
        raise SplitinvError(f"no runs below {root}: expected job folders holding {METRICS_FILE} or .hydra/.")
    return pd.DataFrame(rows)


def require_finished(frame: pd.DataFrame, sweep_dir: str | Path) -> pd.DataFrame:
    """``frame`` (from :func:`collect`) when at least one job finished, else a one-line error that counts
    the jobs by status and quotes the first one's problem."""
    if (frame["status"] == "ok").any():
        return frame
    counts = ", ".join(f"{n} {s}" for s, n in sorted(frame["status"].value_counts().items()))
    errors = [e for e in frame.get("error", pd.Series(dtype=object)).tolist() if isinstance(e, str) and e]
    if errors:  # the first job's own line says what to do
        raise SplitinvError(f"no finished results below {sweep_dir} ({counts}); first: {errors[0]}")
    raise SplitinvError(
        f"no finished results below {sweep_dir} ({counts}): rerun those jobs, then this command."
    )


def published(name: str, frame: pd.DataFrame | None = None) -> pd.DataFrame:
    """A paper's published numbers (``splitinv/assets/published/<name>.yaml``) as rows with preset
    ``paper``, appended to ``frame`` where given: only the (victim, cut) pairs ``frame`` holds, so a table
    shows the paper beside the runs that reproduce it."""
    import importlib.resources

    folder = importlib.resources.files("splitinv").joinpath("assets/published")
    known = sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))
    if name not in known:  # a name, never a path: --published ../../x must not read another file
        raise SplitinvError(
            f"no published numbers named {name!r}: use --published with one of {', '.join(known)}."
        )
    resource = folder.joinpath(f"{name}.yaml")
    rows = []
    for entry in (yaml.safe_load(resource.read_text()) or {}).get("rows", []):
        row: dict[str, Any] = {k: None for k in KEYS}
        row.update(defense="none", defense_setting="none", attacker="-", preset="paper", status="ok")
        row.update({k: v for k, v in entry.items() if k in KEYS})
        row.update(job=f"published:{name}", error=None, cut_index=None, cut_depth=None, seed=None)
        for metric in DIRECTIONS:
            row[metric] = float(entry[metric]) if metric in entry else math.nan
        rows.append(row)
    paper = pd.DataFrame(rows)
    if frame is None:
        return paper
    have = set(zip(frame["victim"].astype(str), frame["cut"].astype(str), strict=True))
    paper = paper[[(str(v), str(c)) in have for v, c in zip(paper["victim"], paper["cut"], strict=True)]]
    depth = (
        frame.dropna(subset=["cut_depth"]).groupby("cut")["cut_depth"].mean() if "cut_depth" in frame else {}
    )
    paper = paper.assign(cut_depth=[depth.get(c) if len(depth) else None for c in paper["cut"]])
    return pd.concat([frame, paper], ignore_index=True)


def _natural(key: Any) -> list[Any]:
    """Sort key that orders numbers inside names by value: gaussian@0.25 < gaussian@1.0 < gaussian@4.0."""
    parts = re.split(r"(\d+(?:\.\d+)?)", str(key))
    return [(0, float(p), "") if re.fullmatch(r"\d+(?:\.\d+)?", p) else (1, 0.0, p) for p in parts]


CONFIDENCE = 0.95  # of every interval in tables, the privacy-utility figure and the advisor
# a marker on a table's attack numbers whose verdict (from the fractions averaged over seeds) is not "leaks"
VERDICT_MARKS = {NO_BETTER_THAN_LOWPASS: "†", NO_BETTER_THAN_GREY: "‡"}
IMAGES_MARK = "§"  # one seed: its interval is over that seed's images, not over seeds


def interval(
    means: Sequence[float], image_std: float | None = None, images: int | None = None
) -> tuple[float, float, str]:
    """(mean, half-width of the 95 % interval, what it is over: ``seeds``, ``images`` or ``""``) of the
    per-seed ``means`` of one cell.

    Two seeds or more: Student's t over the per-seed means (``scipy.stats.t``, k - 1 degrees of freedom).
    One seed: t over that seed's images from their sample std and count (``images``); without them, no
    interval (NaN). Never an interval over seeds from one seed."""
    from scipy import stats

    values = np.asarray([float(v) for v in means if v is not None and v == v], dtype=float)
    if len(values) == 0:
        return math.nan, math.nan, ""
    mean = float(values.mean())
    if len(values) >= 2:
        k, sem = len(values) - 1, float(stats.sem(values))
        return mean, (float(stats.t.ppf(0.5 + CONFIDENCE / 2, k)) * sem if sem > 0 else 0.0), "seeds"
    if image_std is not None and image_std == image_std and images is not None and int(images) >= 2:
        sem = float(image_std) / math.sqrt(int(images))
        return (
            mean,
            (float(stats.t.ppf(0.5 + CONFIDENCE / 2, int(images) - 1)) * sem if sem > 0 else 0.0),
            "images",
        )
    return mean, math.nan, ""


def seed_means(jobs: pd.DataFrame, metric: str) -> pd.Series:
    """``metric`` averaged per seed over ``jobs`` (any other key varying among them is averaged first)."""
    have = jobs[jobs[metric].notna()] if metric in jobs else jobs.iloc[0:0]
    seed = have["seed"].astype(str) if "seed" in have else pd.Series("", index=have.index)
    return have.groupby(seed, sort=False, dropna=False)[metric].mean().astype(float)


def seed_verdict(jobs: pd.DataFrame) -> tuple[float, float, str]:
    """(beats_grey, beats_lowpass4, verdict) of ``jobs``: the fractions averaged per seed, then over seeds,
    and :func:`splitinv.baselines.verdict` of them (NaN and ``unscored`` where the runs recorded none)."""
    grey, lowpass4 = (
        seed_means(jobs, f).mean() if f in jobs else math.nan for f in ("beats_grey", "beats_lowpass4")
    )
    return grey, lowpass4, verdict(grey, lowpass4)


def cell_stats(jobs: pd.DataFrame, metric: str) -> dict[str, Any]:
    """Mean over seeds, the 95 % half-width (:func:`interval`), the std of the per-seed means, and n: jobs,
    seeds and images per job (one number, ``a-b`` when jobs differ, None when unknown)."""
    means = seed_means(jobs, metric)
    have = jobs[jobs[metric].notna()] if metric in jobs else jobs.iloc[0:0]
    one = len(have) == 1  # one seed of one job: its own images give the interval
    image_std = have[f"{metric}_std"].iloc[0] if one and f"{metric}_std" in have else None
    counts = sorted({int(n) for n in have.get("n_images", pd.Series(dtype=float)).dropna()})
    mean, half, over = interval(means.tolist(), image_std, counts[0] if one and counts else None)
    images = None if not counts else (str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}")
    return {
        "mean": mean,
        "std": float(means.std(ddof=1)) if len(means) > 1 else math.nan,
        "count": len(have),
        "half": half,
        "seeds": len(means),
        "images": images,
        "over": over,
    }


def _fmt(stats: Any, digits: int) -> str:
    mean, half = stats["mean"], stats["half"]
    if not stats["count"] or mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    text = f"{mean:.{digits}f}"
    if isinstance(half, float) and math.isfinite(half):
        text += f" ± {half:.{digits}f}" + (IMAGES_MARK if stats["over"] == "images" else "")
    return text


def _digits(metric: str) -> int:
    return 2 if metric in ("psnr", "psnr_ceiling") else 3


def aggregate(frame: pd.DataFrame, rows: str, cols: str | None, metrics: Sequence[str]) -> pd.DataFrame:
    """Per (rows, cols) cell: each metric's :func:`cell_stats` (mean over seeds, 95 % half-width, n), the
    finished runs, the other statuses, the fractions that beat grey and the 4x4 low-pass averaged over seeds
    and their :func:`splitinv.baselines.verdict`.

    A key may join several with ``+`` (``cut+attacker``: one column per cut point and attacker).
    """
    frame = frame.copy()
    for key in [rows, cols] if cols else [rows]:
        parts = key.split("+")
        missing = [p for p in parts if p not in frame.columns]
        if missing:
            raise SplitinvError(
                f"unknown table key {missing[0]!r}: use one of {', '.join(KEYS)} (join several with +)."
            )
        if len(parts) > 1:
            frame[key] = ["/".join(map(str, values)) for values in frame[parts].itertuples(index=False)]
    unknown = [m for m in metrics if m not in DIRECTIONS]
    if unknown:
        raise SplitinvError(f"unknown metric {unknown[0]!r}: use some of {', '.join(DIRECTIONS)}.")
    keys = [rows, cols] if cols else [rows]
    frame[keys] = frame[keys].astype(str)
    jobs = frame["job"].astype(str) if "job" in frame else pd.Series("", index=frame.index)
    cells: dict[Any, dict[tuple[str, str], Any]] = {}
    for key, group in frame.groupby(keys, sort=False):
        ok = group[group["status"] == "ok"]
        cell: dict[tuple[str, str], Any] = {}
        for m in metrics:
            cell.update({(m, stat): value for stat, value in cell_stats(ok, m).items()})
        cell[("runs", "")] = len(ok)
        cell[("problems", "")] = ",".join(sorted(set(group["status"]) - {"ok"}))
        cell[("published", "")] = bool(jobs[group.index].str.startswith("published:").all())
        if "cut_depth" in group:
            cell[("depth", "")] = pd.to_numeric(group["cut_depth"], errors="coerce").mean()
        cell[("beats_grey", "")], cell[("beats_lowpass4", "")], cell[("verdict", "")] = seed_verdict(ok)
        cells[key[0] if len(keys) == 1 else tuple(key)] = cell
    out = pd.DataFrame.from_dict(cells, orient="index")
    out.columns = pd.MultiIndex.from_tuples(out.columns)
    if len(keys) > 1:
        out.index = pd.MultiIndex.from_tuples(out.index, names=keys)
    else:
        out.index.name = keys[0]
    return out


def _legend(agg: pd.DataFrame, metrics: Sequence[str], intervals: bool = True) -> list[str]:
    """What a table's ±, n, markers and arrows mean (the markers only where it shows them)."""
    lines = [
        f"mean ± half-width of a {CONFIDENCE * 100:g} % Student-t interval over the per-seed means (jobs of "
        "one seed averaged first); n = seeds × images per job."
        if intervals
        else "means over seeds and images (--no-intervals: no interval shown)."
    ]
    if intervals and any(agg[(m, "over")].eq("images").any() for m in metrics):
        lines.append(
            f"{IMAGES_MARK} one seed: the interval is over that seed's images, not over seeds "
            "(run more seeds)."
        )
    shown = set(agg[("verdict", "")]) if any(m in DIRECTION for m in metrics) else set()
    for word, what in ((NO_BETTER_THAN_LOWPASS, "a 4x4 low-pass image"), (NO_BETTER_THAN_GREY, "grey")):
        if word in shown:
            lines.append(
                f"{VERDICT_MARKS[word]} {word}: at most half of the images beat {what} (fractions "
                "averaged over seeds): the attack recovered little, which is no evidence of privacy."
            )
    arrow = {"lower": "↓", "higher": "↑"}
    views = (
        ("attacker", [m for m in metrics if m not in UTILITY]),
        ("user", [m for m in metrics if m in UTILITY]),
    )
    parts = [
        f"{who}: " + ", ".join(f"{LABELS.get(m, m)} {arrow[DIRECTIONS[m]]}" for m in these)
        for who, these in views
        if these
    ]
    lines.append(f"Arrows: which way is better, and for whom ({'; '.join(parts)}).")
    return lines


def table(
    frame: pd.DataFrame,
    rows: str = "cut",
    cols: str | None = "victim",
    metrics: Sequence[str] = ("lpips", "ssim", "psnr"),
    fmt: str = "md",
    intervals: bool = True,
) -> str:
    """A paper table: mean ± 95 % half-width over seeds and n (seeds × images), the best value per column
    marked, arrows for each direction (and whose), a marker on attack numbers whose verdict is not ``leaks``.

    fmt: ``md`` (best in **bold**), ``latex`` (booktabs, best in \\textbf), ``csv`` (plain numbers: mean,
    std of the seed means, jobs, half-width, seeds, images, what the interval is over; verdict).
    intervals: False prints the means alone (no ± and no n column: a compact table of one-seed runs).
    """
    if fmt not in ("md", "latex", "csv"):
        raise SplitinvError(f"unknown table format {fmt!r}: use md, latex or csv.")
    agg = aggregate(frame, rows, cols, metrics)
    if fmt == "csv":
        flat = agg.copy()
        flat.columns = [f"{a}_{b}" if b else a for a, b in flat.columns]
        return flat.reset_index().to_csv(index=False)
    row_keys = sorted(dict.fromkeys(agg.index.get_level_values(0)), key=_natural)
    if "depth" in agg.columns and rows in ("cut", "cut_spec"):
        depth = agg[("depth", "")].groupby(level=0, sort=False).mean()
        row_keys.sort(key=lambda r: math.inf if pd.isna(depth.get(r)) else depth.get(r))
    col_keys = list(dict.fromkeys(agg.index.get_level_values(1))) if cols else [None]
    if cols and "depth" in agg.columns and {"cut", "cut_spec"} & set(cols.split("+")):
        depth = agg[("depth", "")].groupby(level=1, sort=False).mean()
        col_keys.sort(key=lambda c: (math.inf if pd.isna(depth.get(c)) else depth.get(c), str(c)))

    def cell(r: str, c: str | None, m: str) -> tuple[str, float | None]:
        key = (r, c) if cols else r
        if key not in agg.index:
            return "—", None
        line = agg.loc[key]
        stats = {s: line[(m, s)] for s in ("mean", "half", "count", "over")}
        if not intervals:
            stats["half"] = math.nan
        n = int(stats["count"]) if not pd.isna(stats["count"]) else 0
        problems = line[("problems", "")]
        text = _fmt(stats, _digits(m))
        if n and m in DIRECTION:
            text += VERDICT_MARKS.get(line[("verdict", "")], "")
        if problems:
            text = f"{text} ({problems})" if n else problems
        if bool(line.get(("published", ""), False)):  # a paper's number is beside ours, never "best"
            return text, None
        return text, (line[(m, "mean")] if n else None)

    def sizes(r: str) -> str:
        found = []
        for c in col_keys:
            key = (r, c) if cols else r
            if key not in agg.index:
                continue
            line = agg.loc[key]
            counted = [m for m in metrics if line[(m, "count")]]
            if bool(line.get(("published", ""), False)):
                found.append("published")
            elif counted:
                seeds, images = line[(counted[0], "seeds")], line[(counted[0], "images")]
                found.append(f"{seeds} × {images}" if images else f"{seeds} seed{'s' if seeds != 1 else ''}")
        return ", ".join(dict.fromkeys(found)) or "0"

    best: dict[tuple[str | None, str], float] = {}
    for c in col_keys:
        for m in metrics:
            values = [v for r in row_keys if (v := cell(r, c, m)[1]) is not None and not math.isnan(v)]
            if len(set(values)) > 1:  # a column where every row ties has no best
                best[(c, m)] = min(values) if DIRECTIONS[m] == "lower" else max(values)
    arrow = {"lower": ("↓", r"$\downarrow$"), "higher": ("↑", r"$\uparrow$")}
    header = []
    for c in col_keys:
        for m in metrics:
            a = arrow[DIRECTIONS[m]][0 if fmt == "md" else 1]
            label = f"{LABELS.get(m, m)} {a}"
            header.append(f"{c} {label}" if c is not None and len(col_keys) > 1 else label)
    if intervals:
        header.append("n (seeds × images)")
    esc = str.maketrans(
        {"_": r"\_", "%": r"\%", "&": r"\&", "±": r"$\pm$", "≥": r"$\geq$", "×": r"$\times$",
         "†": r"$^\dagger$", "‡": r"$^\ddagger$", "§": r"$^\S$", "↑": r"$\uparrow$", "↓": r"$\downarrow$"}
    )  # fmt: skip
    body = []
    for r in row_keys:
        line = [r if fmt == "md" else r.translate(esc)]
        for c in col_keys:
            for m in metrics:
                text, value = cell(r, c, m)
                text = text if fmt == "md" else text.translate(esc)
                if value is not None and best.get((c, m)) == value:
                    text = f"**{text}**" if fmt == "md" else rf"\textbf{{{text}}}"
                line.append(text)
        if intervals:
            line.append(sizes(r) if fmt == "md" else sizes(r).translate(esc))
        body.append(line)
    legend = _legend(agg, metrics, intervals)
    if fmt == "md":
        out = ["| " + " | ".join([rows, *header]) + " |", "|" + "---|" * (len(header) + 1)]
        out += ["| " + " | ".join(line) + " |" for line in body]
        if cols and len(col_keys) == 1 and col_keys[0] is not None:
            out.insert(0, f"{cols}: {col_keys[0]}\n")
        return "\n".join(out) + "\n\n" + "\n".join(legend) + "\n"
    spec = "l" + "c" * len(header)
    out = [r"\begin{tabular}{" + spec + "}", r"\toprule"]
    if cols and len(col_keys) > 1:
        groups = [rf"\multicolumn{{{len(metrics)}}}{{c}}{{{str(c).translate(esc)}}}" for c in col_keys]
        out.append(" & " + " & ".join(groups) + r" & \\")
        starts = [2 + i * len(metrics) for i in range(len(col_keys))]
        out.append(" ".join(rf"\cmidrule(lr){{{s}-{s + len(metrics) - 1}}}" for s in starts))
        header = [f"{LABELS.get(m, m)} {arrow[DIRECTIONS[m]][1]}" for _ in col_keys for m in metrics]
        if intervals:
            header.append("n (seeds × images)")
    out.append(" & ".join([rows.translate(esc), *[h.translate(esc) for h in header]]) + r" \\")
    out.append(r"\midrule")
    for line in body:
        out.append(" & ".join(line) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}"]
    out += ["", r"\smallskip\footnotesize"] + [n.translate(esc) + r"\par" for n in legend]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------------------
# Figures


def _series_keys(frame: pd.DataFrame) -> list[str]:
    """The keys that tell curves apart: those that vary across the sweep, besides the cut point and seed."""
    candidates = ["victim", "attack", "weights", "data", "aux_data"]
    return [k for k in candidates if k in frame and frame[k].astype(str).nunique() > 1] or ["victim"]


def plot_depth(
    frame: pd.DataFrame, out_dir: str | Path, metrics: Sequence[str] = ("lpips", "ssim", "psnr")
) -> list[Path]:
    """Quality against relative cut depth, one curve per architecture (and attack): mean over seeds and its
    95 % interval (:func:`cell_stats`).

    Writes quality_vs_depth.png and .pdf into ``out_dir``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = frame[(frame["status"] == "ok") & frame["cut_depth"].notna()]
    metrics = [m for m in metrics if m in ok and ok[m].notna().any()]
    if ok.empty or not metrics:
        raise SplitinvError("nothing to plot: no finished runs with a known cut depth and a reported metric.")
    keys = _series_keys(ok)
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.0), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for label, group in ok.groupby(keys, sort=True):
            depths = sorted(group["cut_depth"].unique())
            stats = [cell_stats(group[group["cut_depth"] == d], metric) for d in depths]
            name = " / ".join(str(v) for v in (label if isinstance(label, tuple) else (label,)))
            ax.errorbar(
                depths,
                [c["mean"] for c in stats],
                yerr=[0.0 if c["half"] != c["half"] else c["half"] for c in stats],
                marker="o",
                ms=3,
                capsize=2,
                label=name,
            )
        arrow = "↓" if DIRECTION[metric] == "lower" else "↑"
        ax.set_xlabel("relative cut depth")
        ax.set_ylabel(f"{LABELS.get(metric, metric)} {arrow} (attacker: {DIRECTION[metric]} is better)")
        ax.set_xlim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, frameon=False)
    bars = f"bars: {CONFIDENCE * 100:g} % t interval over seeds (one seed: over its images)"
    fig.suptitle(f"{_figure_title(ok)}; {bars}", fontsize=9)
    fig.tight_layout()
    return _save_figure(fig, Path(out_dir) / "quality_vs_depth")


def _figure_title(frame: pd.DataFrame) -> str:
    """What a figure shows, so that two sweeps' figures can be told apart: victims, attacks, data, defense."""
    parts = []
    for key, label in (
        ("victim", "victim"),
        ("attack", "attack"),
        ("data", "data"),
        ("defense_setting", "defense"),
    ):
        if key in frame:
            values = sorted({str(v) for v in frame[key].dropna()} - {"none"} if key == "defense_setting" else
                            {str(v) for v in frame[key].dropna()})  # fmt: skip
            if values:
                parts.append(f"{label} {', '.join(values[:4])}{' ...' if len(values) > 4 else ''}")
    n = int(frame["seed"].nunique()) if "seed" in frame else 0
    return "; ".join(parts) + (f" ({n} seeds)" if n > 1 else "")


def _job_captions(job_dir: Path, n: int) -> list[str] | None:
    """SSIM / PSNR of a job's first ``n`` images (its samples.csv rows, in images.pt's order), or None."""
    from splitinv.results import SAMPLES_FILE
    from splitinv.sheets import score_caption

    try:
        samples = pd.read_csv(job_dir / SAMPLES_FILE)
    except (OSError, ValueError) as err:  # missing, empty or unreadable
        log.warning("%s: no per-image scores under its reconstructions (%s)", job_dir / SAMPLES_FILE, err)
        return None
    columns = [samples[k].tolist() if k in samples else [] for k in ("ssim", "psnr")]
    return [score_caption(*(float(c[i]) if i < len(c) else None for c in columns)) for i in range(n)]


def plot_reconstructions(
    frame: pd.DataFrame, sweep_dir: str | Path, out_dir: str | Path, n: int = 8
) -> list[Path]:
    """One figure per architecture (and attack): the first ``n`` evaluation images ("original"), then their
    reconstruction at each cut point in order of depth (and each defense setting, where the sweep has
    several), first seed, each reconstruction's SSIM / PSNR from its job's samples.csv under it, drawn like a
    run's sheets (:func:`splitinv.sheets.draw_sheet`). Writes reconstructions_<...>.png and .pdf into
    ``out_dir``."""
    from splitinv.results import IMAGES_FILE
    from splitinv.sheets import SheetRow, draw_sheet, save_figure

    ok = frame[frame["status"] == "ok"].sort_values(["cut_depth", "seed"], na_position="last")
    keys = _series_keys(ok)
    written: list[Path] = []
    unreadable: list[str] = []
    for label, group in ok.groupby(keys, sort=True):
        defenses = "defense_setting" in group and group["defense_setting"].nunique() > 1
        by = ["cut", "defense_setting"] if defenses else ["cut"]
        rows: list[SheetRow] = []
        seeds: set[str] = set()
        for key, jobs in group.groupby(by, sort=False):
            match = rows[0].images if rows else None  # later rows: the same evaluation images
            found = _first_images(Path(sweep_dir), jobs, unreadable, match, n)  # the first job that reads
            if found is None:
                continue
            job_dir, jobs, (originals, recon) = found
            if not rows:
                rows.append(SheetRow("original", originals[:n]))
            name = ", ".join(str(v) for v in (key if isinstance(key, tuple) else (key,)))
            rows.append(SheetRow(name, recon[:n], _job_captions(job_dir, len(recon[:n]))))
            seed = jobs.iloc[0]["seed"]
            seeds.add(str(int(seed)) if isinstance(seed, float) and seed.is_integer() else str(seed))
        if not rows:
            continue
        title = f"{_figure_title(group)}; seed {', '.join(sorted(seeds))}; SSIM / PSNR under each image"
        fig = draw_sheet(rows, title)
        tag = "_".join(str(v) for v in (label if isinstance(label, tuple) else (label,)))
        written += save_figure(fig, Path(out_dir) / f"reconstructions_{tag}")
    if not written:
        if unreadable:
            raise SplitinvError(
                f"no readable {IMAGES_FILE} in the finished jobs below {sweep_dir} ({len(unreadable)} "
                f"unreadable, first {unreadable[0]}): rerun those jobs."
            )
        raise SplitinvError(
            f"no {IMAGES_FILE} in the finished jobs below {sweep_dir}: rerun them with this version."
        )
    return written


def _first_images(
    sweep_dir: Path, jobs: pd.DataFrame, unreadable: list[str], match: Any, n: int
) -> tuple[Path, pd.DataFrame, tuple[Any, Any]] | None:
    """(job folder, its rows from ``jobs`` onwards, its images) of the first job in ``jobs`` whose
    images.pt reads and, where ``match`` is given, holds those first ``n`` originals (a figure's rows
    share one set of evaluation images). An unreadable file is warned about, added to ``unreadable``, and
    the next job (seed) tried."""
    import torch

    from splitinv.results import IMAGES_FILE, load_images

    for i in range(len(jobs)):
        job_dir = sweep_dir / str(jobs.iloc[i]["job"])
        if not (job_dir / IMAGES_FILE).is_file():
            continue
        try:
            originals, recon = load_images(job_dir / IMAGES_FILE)
        except SplitinvError as err:
            log.warning("%s: left out of the figure", err)
            unreadable.append(str(job_dir / IMAGES_FILE))
            continue
        if match is None or torch.equal(originals[:n], match):
            return job_dir, jobs.iloc[i:], (originals, recon)
    return None


def chance_accuracy(frame: pd.DataFrame, sweep_dir: str | Path) -> float | None:
    """1 / classes of the victim the finished jobs of ``frame`` attacked (their metrics.json), or None when
    no job says (or they disagree)."""
    classes = set()
    for job in frame.loc[frame["status"] == "ok", "job"].astype(str):
        rec, _ = _read_json(Path(sweep_dir) / job / METRICS_FILE)
        victim = ((rec or {}).get("details") or {}).get("victim") or {} if isinstance(rec, dict) else {}
        if isinstance(victim.get("num_classes"), int) and victim["num_classes"] > 0:
            classes.add(victim["num_classes"])
    return 1.0 / classes.pop() if len(classes) == 1 else None


MARGIN = 0.03  # of an axis' span, beyond its stated ends: a point at an end is drawn whole


def _span(low: float | None, high: float | None, values: Sequence[float]) -> tuple[float, float]:
    """Axis limits from ``low`` to ``high`` (either may be None: the data's end instead), widened only to
    take in data (means ± intervals) outside them, plus :data:`MARGIN` each side."""
    data = [float(v) for v in values if v == v]
    lo = min([v for v in (low, high) if v is not None and v == v] + data)
    hi = max([v for v in (low, high) if v is not None and v == v] + data)
    pad = MARGIN * (hi - lo) if hi > lo else 0.05 * (abs(hi) or 1.0)  # one value: a small span around it
    return lo - pad, hi + pad


def plot_privacy_utility(
    frame: pd.DataFrame, out_dir: str | Path, metric: str = "ssim", chance: float | None = None
) -> list[Path]:
    """Privacy-utility curves: the defended split's accuracy (x) against an attack metric (y), one panel per
    cut point, one curve per defense and attacker in order of the defense's strength: mean over seeds with
    95 % intervals as error bars (:func:`cell_stats`), adaptive attackers solid, naive ones dashed, the
    undefended split a black star. Axes run from chance accuracy (``chance``, 1 / classes) and the grey
    image's score (the baseline every run records) to the undefended split's values, widened only to take
    in data beyond them; the axis labels state both ends. Writes privacy_utility_<metric>.png and .pdf."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if metric not in DIRECTION:
        raise SplitinvError(f"unknown metric {metric!r}: use one of {', '.join(DIRECTION)}.")
    # utility on the whole test split where every run measured it, else on the evaluation images
    x_key = "utility_test" if "utility_test" in frame and frame["utility_test"].notna().any() else "utility"
    ok = frame[(frame["status"] == "ok") & frame[x_key].notna() & frame[metric].notna()]
    if ok.empty:
        raise SplitinvError(
            f"nothing to plot: no finished run reports both utility (labelled data) and {metric}."
        )
    if not (ok["defense"] != "none").any():
        raise SplitinvError(
            "no defended runs in this sweep: sweep defense=... to draw privacy-utility curves."
        )
    cuts = sorted(ok["cut"].astype(str).unique(), key=lambda c: ok[ok["cut"] == c]["cut_depth"].mean())
    fig, axes = plt.subplots(1, len(cuts), figsize=(4.4 * len(cuts), 3.6), squeeze=False)
    colours = {d: f"C{i}" for i, d in enumerate(sorted(set(ok["defense"]) - {"none"}))}
    label = LABELS.get(metric, metric)
    safer = "lower" if DIRECTION[metric] == "higher" else "higher"  # a worse reconstruction leaks less
    where = "test split" if x_key == "utility_test" else "evaluation images"
    for ax, cut in zip(axes[0], cuts, strict=True):
        here = ok[ok["cut"].astype(str) == cut]
        xs: list[float] = []
        ys: list[float] = []
        for (defense, attacker), group in here[here["defense"] != "none"].groupby(["defense", "attacker"]):
            order = sorted(
                group.groupby("defense_strength", dropna=False, sort=False).groups.items(),
                key=lambda kv: _natural(kv[0]),
            )
            points = [
                (cell_stats(group.loc[idx], x_key), cell_stats(group.loc[idx], metric)) for _, idx in order
            ]
            x = [p[0]["mean"] for p in points]
            y = [p[1]["mean"] for p in points]
            xerr = [0.0 if p[0]["half"] != p[0]["half"] else p[0]["half"] for p in points]
            yerr = [0.0 if p[1]["half"] != p[1]["half"] else p[1]["half"] for p in points]
            style = "--" if attacker == "naive" else "-"
            ax.plot(
                x,
                y,
                marker="o",
                ms=3,
                color=colours[defense],
                linestyle=style,
                label=f"{defense} ({attacker})",
            )
            ax.errorbar(
                x, y, xerr=xerr, yerr=yerr, fmt="none", ecolor=colours[defense], elinewidth=0.8, capsize=2
            )
            xs += [v + s * e for v, e in zip(x, xerr, strict=True) for s in (-1, 1)]
            ys += [v + s * e for v, e in zip(y, yerr, strict=True) for s in (-1, 1)]
        if metric == "psnr":
            cx_, cy_ = _plot_psnr_ceiling(ax, here, x_key, colours)
            xs += cx_
            ys += cy_
        clean = here[here["defense"] == "none"]
        top_x = top_y = None
        if not clean.empty:
            cx, cy = cell_stats(clean, x_key), cell_stats(clean, metric)
            top_x, top_y = cx["mean"], cy["mean"]
            errs = [[0.0 if s["half"] != s["half"] else s["half"]] for s in (cx, cy)]
            ax.errorbar(
                [top_x], [top_y], xerr=errs[0], yerr=errs[1], fmt="k*", ms=9, capsize=2, label="no defense"
            )
            xs += [top_x - errs[0][0], top_x + errs[0][0]]
            ys += [top_y - errs[1][0], top_y + errs[1][0]]
        grey_key = f"grey_{metric}"
        grey = here[grey_key].mean() if grey_key in here and here[grey_key].notna().any() else None
        ax.set_xlim(*_span(chance, top_x, xs))
        ax.set_ylim(*_span(grey, top_y, ys))
        ax.set_title(f"cut {cut}", fontsize=9)
        start = f"chance {chance:.3f}" if chance is not None else "the data (chance unknown)"
        end = f"undefended {top_x:.3f}" if top_x is not None else "the data (no undefended run)"
        ax.set_xlabel(f"accuracy of the defended split ({where}) ↑\naxis: {start} to {end}", fontsize=8)
        start = f"grey image {grey:.3f}" if grey is not None else "the data (grey baseline not scored)"
        end = f"undefended {top_y:.3f}" if top_y is not None else "the data (no undefended run)"
        ax.set_ylabel(f"attack {label} ({safer} leaks less)\naxis: {start} to {end}", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    victims = ", ".join(sorted(ok["victim"].astype(str).unique()))
    attacks = ", ".join(sorted(ok["attack"].astype(str).unique()))
    seeds = int(ok["seed"].astype(str).nunique()) if "seed" in ok else 1
    fig.suptitle(
        f"privacy-utility: {victims}; attacks: {attacks}\nmean over {seeds} seed{'s' if seeds != 1 else ''}; "
        f"bars: {CONFIDENCE * 100:g} % t interval over seeds (one seed: over its images)",
        fontsize=8,
    )
    fig.tight_layout()
    return _save_figure(fig, Path(out_dir) / f"privacy_utility_{metric}")


def _plot_psnr_ceiling(
    ax: Any, here: pd.DataFrame, x_key: str, colours: dict[str, str]
) -> tuple[list[float], list[float]]:
    """Beside the attacks' PSNR: the PSNR ceiling dFIL puts on any unbiased attacker (``psnr_ceiling``), one
    dotted curve per noisy defense over its strength, where the runs recorded a leakage bound; the points
    drawn (x, y), so that the axes hold them."""
    xs: list[float] = []
    ys: list[float] = []
    if "psnr_ceiling" not in here or not here["psnr_ceiling"].notna().any():
        return xs, ys
    bounded = here[here["psnr_ceiling"].notna() & (here["defense"] != "none")]
    for defense, group in bounded.groupby("defense"):
        stats = group.groupby("defense_strength", dropna=False)[[x_key, "psnr_ceiling"]].mean().reset_index()
        stats = stats.sort_values("defense_strength", key=lambda s: pd.to_numeric(s, errors="coerce"))
        ax.plot(
            stats[x_key],
            stats["psnr_ceiling"],
            marker="^",
            ms=3,
            color=colours.get(defense, "k"),
            linestyle=":",
            label=f"{defense}: dFIL ceiling (unbiased)",
        )
        xs += [float(v) for v in stats[x_key] if v == v]
        ys += [float(v) for v in stats["psnr_ceiling"] if v == v]
    return xs, ys


def _save_figure(fig: Any, stem: Path) -> list[Path]:
    """A pyplot figure as ``stem``.png / .pdf (written as the sheets are: temporary file, then renamed)."""
    import matplotlib.pyplot as plt

    from splitinv.sheets import save_figure

    try:
        return save_figure(fig, stem, tight=True)
    finally:
        plt.close(fig)
