"""Sweeps: cut-point specs, activation cache, resumed and failing jobs, launchers, DDP, tables, figures."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from splitinv import build_victim, cut
from splitinv.config import compose
from splitinv.cut import extractor, resolve_point, stage_points
from splitinv.data import FashionMNISTDataModule
from splitinv.errors import ResultsExist, SplitinvError
from splitinv.features import FeatureCache
from splitinv.report import collect, plot_depth, plot_reconstructions, table
from splitinv.run import expand_cut_sweep, run

TINY = [
    "victim.image_size=32",
    "data=fashion_mnist_mini",
    "data.n_aux=64",
    "data.n_eval=4",
    "data.batch_size=16",
    "trainer.max_epochs=1",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "logger=csv",
    "utility_test=false",
]


def _victim(name: str = "resnet18", size: int = 32):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_victim(name, image_size=size)


def _splitinv_run(*args: str, cwd: Path, timeout: int = 400) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    script = shutil.which("splitinv-run")  # the console script: DDP re-launches it per rank by its path
    command = [script] if script else [sys.executable, "-c", "from splitinv.run import main; main()"]
    return subprocess.run(
        [*command, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


# ------------------------------------------------------------------------------------ cut-point specs


def test_point_specs_resolve_against_the_victims_own_points() -> None:
    resnet = _victim()
    stages = stage_points(resnet)
    assert resolve_point(resnet, "stage:2") == stages[1] == "layer1"
    assert resolve_point(resnet, "layer3") == "layer3"
    assert resolve_point(resnet, "index:0") == "conv1"
    assert resolve_point(resnet, "depth:0") == "conv1" and resolve_point(resnet, "depth:1") == "fc"
    deit = _victim("deit_small_patch16_224")
    assert stage_points(deit) == [f"blocks.{i}" for i in range(12)]
    assert resolve_point(deit, "stage:6") == "blocks.5"
    for bad, message in (
        ("stage:99", "has 5 stages|has \\d+ stages"),
        ("depth:2", "between 0 and 1"),
        ("stage:x", "number"),
    ):
        with pytest.raises(SplitinvError, match=message):
            resolve_point(resnet, bad)


def test_cut_at_stages_expands_to_the_victims_points() -> None:
    argv = expand_cut_sweep(["-m", "victim=resnet18", "victim.image_size=64", "cut=@stages", "seed=0,1"])
    assert argv == [
        "-m",
        "victim=resnet18",
        "victim.image_size=64",
        f"cut={','.join(stage_points(_victim(size=64)))}",
        "seed=0,1",
    ]
    argv = expand_cut_sweep(["victim=deit_small_patch16_224", "victim.image_size=32", "cut=@every:4"])
    assert argv[-1] == "cut=blocks.3,blocks.7,blocks.11"
    with pytest.raises(SplitinvError, match="one victim"):
        expand_cut_sweep(["victim=resnet18,vgg16_bn", "cut=@stages"])


# ---------------------------------------------------------------------------------- activation cache


@pytest.mark.parametrize("method", ["fx", "hooks"])
def test_extractor_gives_every_points_activation_in_one_pass(method: str) -> None:
    victim = _victim()
    x = torch.rand(2, 3, 32, 32)
    points = ["bn1", "layer1", "layer3"]  # bn1 is followed by an in-place ReLU: its value must be kept
    with torch.no_grad():
        out = extractor(victim, points, method=method)(x)
        for point in points:
            head, _ = cut(victim, point, method=method)
            assert torch.equal(out[point], head(x)), point
    with pytest.raises(SplitinvError, match="skip connection"):
        extractor(victim, ["layer1", "layer1.0.conv1"], method=method)


def _cache(tmp_path: Path, victim, **data_kwargs) -> FeatureCache:
    dm = FashionMNISTDataModule(vendored=True, image_size=32, n_aux=48, n_eval=4, **data_kwargs)
    return FeatureCache(tmp_path / "cache", victim, dm, ["layer1", "layer2", "layer3"], batch_size=16)


def test_cache_holds_the_heads_activations_from_one_pass(tmp_path: Path) -> None:
    victim = _victim()
    calls = []
    victim.model.conv1.register_forward_hook(lambda *_: calls.append(1))
    cache = _cache(tmp_path, victim)
    images, feats = cache.load("layer2")
    assert len(calls) == 3  # 48 images in batches of 16: ONE pass for all three points
    assert images.dtype == torch.uint8 and images.shape == (48, 3, 32, 32)
    assert feats.dtype == torch.float16 and feats.shape == (48, 128, 4, 4)
    cache.load("layer3")
    cache.load("layer1")
    assert len(calls) == 3  # the other points came from disk
    head, _ = cut(victim, "layer2")
    with torch.no_grad():
        expected = head(images[:8].float() / 255)
    assert torch.allclose(feats[:8].float(), expected, atol=2e-2, rtol=1e-2)  # fp16 storage
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 4  # images + 3 points


def test_cache_key_changes_with_victim_weights_data_and_point(tmp_path: Path) -> None:
    victim = _victim()
    base = _cache(tmp_path, victim)
    assert base.key("layer1") != base.key("layer2")
    assert _cache(tmp_path, victim, seed=1).key("layer1") != base.key("layer1")  # other data
    other_size = FashionMNISTDataModule(vendored=True, image_size=32, n_aux=32, n_eval=4)
    assert FeatureCache(tmp_path, victim, other_size, ["layer1"]).key("layer1") != base.key("layer1")
    # weights from a file: the key follows the file's content
    ckpt = tmp_path / "v.pt"
    torch.save(victim.checkpoint(), ckpt)
    a = FeatureCache(tmp_path, build_victim("resnet18", weights=ckpt), base.datamodule, ["layer1"])
    with torch.no_grad():
        victim.model.conv1.weight.add_(1.0)
    torch.save(victim.checkpoint(), ckpt)
    b = FeatureCache(tmp_path, build_victim("resnet18", weights=ckpt), base.datamodule, ["layer1"])
    assert a.key("layer1") != b.key("layer1")
    assert FeatureCache(tmp_path, victim, base.datamodule, ["layer1"], dtype="float32").key(
        "layer1"
    ) != base.key("layer1")


def test_decoder_trains_from_the_cache_through_the_run(tmp_path: Path) -> None:
    overrides = [
        *TINY,
        "cache.enabled=true",
        f"cache.dir={tmp_path / 'cache'}",
        "cache.points=[layer1,layer2]",
    ]
    with pytest.warns(UserWarning):
        first = run(compose([*overrides, "cut=layer1"], output_dir=tmp_path / "a"))
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 3
    with pytest.warns(UserWarning):
        second = run(compose([*overrides, "cut=layer2"], output_dir=tmp_path / "b"))
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 3  # layer2 was computed in the first job's pass
    assert first["cost"]["train_steps"] == second["cost"]["train_steps"] == 4
    assert second["ssim"]["n"] == 4


# ------------------------------------------------------------------------------- resume and failure


def test_a_finished_job_is_skipped_and_a_changed_one_reruns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "job"
    with pytest.warns(UserWarning):
        first = run(compose([*TINY, "cut=layer2"], output_dir=out))
    import splitinv.run as run_module

    def must_not_build(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished job was run again")

    monkeypatch.setattr(run_module, "instantiate", must_not_build)
    assert run(compose([*TINY, "cut=layer2", "trainer.enable_progress_bar=true"], output_dir=out)) == first
    with pytest.raises(ResultsExist, match="another config"):  # another config: refused, results untouched
        run(compose([*TINY, "cut=layer2", "attack.lr=0.01"], output_dir=out))
    with pytest.raises(AssertionError, match="run again"):  # ... unless overwrite=true: the job runs
        run(compose([*TINY, "cut=layer2", "attack.lr=0.01", "overwrite=true"], output_dir=out))
    with pytest.raises(AssertionError, match="run again"):  # skip_done=false: the job runs
        run(compose([*TINY, "cut=layer2", "skip_done=false"], output_dir=out))


def test_a_failing_job_is_recorded_and_the_sweep_goes_on(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = _splitinv_run("-m", *TINY, "cut=layer2,layr9", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]  # the sweep went on, and its exit says a job failed
    assert "1 job(s) failed" in proc.stderr
    assert (sweep / "0" / "metrics.json").is_file()
    failed = json.loads((sweep / "1" / "failed.json").read_text())
    assert "layr9" in failed["error"] and "Traceback" in failed["traceback"]
    frame = collect(sweep)
    assert sorted(frame["status"]) == ["failed", "ok"]
    assert "failed" in table(frame, rows="cut", cols=None, metrics=["ssim"])
    # resuming the same sweep reruns nothing that finished
    start = time.perf_counter()
    again = _splitinv_run("-m", *TINY, "cut=layer2", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert again.returncode == 0 and "skipping" in again.stderr + again.stdout
    assert json.loads((sweep / "0" / "metrics.json").read_text()) == json.loads(
        (sweep / "0" / "metrics.json").read_text()
    )
    assert time.perf_counter() - start < 120


# --------------------------------------------------------------------------------- launchers and DDP


@pytest.mark.slow
def test_submitit_local_runs_a_two_job_sweep(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = _splitinv_run(
        "-m",
        "hydra/launcher=local_submitit",
        *TINY,
        "cut=layer1,layer2",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(p.read_text()) for p in sorted(sweep.rglob("metrics.json"))]
    assert sorted(r["cut"] for r in records) == ["layer1", "layer2"]
    assert list(sweep.rglob("*_submitted.pkl")) or list(sweep.rglob(".submitit"))  # ran through submitit


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_splits_the_auxiliary_data(tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    proc = _splitinv_run(
        *TINY,
        "cut=layer2",
        "trainer.devices=2",
        "trainer.strategy=ddp",
        f"hydra.run.dir={out}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((out / "metrics.json").read_text())
    # 64 auxiliary images, batch 16, two ranks: each rank takes 32 images -> 2 steps (one process: 4)
    assert record["cost"]["train_steps"] == 2
    assert record["ssim"]["n"] == 4


# -------------------------------------------------------------------------------- sweep -> table -> figure


@pytest.mark.slow
@pytest.mark.parametrize("experiment", ["resnet_split_sweep_cpu", "arch_comparison_cpu"])
def test_cpu_experiments_run_end_to_end(experiment: str, tmp_path: Path) -> None:
    sweep = tmp_path / experiment
    proc = _splitinv_run(
        "-m",
        f"experiment={experiment}",
        f"hydra.sweep.dir={sweep}",
        f"cache.dir={tmp_path / 'cache'}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    frame = collect(sweep)
    assert (frame["status"] == "ok").all() and len(frame) in (4, 6)
    rows, cols = ("cut", None) if experiment.startswith("resnet") else ("cut_spec", "victim")
    text = table(frame, rows=rows, cols=cols, metrics=["ssim", "psnr"], fmt="latex")
    assert r"\textbf" in text and r"\bottomrule" in text
    figures = plot_depth(frame, tmp_path / "fig") + plot_reconstructions(frame, sweep, tmp_path / "fig")
    assert all(p.stat().st_size > 1000 for p in figures)
    assert {p.suffix for p in figures} == {".png", ".pdf"}
