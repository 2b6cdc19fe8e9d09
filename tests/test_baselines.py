"""Trivial reconstructions scored beside every attack (grey, mean auxiliary image, 4x4 / 8x8 low-pass)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pytest
import torch

from splitinv import baselines, metrics
from splitinv.config import compose
from splitinv.data import FashionMNISTDataModule
from splitinv.report import collect, table
from splitinv.run import _summary, run

TINY = [
    "victim=resnet18", "victim.image_size=32", "data=fashion_mnist_mini", "data.n_aux=64",
    "data.n_eval=6", "data.batch_size=4", "trainer.max_epochs=1", "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false", "logger=csv", "cut=layer1", "lpips=off", "utility_test=false",
]  # fmt: skip


def test_lowpass_keeps_the_coarse_layout_and_drops_detail() -> None:
    flat = torch.full((1, 3, 16, 16), 0.3)
    torch.testing.assert_close(baselines.lowpass(flat, 4), flat)
    checker = ((torch.arange(16).view(-1, 1) + torch.arange(16)) % 2).float().expand(1, 3, 16, 16)
    smooth = baselines.lowpass(checker, 4)
    assert smooth.std() < 0.05 and abs(float(smooth.mean()) - 0.5) < 1e-6  # detail gone, mean kept
    halves = torch.cat([torch.zeros(1, 3, 16, 8), torch.ones(1, 3, 16, 8)], dim=3)
    assert float(baselines.lowpass(halves, 4)[..., :2].max()) < 0.1  # the layout survives


@pytest.mark.parametrize(
    ("beats_grey", "beats_lowpass4", "expected"),
    [
        (1.0, 0.75, "leaks"),
        (1.0, 0.5, "no better than a low-pass image"),  # half is not a majority
        (0.51, 0.0, "no better than a low-pass image"),
        (0.5, 0.0, "no better than grey"),
        (0.0, 0.0, "no better than grey"),
        (None, 0.9, "unscored"),
        (float("nan"), 0.9, "unscored"),
    ],
)
def test_the_verdict_needs_a_majority_of_images_above_each_baseline(
    beats_grey: float | None, beats_lowpass4: float, expected: str
) -> None:
    assert baselines.verdict(beats_grey, beats_lowpass4) == expected


def test_scores_are_the_contract_applied_to_the_trivial_images() -> None:
    data = FashionMNISTDataModule(vendored=True, image_size=32, n_eval=5, batch_size=3)
    x = torch.stack([data.eval_dataset()[i][0] for i in range(5)])
    mean = baselines.mean_image(data.aux_dataset())
    columns, ssim = baselines.score(data.predict_dataloader(), mean, lpips="off")
    assert set(columns) == {"grey", "mean", "lowpass4", "lowpass8"}
    grey = metrics.ssim(x, torch.full_like(x, 0.5))
    assert columns["grey"]["ssim"] == pytest.approx(grey.tolist(), abs=1e-6)
    low = metrics.psnr(x, baselines.lowpass(x, 8))
    assert columns["lowpass8"]["psnr"] == pytest.approx(low.tolist(), abs=1e-4)
    for name in ("grey", "lowpass4"):
        assert ssim[name] == pytest.approx(dict(enumerate(columns[name]["ssim"])))
    # more resolution, more of the image: 8x8 beats 4x4 on every image
    assert all(a > b for a, b in zip(columns["lowpass8"]["ssim"], columns["lowpass4"]["ssim"], strict=True))
    assert baselines.beats([0.9, 0.1], [0, 1], {0: 0.5, 1: 0.5}) == [1.0, 0.0]
    # an untrained decoder's flat output a hair above grey beats nothing
    assert baselines.beats([0.5 + baselines.MARGIN / 2, 0.52], [0, 1], {0: 0.5, 1: 0.5}) == [0.0, 1.0]


def test_the_mean_image_leaves_the_global_random_stream_alone() -> None:
    data = FashionMNISTDataModule(vendored=True, image_size=32, n_aux=40, augment=True)
    state = torch.get_rng_state()
    mean = baselines.mean_image(data.aux_dataset(), limit=20)
    assert torch.equal(state, torch.get_rng_state())
    assert mean.shape == (3, 32, 32) and 0 <= float(mean.min()) and float(mean.max()) <= 1
    torch.rand(5)  # another state of the global stream: the same mean image
    assert torch.equal(mean, baselines.mean_image(data.aux_dataset(), limit=20))


@pytest.mark.usefixtures("one_thread")
def test_every_run_records_the_baselines_and_they_change_no_number(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="splitinv.run"):
        # one optimiser step: the decoder's output is flat, about grey
        record = run(compose([*TINY, "trainer.max_steps=1"], output_dir=tmp_path / "on"))
        plain = run(compose([*TINY, "trainer.max_steps=1", "baselines=false"], output_dir=tmp_path / "off"))
    for name in ("ssim", "psnr", "feature_error", "label_agreement"):
        assert record[name] == plain[name], name
    assert set(record["baselines"]) == {"grey", "mean", "lowpass4", "lowpass8"}
    assert record["baselines"]["grey"]["ssim"]["n"] == 6 and plain["baselines"] is None
    samples = pd.read_csv(tmp_path / "on" / "samples.csv")
    data = record["details"]["data"]  # each image named: its position in Fashion-MNIST's test split
    assert list(samples["image"]) == [f"test/{data['eval_ids'][i]}" for i in samples["index"]]
    assert data["eval_names"] == [f"test/{i}" for i in data["eval_ids"]] and "image" not in record
    for name in ("beats_grey", "beats_lowpass4"):
        assert set(samples[name]) <= {0.0, 1.0}
        assert record[name]["mean"] == pytest.approx(samples[name].mean())
    # the decoder learned nothing, and the run says so
    assert record["verdict"] == baselines.verdict(
        record["beats_grey"]["mean"], record["beats_lowpass4"]["mean"]
    )
    assert record["verdict"] == baselines.NO_BETTER_THAN_GREY and plain["verdict"] == baselines.UNSCORED
    warned = [r.getMessage() for r in caplog.records if "flat grey image" in r.getMessage()]
    assert len(warned) == 1 and "raise trainer.max_epochs, data.n_aux" in warned[0]
    assert warned[0] in record["warnings"] and not any("grey" in w for w in plain["warnings"])
    assert f"({baselines.NO_BETTER_THAN_GREY}) -> " in _summary(record, compose(TINY, output_dir=tmp_path))
    saved = json.loads((tmp_path / "on" / "metrics.json").read_text())
    assert saved["baselines"]["lowpass4"]["ssim"]["mean"] > saved["baselines"]["grey"]["ssim"]["mean"]
    text = table(
        collect(tmp_path / "on"), rows="cut", cols=None, metrics=["ssim", "lowpass4_ssim", "beats_lowpass4"]
    )
    assert "lowpass4 SSIM ↑" in text and "> lowpass4 ↑" in text


@pytest.mark.usefixtures("one_thread")
def test_own_photos_at_the_documented_budget_say_they_learned_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """docs/attack.md's "Your own photos" command: 8 photos, 4 evaluated, 2 optimiser steps."""
    from skimage import data, io

    folder = tmp_path / "my_photos"
    folder.mkdir()
    for name in (
        "astronaut",
        "camera",
        "chelsea",
        "coffee",
        "coins",
        "hubble_deep_field",
        "retina",
        "rocket",
    ):
        io.imsave(folder / f"{name}.png", getattr(data, name)(), check_contrast=False)
    overrides = ["victim=resnet18", "victim.image_size=64", "data=imagefolder", f"data.root={folder}",
                 "data.n_eval=4", "attack=decoder", "trainer.max_epochs=2", "utility_test=false",
                 "logger=csv", "lpips=off", "trainer.enable_progress_bar=false"]  # fmt: skip
    cfg = compose(overrides, output_dir=tmp_path / "run")
    with caplog.at_level(logging.WARNING, logger="splitinv.run"):
        record = run(cfg)
    assert record["cost"]["train_steps"] == 2 and record["verdict"] == baselines.NO_BETTER_THAN_GREY
    assert record["beats_grey"]["mean"] <= 0.5  # grey scores as much on these photos
    warned = [r.getMessage() for r in caplog.records if "flat grey image" in r.getMessage()]
    assert len(warned) == 1 and "raise trainer.max_epochs, data.n_aux" in warned[0]
    assert _summary(record, cfg).endswith(f"({baselines.NO_BETTER_THAN_GREY}) -> {tmp_path / 'run'}")
    samples = pd.read_csv(tmp_path / "run" / "samples.csv")  # each row names its photo's file
    assert set(samples["image"]) <= {p.name for p in folder.iterdir()} and samples["image"].nunique() == 4
