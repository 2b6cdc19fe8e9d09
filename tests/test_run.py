"""End to end: one splitinv-run job composed from the real configs, its files, its logger, its failures."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import torchvision
from PIL import Image

from splitinv import metrics
from splitinv.attacks.decoder import DecoderModule, build_decoder, load_decoder
from splitinv.config import compose
from splitinv.errors import SplitinvError
from splitinv.run import run
from splitinv.split import Split

TINY = [
    "victim.image_size=32",
    "data=fashion_mnist_mini",
    "data.n_aux=64",
    "data.n_eval=6",
    "data.batch_size=16",
    "trainer.max_epochs=1",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "cut=layer2",
    "utility_test=false",  # the whole test split is measured where a test asks for it
]


def _run(tmp_path: Path, *overrides: str, name: str = "run") -> tuple[dict, Path]:
    out = tmp_path / name
    with pytest.warns(UserWarning, match="RANDOM weights"):
        record = run(compose([*TINY, "logger=csv", *overrides], output_dir=out))
    return record, out


def test_run_writes_every_result_file(tmp_path: Path) -> None:
    _record, out = _run(tmp_path)
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith("logs")) == [
        "config.yaml",
        "decoder.pt",
        "images.pt",
        "metrics.json",
        "metrics.json.sha256",  # its digest: table, plot, advise and reruns check it
        "reconstructions.pdf",
        "reconstructions.png",
        "samples.csv",
    ]
    digest = hashlib.sha256((out / "metrics.json").read_bytes()).hexdigest()
    assert (out / "metrics.json.sha256").read_text() == f"{digest}  metrics.json\n"
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["status"] == "ok"
    for name in ("ssim", "psnr", "feature_error", "label_agreement"):
        assert set(saved[name]) == {"mean", "std", "n"} and saved[name]["n"] == 6
    assert saved["lpips"] is None  # no backbone weights offline: null, never a random backbone
    assert any("LPIPS unavailable" in w for w in saved["warnings"])
    assert any("RANDOM weights" in w for w in saved["warnings"])
    # the identifying config values, flat at the top
    assert {k: saved[k] for k in ("victim", "weights", "cut", "attack", "data", "seed")} == {
        "victim": "resnet18",
        "weights": "random",
        "cut": "layer2",
        "attack": "decoder",
        "data": "fashion_mnist",
        "seed": 0,
    }
    assert saved["contract"] == json.loads(json.dumps(metrics.CONTRACT))
    assert saved["details"]["cut"]["shape"] == [128, 4, 4]
    assert 0 < saved["details"]["cut"]["relative_depth"] < 1
    cost = saved["cost"]
    assert cost["device"] == "cpu" and cost["wall_time_s"] > 0 and cost["peak_memory_mb"] > 0
    assert cost["train_images_per_s"] > 0 and cost["train_steps"] == 4  # 64 images / batch 16, one epoch
    # per-sample CSV: one row per evaluation image, same numbers as the summary
    samples = pd.read_csv(out / "samples.csv")
    assert len(samples) == 6 and sorted(samples["index"]) == list(range(6))
    assert samples["ssim"].mean() == pytest.approx(saved["ssim"]["mean"], abs=1e-6)
    assert samples["psnr"].std(ddof=1) == pytest.approx(saved["psnr"]["std"], abs=1e-6)
    # one sheet (6 images): a pair of rows, 6 columns of 32 px images drawn 7x (224 px), labels and scores
    sheet = Image.open(out / "reconstructions.png")
    assert sheet.size[0] > 6 * 224 and 2 * 224 < sheet.size[1] < 3 * 224
    # the decoder checkpoint reloads into the same function
    decoder = load_decoder(out / "decoder.pt")
    assert decoder.feature_shape == (128, 4, 4)
    assert "resnet18" in (out / "config.yaml").read_text()


def test_same_seed_same_numbers(tmp_path: Path) -> None:
    a, _ = _run(tmp_path, name="a")
    b, _ = _run(tmp_path, name="b")
    assert a["ssim"] == b["ssim"] and a["psnr"] == b["psnr"]


def test_lpips_is_reported_when_the_backbone_is_cached(tmp_path: Path) -> None:
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    cache.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.alexnet().state_dict(), cache / "alexnet-owt-7be5be79.pth")
    metrics.clear_lpips_cache()
    record, out = _run(tmp_path, "lpips=required")
    assert record["lpips"]["n"] == 6 and 0 <= record["lpips"]["mean"] <= 2
    assert "lpips" in pd.read_csv(out / "samples.csv").columns


def test_lpips_required_fails_before_training(tmp_path: Path) -> None:
    with pytest.raises(metrics.LPIPSUnavailable, match="alexnet-owt-7be5be79.pth"):
        run(compose([*TINY, "logger=csv", "lpips=required"], output_dir=tmp_path / "r"))
    assert not (tmp_path / "r" / "metrics.json").exists()


def test_failure_leaves_no_results_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import splitinv.sheets as sheets

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(sheets, "save_figure", broken)
    with pytest.raises(OSError, match="disk full"), pytest.warns(UserWarning):
        run(compose([*TINY, "logger=csv"], output_dir=tmp_path / "r"))
    left = sorted(p.name for p in (tmp_path / "r").iterdir())
    assert "metrics.json" not in left and not any(n.startswith(".partial") for n in left)


def test_nan_loss_is_a_clear_error() -> None:
    class NaNHead(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.full((x.shape[0], 8, 4, 4), float("nan"))

    module = DecoderModule(Split(NaNHead()).oracle(), build_decoder((8, 4, 4), (3, 16, 16)))
    with pytest.raises(SplitinvError, match="loss became nan.*lower attack.lr"):
        module.training_step((torch.rand(2, 3, 16, 16),), 0)


def test_wandb_offline_one_run_per_job(tmp_path: Path) -> None:
    pytest.importorskip("wandb")
    import wandb

    outs = []
    for seed in (0, 1):
        out = tmp_path / f"job{seed}"
        with pytest.warns(UserWarning):
            run(compose([*TINY, "logger=wandb", f"seed={seed}", "sweep_name=test-sweep"], output_dir=out))
        assert wandb.run is None  # finished after each job
        outs.append(out)
    run_dirs = [d for out in outs for d in (out / "wandb").glob("offline-run-*")]
    assert len(run_dirs) == 2 and len({d.name for d in run_dirs}) == 2
    for run_dir in run_dirs:  # the grid and the per-sample table were logged as media
        assert len(list(run_dir.glob("files/media/images/reconstructions_*.png"))) == 1
        table = json.loads(next(run_dir.glob("files/media/table/samples_*.table.json")).read_text())
        assert "ssim" in table["columns"] and len(table["data"]) == 6


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-c", "from splitinv.run import main; main()", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["victim.name=resnt18"], "unknown victim 'resnt18'.*resnet18"),
        (["cut=layr2"], "no cut point 'layr2'.*layer2"),
        (["cut=layer1.0.conv1"], "skip connection.*nearest valid points"),
        (["data=imagefolder", "data.root=/no/such/folder"], "/no/such/folder"),
        (["victim=vit_b_16", "victim.image_size=224", "data.image_size=64"], "cannot take 64x64"),
        (["data=nosuchdata"], "unknown data 'nosuchdata'.*photos"),
        (["attack=nosuchattack"], "unknown attack 'nosuchattack'.*decoder"),
        (["defense=gausian"], "unknown defense 'gausian' \\(did you mean gaussian\\?\\)"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    tmp_path: Path, overrides: list[str], message: str, capsys: pytest.CaptureFixture, monkeypatch
) -> None:
    import re

    from splitinv.run import main

    out = tmp_path / "run"
    args = [*TINY, "logger=csv", f"hydra.run.dir={out}", *overrides]
    if overrides == ["victim.name=resnt18"]:  # one case through the console script, in its own process
        proc = _cli(*args, cwd=tmp_path)
        code, stderr = proc.returncode, proc.stderr
    else:  # the same entry point in this process (a subprocess costs seconds of imports per case)
        monkeypatch.setattr(sys, "argv", ["splitinv-run", *args])
        monkeypatch.chdir(tmp_path)
        with pytest.raises(SystemExit) as exit_info:
            main()
        code, stderr = exit_info.value.code, capsys.readouterr().err
    assert code == 2, stderr[-2000:]
    error_lines = [line for line in stderr.splitlines() if line.startswith("splitinv-run: error:")]
    assert len(error_lines) == 1 and "Traceback" not in stderr, stderr[-2000:]
    assert re.search(message, error_lines[0]), error_lines[0]
    assert not list(tmp_path.rglob("metrics.json"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["defense=gaussian", "defense.scale=-1"], "scale.*-1"),
        (["defense=dropout", "defense.p=1.5"], "p.*1.5"),
        (["defense=quantize", "defense.bits=0"], "bits.*0"),
        (["defense=topk", "defense.k=100000"], "k=100000"),
        (["defense=nopeek"], "trained with the network.*splitinv-train-defense"),
    ],
)
def test_bad_defense_settings_are_one_line_before_training(
    tmp_path: Path, overrides: list[str], message: str
) -> None:
    with pytest.raises(SplitinvError, match=message) as err:
        run(compose([*TINY, "logger=csv", "trainer.max_epochs=50", *overrides], output_dir=tmp_path))
    assert "\n" not in str(err.value) and not list(tmp_path.rglob("metrics.json"))


def test_decoder_checkpoint_rebuilds_its_own_architecture(tmp_path: Path) -> None:
    from splitinv.attacks.decoder import DECODER_FORMAT, DecoderAttack

    attack = DecoderAttack()
    attack.decoder = build_decoder((256, 2, 2), (3, 32, 32))
    attack.save(tmp_path / "decoder.pt")
    z = torch.rand(2, 256, 2, 2)
    with torch.no_grad():
        assert torch.equal(load_decoder(tmp_path / "decoder.pt")(z), attack.decoder.eval()(z))
    broken = torch.load(tmp_path / "decoder.pt", weights_only=True)
    broken["width"] = 64  # not the width its weights were trained with
    assert broken["format"] == DECODER_FORMAT
    torch.save(broken, tmp_path / "old.pt")
    with pytest.raises(SplitinvError, match="does not fit the architecture"):
        load_decoder(tmp_path / "old.pt")
