"""The silent, raw and vague cases an outside replay found (issue #25): edited results, training that saves
garbage, checkpoints that do not fit the run, and bad inputs that ended in a traceback or a misleading line.
Each must end in one line that names what was wrong and which setting to change (exit 2 from a command), and
leave every finished result as it was.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import pytest
import torch

from splitinv import cli
from splitinv.config import compose
from splitinv.errors import SplitinvError
from splitinv.gans.registry import build_generator
from splitinv.io import CHECKSUM_KEY, save_atomic
from splitinv.results import digest_path
from splitinv.run import run
from splitinv.task import run_task
from splitinv.train_victim import train_victim
from splitinv.victims import build_victim

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:victim .* has RANDOM weights:UserWarning"),
]

TINY_RUN = [
    "victim=resnet10t",
    "victim.image_size=32",
    "cut=layer1",
    "data=fashion_mnist_mini",
    "data.n_aux=32",
    "data.n_eval=4",
    "data.batch_size=16",
    "trainer.max_epochs=1",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "logger=csv",
    "baselines=false",
    "utility_test=false",
]
TINY_TRAIN = [
    "recipe=he2019_mnist",
    "data.n_aux=64",
    "data.n_eval=64",
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "logger=csv",
]
ASSET = Path(__file__).parent / "assets" / "dcgan_fashion_mnist_32.pt"


def _error_line(capsys: pytest.CaptureFixture, command: str) -> str:
    """The command's stderr: exactly one error line (warnings from logging aside)."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith(f"{command}: error:")]
    assert len(lines) == 1, lines
    return lines[0]


def _exits_2(call, capsys: pytest.CaptureFixture, command: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        call()
    assert exit_info.value.code == 2
    return _error_line(capsys, command)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------------- results that were edited


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished job (a real run, so its metrics.json and digest are splitinv's own) in sweep/0."""
    root = tmp_path_factory.mktemp("replayed") / "sweep"
    cfg = compose(TINY_RUN, output_dir=root / "0")
    run_task("splitinv-run", run, cfg, multirun=False)
    assert digest_path(root / "0" / "metrics.json").is_file()
    return root


def _edited_copy(sweep: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "sweep"
    shutil.copytree(sweep, copy)
    path = copy / "0" / "metrics.json"
    record = json.loads(path.read_text())
    assert record["ssim"]["mean"] < 0.9
    record["ssim"]["mean"] = 0.999
    path.write_text(json.dumps(record, indent=2) + "\n")
    return copy


def test_an_edited_metrics_json_is_caught_by_table_advise_and_a_rerun(
    finished_sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture
) -> None:
    original = json.loads((finished_sweep / "0" / "metrics.json").read_text())["ssim"]["mean"]
    sweep = _edited_copy(finished_sweep, tmp_path)
    shutil.copytree(finished_sweep / "0", sweep / "1")  # a second, untouched job of the same config
    before = _snapshot(sweep)
    capsys.readouterr()
    # table: the job is shown as edited, its number left out, one warning line naming the file
    with caplog.at_level(logging.WARNING, logger="splitinv.report"):
        cli.main(["table", str(sweep), "--metrics", "ssim", "--cols", "none"])
    out = capsys.readouterr().out
    # the untouched job: one seed, its interval over its images (§); the edited job left out
    assert re.search(rf"\| {original:.3f} ± [0-9.]+§ \(edited\) \| 1 × 4 \|", out) and "0.999" not in out
    warned = [r.getMessage() for r in caplog.records if "metrics.json" in r.getMessage()]
    assert len(warned) == 1 and "\n" not in warned[0]
    assert f"{sweep / '0' / 'metrics.json'} was changed after splitinv wrote it" in warned[0]
    assert "--trust-edited" in warned[0]
    # a deliberate edit, accepted
    cli.main(["table", str(sweep), "--metrics", "ssim", "--cols", "none", "--trust-edited"])
    # both jobs, the edit included: one seed of two jobs, so no interval (neither over seeds nor images)
    assert f"| {(0.999 + original) / 2:.3f} | 1 × 4 |" in capsys.readouterr().out
    # advise: no finished run left to advise on once the untouched job is gone
    shutil.rmtree(sweep / "1")
    before = _snapshot(sweep)
    line = _exits_2(
        lambda: cli.main(
            ["advise", str(sweep), "--latency-runs", "1", "--warmup", "0", "-o", str(tmp_path / "a")]
        ),
        capsys,
        "splitinv",
    )
    fix = "rerun the edited jobs, or pass --trust-edited to accept the edits."
    assert line.endswith(f"no finished runs below {sweep} (1 edited): {fix}")
    # the rerun refuses to reuse it, and leaves it alone (no failed.json either)
    cfg = compose(TINY_RUN, output_dir=sweep / "0")
    line = _exits_2(lambda: run_task("splitinv-run", run, cfg, multirun=False), capsys, "splitinv-run")
    assert "was changed after splitinv wrote it" in line and "overwrite=true" in line
    assert _snapshot(sweep) == before


def test_a_deleted_digest_counts_as_an_edit(finished_sweep: Path, tmp_path: Path, capsys) -> None:
    sweep = tmp_path / "sweep"
    shutil.copytree(finished_sweep, sweep)
    digest_path(sweep / "0" / "metrics.json").unlink()
    before = _snapshot(sweep)
    cfg = compose(TINY_RUN, output_dir=sweep / "0")
    line = _exits_2(lambda: run_task("splitinv-run", run, cfg, multirun=False), capsys, "splitinv-run")
    assert "has no readable digest (metrics.json.sha256)" in line
    assert _snapshot(sweep) == before


def test_an_untouched_result_is_still_reused(finished_sweep: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    shutil.copytree(finished_sweep, sweep)
    before = _snapshot(sweep)
    record = run(compose(TINY_RUN, output_dir=sweep / "0"))
    assert record == json.loads((sweep / "0" / "metrics.json").read_text())
    assert _snapshot(sweep) == before


# ------------------------------------------------------------------------------------- raw tracebacks before


def test_table_and_plot_with_every_job_broken_are_one_line(tmp_path: Path, capsys) -> None:
    for name, content in (("0", '{"form'), ("1", "")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(content)
    for command in (["table", str(tmp_path)], ["plot", str(tmp_path), "-o", str(tmp_path / "figs")]):
        line = _exits_2(lambda c=command: cli.main(c), capsys, "splitinv")
        assert (
            f"no finished results below {tmp_path} (2 broken); first: {tmp_path / '0' / 'metrics.json'}"
            in line
        )
    assert not (tmp_path / "figs").exists()


def test_published_takes_a_name_not_a_path(finished_sweep: Path, capsys) -> None:
    line = _exits_2(
        lambda: cli.main(["table", str(finished_sweep), "--published", "../../x"]), capsys, "splitinv"
    )
    assert "no published numbers named '../../x': use --published with one of he2019" in line


def test_a_victim_checkpoint_without_num_classes_is_one_line(tmp_path: Path, capsys) -> None:
    checkpoint = build_victim("resnet10t", image_size=32, num_classes=4).checkpoint()
    del checkpoint["num_classes"]
    save_atomic(checkpoint, tmp_path / "v.pt")
    cfg = compose([*TINY_RUN, f"victim.weights={tmp_path / 'v.pt'}"], output_dir=tmp_path / "out")
    line = _exits_2(lambda: run_task("splitinv-run", run, cfg, multirun=False), capsys, "splitinv-run")
    assert f"checkpoint {tmp_path / 'v.pt'} is a splitinv-victim/1 file without num_classes" in line
    assert not (tmp_path / "out" / "metrics.json").exists()


# ------------------------------------------------------------------------------ training that saved garbage


def test_train_victim_refuses_a_diverged_network(tmp_path: Path, capsys) -> None:
    # the case: a ResNet whose training loss stayed finite at its checks, validated NaN, saved anyway
    overrides = [
        "victim.image_size=32",
        "data.n_aux=64",
        "data.n_eval=64",
        "trainer.max_epochs=1",
        "optim.lr=1e8",
    ]
    cfg = compose(
        [*overrides, "trainer.enable_progress_bar=false"], output_dir=tmp_path, config_name="train_victim"
    )
    line = _exits_2(
        lambda: run_task("splitinv-train-victim", train_victim, cfg, False), capsys, "splitinv-train-victim"
    )
    assert (
        "victim training diverged: validation loss nan" in line and "lower optim.lr (now 100000000.0)" in line
    )
    assert "nothing was saved" in line and not list(tmp_path.rglob("*.pt"))


def test_train_victim_refuses_chance_accuracy_unless_allowed(tmp_path: Path, capsys) -> None:
    overrides = [*TINY_TRAIN, "optim.lr=1e-9", f"checkpoint={tmp_path / 'v.pt'}"]
    cfg = compose(overrides, output_dir=tmp_path / "run", config_name="train_victim")
    line = _exits_2(
        lambda: run_task("splitinv-train-victim", train_victim, cfg, False), capsys, "splitinv-train-victim"
    )
    assert "victim training ended at chance accuracy" in line and "chance 0.1000 for 10 classes" in line
    assert "allow_chance=true" in line and not (tmp_path / "v.pt").exists()
    cfg = compose([*overrides, "allow_chance=true"], output_dir=tmp_path / "run2", config_name="train_victim")
    result = train_victim(cfg)
    assert result["val_acc"] < 0.2 and (tmp_path / "v.pt").is_file()


# ----------------------------------------------------------------------- weights without splitinv's checksums


def test_a_generator_weight_far_out_of_range_is_refused_naming_it(tmp_path: Path) -> None:
    gan = torch.load(ASSET, weights_only=True)
    del gan[CHECKSUM_KEY]
    build_generator("dcgan", weights=ASSET)  # the intact file loads
    gan["generator"]["net.block2.0.weight"].view(-1)[7] = 1.69e36  # what 64 random bytes did
    torch.save(gan, tmp_path / "g.pt")
    with pytest.warns(UserWarning, match="without splitinv's checksums"):
        with pytest.raises(SplitinvError) as err:
            build_generator("dcgan", weights=tmp_path / "g.pt")
    message = str(err.value)
    assert "\n" not in message and str(tmp_path / "g.pt") in message
    assert "tensor generator.net.block2.0.weight holds a value of magnitude 1.69e+36" in message
    # an outlier below the absolute limit, a million times the tensor's typical weight
    gan["generator"]["net.block2.0.weight"].view(-1)[7] = 5e4
    torch.save(gan, tmp_path / "g2.pt")
    with pytest.warns(UserWarning), pytest.raises(SplitinvError, match=r"net.block2.0.weight holds .* times"):
        build_generator("dcgan", weights=tmp_path / "g2.pt")


def test_a_victim_file_whose_checksums_were_removed_is_warned_about(tmp_path: Path) -> None:
    victim = build_victim("resnet10t", image_size=32, num_classes=4)
    checkpoint = victim.checkpoint()
    save_atomic(checkpoint, tmp_path / "v.pt")
    stripped = torch.load(tmp_path / "v.pt", weights_only=True)
    del stripped[CHECKSUM_KEY]
    torch.save(stripped, tmp_path / "v.pt")
    with pytest.warns(
        UserWarning, match=rf"{tmp_path / 'v.pt'} is a splitinv-victim/1 file without splitinv's"
    ):
        build_victim("resnet10t", weights=tmp_path / "v.pt")


# -------------------------------------------------------------- checkpoints recorded at another image size


def test_a_checkpoint_is_refused_at_another_image_size_before_any_work(tmp_path: Path, capsys) -> None:
    from splitinv.defenses import GaussianNoise
    from splitinv.defenses.checkpoint import defense_record

    victim = build_victim("resnet10t", image_size=32, num_classes=4)
    save_atomic(victim.checkpoint(), tmp_path / "v.pt")
    record = {**victim.checkpoint(), **defense_record(GaussianNoise(scale=0.1), "layer1", [32, 8, 8])}
    save_atomic(record, tmp_path / "defended.pt")  # what splitinv-train-defense writes, trained at 32 px
    for weights in ("v.pt", "defended.pt"):
        overrides = [*TINY_RUN, f"victim.weights={tmp_path / weights}", "victim.image_size=64"]
        cfg = compose(overrides, output_dir=tmp_path / f"out-{weights}")
        line = _exits_2(
            lambda c=cfg: run_task("splitinv-run", run, c, multirun=False), capsys, "splitinv-run"
        )
        assert f"checkpoint {tmp_path / weights} was trained at 32 px, the run asks 64 px" in line
        assert "set victim.image_size=32" in line
        assert not (tmp_path / f"out-{weights}" / "metrics.json").exists()


@pytest.mark.parametrize("command", [["advise", "resnet18"], ["layers", "resnet18"]])
@pytest.mark.parametrize("size", ["0", "-3"])
def test_a_non_positive_image_size_is_refused(command: list[str], size: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*command, "--image-size", size])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"argument --image-size: {size} is not a positive integer" in err


def test_build_victim_refuses_a_non_positive_image_size() -> None:
    with pytest.raises(SplitinvError, match=r"victim.image_size=0: give a positive integer"):
        build_victim("resnet10t", image_size=0)


# ------------------------------------------------------------------------------------- more raw tracebacks


def test_a_name_given_as_evaluator_is_one_line_before_any_work(tmp_path: Path, capsys) -> None:
    cfg = compose([*TINY_RUN, "evaluator=resnet18"], output_dir=tmp_path)
    line = _exits_2(lambda: run_task("splitinv-run", run, cfg, multirun=False), capsys, "splitinv-run")
    assert "evaluator='resnet18' is not a classifier config" in line
    assert "evaluator={_target_: splitinv.victims.build_victim, name: resnet18, weights: PATH}" in line
    assert not (tmp_path / "decoder.pt").exists() and not (tmp_path / "metrics.json").exists()


@pytest.mark.parametrize("command", ["run", "advise"])
def test_a_path_hydra_cannot_lex_is_one_line_with_the_quoted_form(
    command: str, tmp_path: Path, capsys
) -> None:
    from splitinv.run import main as run_main

    bad = f"data.root={tmp_path}/my data (copy)"
    if command == "run":
        line = _exits_2(lambda: run_main(["data=imagefolder", bad]), capsys, "splitinv-run")
    else:
        argv = [
            "advise",
            "resnet18",
            "--run",
            "--attacks",
            "decoder",
            "--set",
            bad,
            "-o",
            str(tmp_path / "a"),
        ]
        line = _exits_2(lambda: cli.main(argv), capsys, "splitinv")
    assert f"'{bad}' does not parse as an override (" in line
    assert f"\"data.root='{tmp_path}/my data (copy)'\"" in line
    assert not (tmp_path / "a").exists()


def test_hydra_quote_round_trips_through_the_grammar() -> None:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from splitinv.task import hydra_quote

    for value in ("/a/b.pt", "/my data (copy)/v.pt", "it's", "a\\b(", "c:\\x (1)\\", "x=y,z"):
        (parsed,) = OverridesParser.create().parse_overrides([f"k={hydra_quote(value)}"])
        assert parsed.value() == value, value
    assert hydra_quote("/a/b.pt") == "/a/b.pt"  # plain values stay as they are


# -------------------------------------------------------------------------------------- vague messages before


@pytest.mark.parametrize(
    "defense, expected_error",
    [(["defense=prune", "defense.fraction=1.0"], 0.0), (["defense=gaussian", "defense.scale=1e30"], None)],
)
def test_a_defense_that_sends_nothing_is_scored_as_a_valid_result(
    tmp_path: Path, defense: list[str], expected_error: float | None
) -> None:
    record = run(compose([*TINY_RUN, *defense], output_dir=tmp_path))
    assert record["status"] == "ok" and json.loads((tmp_path / "metrics.json").read_text())["status"] == "ok"
    assert 0 <= record["ssim"]["mean"] < 0.5 and record["utility"]["accuracy"] is not None
    error = record["feature_error"]["mean"]
    if expected_error is not None:  # all-zero observations of x and x_hat agree exactly
        assert error == expected_error
    else:  # two independent draws of noise far above the signal: sqrt(2) apart, relative to one
        assert error == pytest.approx(2**0.5, rel=0.05)


def test_feature_error_of_zero_and_huge_observations() -> None:
    from splitinv.metrics import feature_error

    g = torch.Generator().manual_seed(0)
    f, f_hat = torch.randn(3, 4, 5, 5, generator=g), torch.randn(3, 4, 5, 5, generator=g)
    reference = (f_hat - f).double().flatten(1).norm(dim=1) / f.double().flatten(1).norm(dim=1)
    for scale in (1.0, 1e30, 1e-30):  # float32 norms of 1e30 values overflow to inf; 1e-30 ones underflow
        torch.testing.assert_close(
            feature_error(f_hat * scale, f * scale), reference.float(), rtol=1e-5, atol=0
        )
    zeros = torch.zeros(2, 4, 5, 5)
    assert torch.equal(feature_error(zeros, zeros), torch.zeros(2))
    with pytest.raises(SplitinvError, match=r"all zeros for image\(s\) \[0, 1\] but f_hat is not"):
        feature_error(f_hat[:2], zeros)


def _images_job(root: Path, name: str, seed: int, originals: torch.Tensor) -> Path:
    from splitinv.results import RESULTS_FORMAT, save_images, write_digest

    job = root / name
    job.mkdir(parents=True)
    record = {
        "format": RESULTS_FORMAT, "status": "ok", "ssim": {"mean": 0.5, "std": 0.1, "n": 2},
        "victim": "resnet18", "cut": "layer1", "attack": "decoder", "seed": seed,
        "details": {"cut": {"index": 2, "relative_depth": 0.2}},
    }  # fmt: skip
    (job / "metrics.json").write_text(json.dumps(record))
    write_digest(job / "metrics.json")
    save_images(
        job / "images.pt",
        originals,
        torch.rand(originals.shape, generator=torch.Generator().manual_seed(seed)),
    )
    return job


def test_plot_takes_the_next_job_when_one_images_file_is_corrupt(
    tmp_path: Path, capsys, caplog: pytest.LogCaptureFixture
) -> None:
    originals = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    first = _images_job(tmp_path / "sweep", "0", 0, originals)
    _images_job(tmp_path / "sweep", "1", 1, originals)  # another seed, the same evaluation images
    (first / "images.pt").write_bytes((first / "images.pt").read_bytes()[:100])
    with caplog.at_level(logging.WARNING, logger="splitinv.report"):
        cli.main(["plot", str(tmp_path / "sweep"), "-o", str(tmp_path / "figs")])
    assert str(first / "images.pt") in caplog.text and "left out of the figure" in caplog.text
    assert "wrote" in capsys.readouterr().out
    assert list((tmp_path / "figs").glob("reconstructions_*.png"))
    # every images.pt unreadable: the message says so, naming one, instead of "no images.pt"
    second = tmp_path / "sweep" / "1" / "images.pt"
    second.write_bytes(b"")
    line = _exits_2(
        lambda: cli.main(["plot", str(tmp_path / "sweep"), "-o", str(tmp_path / "figs2")]), capsys, "splitinv"
    )
    assert (
        f"no readable images.pt in the finished jobs below {tmp_path / 'sweep'} (2 unreadable, first " in line
    )


def test_a_folder_given_as_checkpoint_names_the_users_path_before_training(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "ckpts"
    folder.mkdir()
    cfg = compose(
        [*TINY_TRAIN, f"checkpoint={folder}"], output_dir=tmp_path / "run", config_name="train_victim"
    )
    line = _exits_2(
        lambda: run_task("splitinv-train-victim", train_victim, cfg, False), capsys, "splitinv-train-victim"
    )
    assert line.endswith(
        f"checkpoint={folder} is a folder: name a file, e.g. checkpoint={folder / 'model.pt'}."
    )
    assert not list(folder.iterdir()) and not (tmp_path / "run" / "logs").exists()  # nothing trained
    with pytest.raises(OSError) as err:  # the writer itself names the user's path, never its temporary file
        save_atomic({"x": torch.zeros(1)}, folder)
    assert err.value.filename == str(folder) and not list(folder.iterdir())


def test_aux_imagefolder_with_one_image_names_the_aux_settings(tmp_path: Path, capsys) -> None:
    from PIL import Image

    (tmp_path / "one").mkdir()
    Image.new("RGB", (16, 16), (120, 30, 30)).save(tmp_path / "one" / "a.png")
    cfg = compose([*TINY_RUN, "aux=imagefolder", f"aux.root={tmp_path / 'one'}"], output_dir=tmp_path / "out")
    line = _exits_2(lambda: run_task("splitinv-run", run, cfg, multirun=False), capsys, "splitinv-run")
    assert f"aux=imagefolder: aux.root {tmp_path / 'one'} has 1 image(s), too few for aux.n_eval=16" in line
    assert "add images to aux.root, or lower aux.n_eval" in line and " n_eval" not in line.replace(
        "aux.n_eval", ""
    )


def test_an_input_too_large_for_memory_is_refused_at_once(capsys) -> None:
    line = _exits_2(lambda: cli.main(["layers", "resnet18", "--image-size", "65536"]), capsys, "splitinv")
    assert (
        "victim resnet18 at 65536 px needs about " in line and "GiB free here: lower the image size" in line
    )


def test_the_input_cost_estimate_matches_a_real_forward_pass() -> None:
    from splitinv.victims import estimate_forward

    victim = build_victim("resnet10t", image_size=256, num_classes=4)
    sizes: list[int] = []
    hooks = [m.register_forward_hook(lambda m, i, o: sizes.append(o.numel() * o.element_size()))
             for m in victim.modules() if not list(m.children())]  # fmt: skip
    with torch.no_grad():
        victim(torch.zeros(1, 3, 256, 256))
    for h in hooks:
        h.remove()
    cost = estimate_forward(victim, 256, probe=64)  # extrapolated from 64 px, 16 times fewer pixels
    assert cost["largest_bytes"] == pytest.approx(max(sizes), rel=0.05)
    params = sum(p.numel() * 4 for p in victim.parameters())
    assert max(sizes) < cost["peak_bytes"] - params < 4 * max(sizes)


def test_a_slow_large_input_is_announced_with_its_estimate(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import splitinv.victims as victims

    victim = build_victim("resnet10t", image_size=520, num_classes=4)
    with caplog.at_level(logging.WARNING, logger="splitinv.victims"):
        victims.check_input_cost(victim, 520)  # fast enough here: nothing to say
        assert not caplog.records
        monkeypatch.setattr(victims, "SLOW_FORWARD_S", 0.0)
        victims.check_input_cost(victim, 520)
    (record,) = caplog.records
    assert "victim resnet10t at 520 px: one image's forward pass takes roughly" in record.getMessage()
    assert "lower the image size (victim.image_size, --image-size)" in record.getMessage()
    monkeypatch.setattr(victims, "available_memory", lambda device=None: 2**20)  # 1 MiB free
    with pytest.raises(
        SplitinvError, match=r"at 520 px needs about .* GiB .* more than the 0.0 GiB free here"
    ):
        victims.check_image_size(victim, 520)
    victims.check_image_size(victim, 512)  # at or below 512 px no estimate is made
