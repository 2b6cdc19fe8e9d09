"""Reconstruction sheets (a run's and ``splitinv plot``'s) and splitinv-train-gan's sample grids."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from splitinv import results, sheets
from splitinv.config import compose
from splitinv.gans.dcgan import DCGANDiscriminator, DCGANGenerator
from splitinv.gans.train import GANModule, SampleGrid, train_gan
from splitinv.run import run

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_RUN = [
    "victim.image_size=32", "data=fashion_mnist_mini", "data.n_aux=32", "data.n_eval=20",
    "data.batch_size=16", "trainer.max_epochs=1", "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false", "cut=layer2", "utility_test=false", "baselines=false", "logger=csv",
]  # fmt: skip


def _caption(ssim: float, psnr: float) -> str:
    """What the sheets must print, written out here rather than taken from the code under test."""
    return f"{ssim:.3f} / {psnr:.1f} dB"


def _capture_sheets(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every figure that sheets.draw_sheet builds from now on (the run's and the report's)."""
    figures: list[Any] = []
    draw = sheets.draw_sheet

    def spy(*args: Any, **kwargs: Any) -> Any:
        figures.append(draw(*args, **kwargs))
        return figures[-1]

    monkeypatch.setattr(sheets, "draw_sheet", spy)
    return figures


def _cells(fig: Any, label: str) -> list[Any]:
    """The axes of the images in rows labelled ``label``, in reading order (rows top down, then columns)."""
    axes = [ax for ax in fig.axes if (ax.get_gid() or "").rpartition(":")[0] == label]
    return sorted(axes, key=lambda ax: (-round(ax.get_position().y0, 6), ax.get_position().x0))


def _texts(fig: Any, joined: bool = False) -> list[str]:
    """The figure's own texts (title, row labels); ``joined``: a wrapped title's lines joined by spaces."""
    return [t.get_text().replace("\n", " ") if joined else t.get_text() for t in fig.texts]


def _box(ax: Any, png: np.ndarray) -> tuple[int, int, int, int]:
    """(top, left, height, width) in pixels of ``ax`` in the rendered sheet ``png``."""
    pos = ax.get_position()
    height, width = png.shape[:2]
    return (round((1 - pos.y1) * height), round(pos.x0 * width), round(pos.height * height),
            round(pos.width * width))  # fmt: skip


# ---------------------------------------------------------------------------------------- a run's sheets


def test_run_sheets_hold_every_image_with_its_own_scores_under_sheets_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    figures = _capture_sheets(monkeypatch)
    out = tmp_path / "run"
    with pytest.warns(UserWarning, match="RANDOM weights"):
        run(compose([*TINY_RUN, "sheets=all"], output_dir=out))
    names = sorted(p.name for p in out.iterdir() if p.name.startswith(("reconstructions", "grid")))
    assert names == [
        "reconstructions_1.pdf", "reconstructions_1.png", "reconstructions_2.pdf", "reconstructions_2.png",
    ]  # fmt: skip
    assert len(figures) == 2  # 20 images: 16 on the first sheet, 4 on the second
    samples = pd.read_csv(out / "samples.csv")
    originals, recon = results.load_images(out / "images.pt")
    assert len(samples) == len(originals) == len(recon) == 20
    shown = [c for fig in figures for c in _cells(fig, "original")]
    drawn = [c for fig in figures for c in _cells(fig, "reconstruction")]
    assert len(shown) == len(drawn) == 20
    for i, (o_ax, r_ax) in enumerate(zip(shown, drawn, strict=True)):  # every image, in samples.csv's order
        for ax, image in ((o_ax, originals[i]), (r_ax, recon[i])):
            np.testing.assert_allclose(
                ax.images[0].get_array(), image.permute(1, 2, 0).numpy(), atol=0.6 / 255
            )
        assert not o_ax.texts  # scores go under the reconstructions only
        assert [t.get_text() for t in r_ax.texts] == [_caption(samples["ssim"][i], samples["psnr"][i])]
    for number, fig in enumerate(figures, 1):
        texts = _texts(fig, joined=True)
        assert {"original", "reconstruction"} <= set(texts)
        (title,) = (t for t in texts if "victim" in t)
        assert "victim resnet18" in title and "cut layer2" in title and "attack decoder" in title
        assert f"sheet {number}/2" in title and "defense" not in title
    assert texts.count("original") == 1  # the second sheet: one pair of rows (4 images)
    first = Image.open(out / "reconstructions_1.png")
    assert first.size[0] >= 8 * sheets.MIN_CELL_PX and first.size[1] >= 4 * sheets.MIN_CELL_PX
    assert sheets.first_sheet(out) == out / "reconstructions_1.png"


def test_gan_inversion_writes_the_same_sheets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from splitinv.gans.run import gan_invert

    figures = _capture_sheets(monkeypatch)
    out = tmp_path / "inv"
    asset = Path(__file__).parent / "assets" / "dcgan_fashion_mnist_32.pt"
    gan_invert(compose(
        [f"generator.weights={asset}", "layer=block1", "method=encoder", "images=generated", "n_images=18",
         "encoder.steps=5", "lpips=off", "trainer.accelerator=cpu"],
        output_dir=out, config_name="gan_invert",
    ))  # fmt: skip
    assert (
        sheets.first_sheet(out) == out / "reconstructions_1.png" and (out / "reconstructions_2.pdf").is_file()
    )
    samples = pd.read_csv(out / "samples.csv")
    drawn = [ax for fig in figures for ax in _cells(fig, "reconstruction")]
    assert [t.get_text() for ax in drawn for t in ax.texts] == [
        _caption(samples["ssim"][i], samples["psnr"][i]) for i in range(18)
    ]
    assert all(ax.images[0].get_cmap().name == "gray" and ax.images[0].get_array().ndim == 2 for ax in drawn)
    assert any("attack gan_inversion/encoder" in t for t in _texts(figures[0], joined=True))


def test_sheet_pixels_are_the_images_upscaled_sharp_and_gray_stays_gray(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    for channels, size in ((1, 28), (3, 32)):
        x, x_hat = torch.randint(0, 256, (2, 3, channels, size, size), generator=gen) / 255  # 8-bit levels
        scores = {"ssim": [0.5, 0.25], "psnr": [10.0, 20.0]}
        folder = tmp_path / f"c{channels}"
        assert sheets.write_sheets(folder, x, x_hat, scores, title="t") == [
            folder / "reconstructions.png", folder / "reconstructions.pdf",
        ]  # fmt: skip
        png = np.asarray(Image.open(folder / "reconstructions.png").convert("RGB")).astype(float)
        fig = next(sheets.sheets(x, x_hat, scores, title="t"))
        scale = 8 if size == 28 else 7  # the smallest integer upscale to at least 200 px
        for label, images in (("original", x), ("reconstruction", x_hat)):
            for ax, image in zip(_cells(fig, label), images, strict=True):
                top, left, h, w = _box(ax, png)
                assert (h, w) == (size * scale, size * scale)
                cell = png[top : top + h, left : left + w]
                want = np.kron(image.permute(1, 2, 0).numpy() * 255, np.ones((scale, scale, 1)))
                assert np.abs(cell - want).max() < 1.01  # nearest neighbour, not interpolated
                if channels == 1:  # gray, not a colour map
                    assert (cell[..., 0] == cell[..., 1]).all() and (cell[..., 1] == cell[..., 2]).all()


def test_sheet_names_and_sizes() -> None:
    assert sheets.sheet_names(1) == sheets.sheet_names(16) == ["reconstructions"]
    assert sheets.sheet_names(17) == ["reconstructions_1", "reconstructions_2"]
    names = sheets.sheet_names(161)
    assert len(names) == 11 and names[0] == "reconstructions_01" and names == sorted(names)
    x = torch.rand(16, 3, 32, 32)
    fig = next(sheets.sheets(x, x, {"ssim": [0.5] * 16, "psnr": [20.0] * 16}, title="t"))
    width, height = fig.get_size_inches() * sheets.SHEET_DPI
    assert width >= 8 * 224 and height >= 4 * 224
    assert len(_cells(fig, "reconstruction")) == 16


def _record(**extra: Any) -> dict[str, Any]:
    return {"status": "ok", "victim": "v", "cut": "c", "attack": "a", **extra}


def test_a_failed_write_leaves_no_partial_sheet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from matplotlib.figure import Figure

    out = tmp_path / "job"
    x = torch.rand(20, 1, 8, 8)
    scores = {"index": list(range(20)), "ssim": [0.1] * 20, "psnr": [5.0] * 20}
    results.write_run(out, _record(defense="gaussian", defense_strength=0.5), scores, (x, x), "a: 1\n")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert "reconstructions_2.png" in before
    save, calls = Figure.savefig, []

    def fails_on_the_second_sheet(self: Any, fname: Any, *args: Any, **kwargs: Any) -> None:
        calls.append(fname)
        if len(calls) == 3:  # the second sheet's png: half-written, then the disk is full
            Path(fname).write_bytes(b"\x89PNG half")
            raise OSError("disk full")
        save(self, fname, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", fails_on_the_second_sheet)
    with pytest.raises(OSError, match="disk full"):
        results.write_run(out, _record(attack="other"), {**scores, "ssim": [0.9] * 20}, (x, 1 - x), "a: 2\n")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the earlier results, whole
    calls[:] = ["one call before: the png is written, the pdf fails half-way"]
    fig = next(sheets.sheets(x, x, scores))
    with pytest.raises(OSError, match="disk full"):  # a figure written directly (splitinv plot) too
        sheets.save_figure(fig, tmp_path / "figures" / "reconstructions_v")
    assert [p.name for p in (tmp_path / "figures").iterdir()] == ["reconstructions_v.png"]  # the pdf: none
    monkeypatch.undo()
    results.write_run(out, _record(), {k: v[:6] for k, v in scores.items()}, (x[:6], x[:6]), "a: 3\n")
    left = sorted(p.name for p in out.iterdir() if p.name.startswith("reconstructions"))
    assert left == ["reconstructions.pdf", "reconstructions.png"]  # no stale sheets of 20 images


def test_sheet_title_names_the_defense() -> None:
    fig = next(sheets.sheets(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8), {}, title=sheets.sheet_title(
        _record(victim="resnet18", cut="layer1", attack="rmle", defense="gaussian", defense_strength=0.5)
    )))  # fmt: skip
    (title,) = (t for t in _texts(fig, joined=True) if "victim" in t)
    legend = "SSIM / PSNR under each reconstruction"
    assert title == f"victim resnet18 | cut layer1 | attack rmle | defense gaussian@0.5 | {legend}"
    assert [t.get_text() for ax in _cells(fig, "reconstruction") for t in ax.texts] == ["n/a / n/a dB"]


# ----------------------------------------------------------------------------------- splitinv plot's figure


def _sweep_job(root: Path, name: str, cut: str, depth: float, seed: int) -> Path:
    job = root / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "config.yaml").write_text(f"victim: {{name: resnet18}}\ncut: {cut}\nseed: 0\n")
    record = {
        "format": results.RESULTS_FORMAT, "status": "ok", "ssim": {"mean": 0.5, "std": 0.1, "n": 4},
        "victim": "resnet18", "cut": cut, "attack": "decoder", "seed": 0,
        "details": {"cut": {"index": int(depth * 10), "relative_depth": depth}},
    }  # fmt: skip
    (job / "metrics.json").write_text(json.dumps(record))
    results.write_digest(job / "metrics.json")  # as splitinv writes it
    gen = torch.Generator().manual_seed(seed)
    originals = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(0))  # the same eval images
    results.save_images(job / "images.pt", originals, torch.rand(4, 1, 16, 16, generator=gen))
    ssim, psnr = torch.rand(4, generator=gen), 30 * torch.rand(4, generator=gen)
    pd.DataFrame({"index": range(4), "ssim": ssim.tolist(), "psnr": psnr.tolist()}).to_csv(
        job / "samples.csv", index=False
    )
    return job


def test_plot_reconstructions_labels_rows_and_scores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from splitinv.report import collect, plot_reconstructions

    sweep = tmp_path / "sweep"
    jobs = {
        "layer3": _sweep_job(sweep, "0", "layer3", 0.6, 1),
        "layer1": _sweep_job(sweep, "1", "layer1", 0.2, 2),
    }
    figures = _capture_sheets(monkeypatch)
    written = plot_reconstructions(collect(sweep), sweep, tmp_path / "fig", n=3)
    assert sorted(p.name for p in written) == ["reconstructions_resnet18.pdf", "reconstructions_resnet18.png"]
    (fig,) = figures
    rows = [t for t in _texts(fig) if t in ("original", "layer1", "layer3")]
    assert rows == ["original", "layer1", "layer3"]  # in order of depth
    assert any("victim resnet18" in t and "attack decoder" in t for t in _texts(fig, joined=True))
    for cut, job in jobs.items():
        samples = pd.read_csv(job / "samples.csv")
        captions = [t.get_text() for ax in _cells(fig, cut) for t in ax.texts]
        assert captions == [_caption(samples["ssim"][i], samples["psnr"][i]) for i in range(3)]
    png = Image.open(tmp_path / "fig" / "reconstructions_resnet18.png")
    assert png.size[0] >= 3 * sheets.MIN_CELL_PX and png.size[1] >= 3 * sheets.MIN_CELL_PX


# ------------------------------------------------------------------------------ splitinv-train-gan samples


def _expected_grid(generator: DCGANGenerator, state: dict[str, torch.Tensor], seed: int) -> np.ndarray:
    """The 8x8 grid of the 64 latents drawn from ``seed`` through ``generator`` with ``state``, as uint8."""
    from torchvision.utils import make_grid

    fresh = DCGANGenerator(**generator.config())
    fresh.load_state_dict(state)
    z = torch.randn(64, generator.nz, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        grid = make_grid(fresh.eval()(z), nrow=8, padding=2, pad_value=1.0)
    return grid.mul(255).add(0.5).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


def test_train_gan_writes_a_fixed_latent_grid_per_epoch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    states: list[dict[str, torch.Tensor]] = []
    modes: list[bool] = []
    draw = SampleGrid.draw

    def spy(self: SampleGrid, generator: DCGANGenerator) -> torch.Tensor:
        states.append({k: v.detach().clone() for k, v in generator.state_dict().items()})
        grid = draw(self, generator)
        modes.append(generator.training)
        return grid

    monkeypatch.setattr(SampleGrid, "draw", spy)
    out = tmp_path / "gan"
    cfg = compose(
        ["data.n_aux=32", "data.channels=1", "gan.image_size=16", "gan.nz=8", "gan.ngf=8", "gan.ndf=8",
         "data.batch_size=16", "trainer.max_epochs=2", "trainer.accelerator=cpu",
         "trainer.enable_progress_bar=false", "logger=csv", "seed=3"],
        output_dir=out,
        config_name="train_gan",
    )  # fmt: skip
    train_gan(cfg)
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["epoch_001.png", "epoch_002.png"]
    assert modes == [True, True]  # back in train mode after drawing
    generator = DCGANGenerator(nz=8, ngf=8, channels=1, image_size=16)
    grids = [np.asarray(Image.open(out / "samples" / f"epoch_00{e}.png").convert("RGB")) for e in (1, 2)]
    for grid, state in zip(grids, states, strict=True):  # the seed's latents, through that epoch's weights
        np.testing.assert_array_equal(grid, _expected_grid(generator, state, seed=3))
    assert grids[0].shape == (8 * 18 + 2, 8 * 18 + 2, 3) and not np.array_equal(*grids)
    final = torch.load(out / "gan.pt", weights_only=True)["generator"]
    np.testing.assert_array_equal(grids[1], _expected_grid(generator, final, seed=3))


def _train(callbacks: list[L.Callback]) -> dict[str, torch.Tensor]:
    L.seed_everything(0, verbose=False)
    generator = DCGANGenerator(nz=8, ngf=8, channels=1, image_size=16)
    module = GANModule(generator, DCGANDiscriminator(ndf=8, channels=1, image_size=16))
    data = DataLoader(TensorDataset(torch.rand(32, 1, 16, 16)), batch_size=8, shuffle=True)
    trainer = L.Trainer(
        max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=callbacks,
    )  # fmt: skip
    trainer.fit(module, train_dataloaders=data)
    return generator.state_dict()


def test_sample_grids_leave_training_unchanged(tmp_path: Path) -> None:
    with_grids = _train([SampleGrid(tmp_path / "samples", n=16, seed=5)])
    without = _train([])
    assert len(list((tmp_path / "samples").glob("epoch_*.png"))) == 2
    assert with_grids.keys() == without.keys()
    for key, value in without.items():  # weights and BatchNorm statistics: the RNG stream was not touched
        assert torch.equal(with_grids[key], value), key


def test_sample_grids_every_k_epochs_and_after_the_last(tmp_path: Path) -> None:
    L.seed_everything(0, verbose=False)
    module = GANModule(
        DCGANGenerator(nz=8, ngf=8, channels=1, image_size=16),
        DCGANDiscriminator(ndf=8, channels=1, image_size=16),
    )
    trainer = L.Trainer(
        max_epochs=5, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[SampleGrid(tmp_path / "samples", n=4, nrow=2, every=2)],
    )  # fmt: skip
    trainer.fit(module, train_dataloaders=DataLoader(TensorDataset(torch.rand(8, 1, 16, 16)), batch_size=8))
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == [
        "epoch_002.png", "epoch_004.png", "epoch_005.png"
    ]  # fmt: skip


def test_same_weights_same_grid() -> None:
    torch.manual_seed(0)
    generator = DCGANGenerator(nz=8, ngf=8, channels=1, image_size=16)
    first = SampleGrid("unused", n=4, nrow=2, seed=1).draw(generator)
    torch.randn(100)  # the global stream moves on: the grid does not
    assert torch.equal(SampleGrid("unused", n=4, nrow=2, seed=1).draw(generator), first)
    assert not torch.equal(SampleGrid("unused", n=4, nrow=2, seed=2).draw(generator), first)
    assert first.shape == (3, 2 * 18 + 2, 2 * 18 + 2)


def test_sample_grids_go_to_wandb(tmp_path: Path) -> None:
    pytest.importorskip("wandb")
    from lightning.pytorch.loggers import WandbLogger

    L.seed_everything(0, verbose=False)
    generator = DCGANGenerator(nz=8, ngf=8, channels=1, image_size=16)
    module = GANModule(generator, DCGANDiscriminator(ndf=8, channels=1, image_size=16))
    logger = WandbLogger(project="splitinv-test", offline=True, save_dir=str(tmp_path))
    trainer = L.Trainer(
        max_epochs=2, accelerator="cpu", logger=logger, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[SampleGrid(tmp_path / "samples", n=4, nrow=2)],
    )  # fmt: skip
    trainer.fit(module, train_dataloaders=DataLoader(TensorDataset(torch.rand(8, 1, 16, 16)), batch_size=8))
    results.finish_logger(logger)
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    assert len(list(run_dir.glob("files/media/images/samples_*.png"))) == 2


def test_negative_samples_every_is_one_line(tmp_path: Path) -> None:
    from splitinv.errors import SplitinvError

    cfg = compose(
        ["samples_every=-1", "data.n_aux=8", "logger=csv"], output_dir=tmp_path, config_name="train_gan"
    )
    with pytest.raises(SplitinvError, match="samples_every=-1"):
        train_gan(cfg)


def _defense_job(root: Path, name: str, seed: int, strength: Any, aware: bool, ssim: float) -> None:
    """A finished job as run.py writes it (gaussian at ``strength``, or undefended for None): known SSIM,
    test accuracy 0.8 / (1 + strength / 10) + 0.001 x seed, the grey image's SSIM 0.1 + 0.002 x seed."""
    job = root / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "config.yaml").write_text(f"victim: {{name: resnet18}}\ncut: layer1\nseed: {seed}\n")
    accuracy = 0.8 / (1 + (strength or 0) / 10) + 0.001 * seed
    record = {
        "format": results.RESULTS_FORMAT, "status": "ok", "ssim": {"mean": ssim, "std": 0.1, "n": 8},
        "victim": "resnet18", "cut": "layer1", "attack": "decoder", "seed": seed,
        "defense": "none" if strength is None else "gaussian", "defense_strength": strength,
        "defense_aware": aware, "utility_test": {"accuracy": accuracy, "n": 1000},
        "baselines": {"grey": {"ssim": {"mean": 0.1 + 0.002 * seed, "std": 0.0, "n": 8}}},
        "details": {"cut": {"index": 2, "relative_depth": 0.2}, "victim": {"num_classes": 10}},
    }  # fmt: skip
    (job / "metrics.json").write_text(json.dumps(record))
    results.write_digest(job / "metrics.json")


def test_privacy_utility_curves_follow_strength_name_their_attacker_and_span_grey_to_undefended(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from scipy import stats

    from splitinv import cli, report

    root = tmp_path / "sweep"
    strengths = [4, 0.25, 10, 1]  # written out of order; as text, 10 sorts before 4

    def ssim(aware: bool, strength: float, seed: int) -> float:  # the adaptive attacker leaks more
        return 0.5 - 0.03 * strength + (0.05 if aware else 0.0) + 0.002 * seed

    n = 0
    for seed in (0, 1):
        _defense_job(root, str(n), seed, None, True, 0.7 + 0.002 * seed)
        n += 1
        for aware in (True, False):
            for s in strengths:
                _defense_job(root, str(n), seed, s, aware, ssim(aware, s, seed))
                n += 1
    figures: list[Any] = []
    monkeypatch.setattr(
        report, "_save_figure", lambda fig, stem: figures.append(fig) or [Path(f"{stem}.png")]
    )
    assert cli.main(["plot", "--privacy-utility", str(root), "--metrics", "ssim"]) is None
    (ax,) = [a for a in figures[0].axes if a.get_lines()]
    lines = {line.get_label(): line for line in ax.get_lines()}
    order = sorted(strengths)  # by strength: 0.25, 1, 4, 10
    t = stats.t.ppf(0.975, 1)  # two seeds: the 95 % t interval over them, by hand
    half_y, half_x = t * 0.002 / 2, t * 0.001 / 2  # sem of two values d apart: d / 2
    for aware, name, style in ((True, "gaussian (adaptive)", "-"), (False, "gaussian (naive)", "--")):
        line = lines[name]
        assert line.get_linestyle() == style
        assert np.allclose(line.get_ydata(), [ssim(aware, s, 0) + 0.001 for s in order])
        assert np.allclose(line.get_xdata(), [0.8 / (1 + s / 10) + 0.0005 for s in order])
    segments = [seg for c in ax.containers if c.has_yerr for seg in c.lines[2][-1].get_segments()]
    assert len(segments) == 2 * len(strengths) + 1
    assert np.allclose([seg[1, 1] - seg[0, 1] for seg in segments], 2 * half_y)  # the y error bars
    # axes from chance (1 / 10 classes) and the grey image's SSIM to the undefended values (with their bars)
    pad_x, pad_y = (report.MARGIN * (hi - lo) for lo, hi in ((0.1, 0.8005 + half_x), (0.101, 0.701 + half_y)))
    assert ax.get_xlim() == pytest.approx((0.1 - pad_x, 0.8005 + half_x + pad_x))
    assert ax.get_ylim() == pytest.approx((0.101 - pad_y, 0.701 + half_y + pad_y))
    assert "axis: chance 0.100 to undefended 0.800" in ax.get_xlabel()
    assert "axis: grey image 0.101 to undefended 0.701" in ax.get_ylabel()
