"""Nothing stale, nothing lost: finished results are reused only when their inputs are unchanged, never
overwritten by another config, and superseded by a failure (a sweep with failed jobs exits 1:
tests/test_sweeps.py). Bad settings and command lines get one line before any work."""

from __future__ import annotations

import errno
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from splitinv import results
from splitinv.config import compose, input_files
from splitinv.errors import ResultsExist, SplitinvError, os_error_line
from splitinv.report import collect
from splitinv.run import run
from splitinv.train_victim import save_victim, train_victim
from splitinv.victims import build_victim

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore:.*RANDOM weights")]

BASE = [
    "victim=he2019_mnist",
    "data=mnist_mini",
    "data.n_aux=64",
    "data.n_eval=2",
    "logger=csv",
    "lpips=off",
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "utility_test=false",
    "baselines=false",
]
TINY = [*BASE, "attack=rmle", "attack.steps=3", "attack.progress=false"]  # fmt: skip


def _victim(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    victim = build_victim("he2019_mnist")
    victim.weights = "trained"
    save_victim(victim, path)
    return path


def test_a_victim_retrained_into_the_same_path_reruns_the_job(tmp_path, caplog):
    weights = _victim(tmp_path / "victim.pt", 0)
    cfg = compose([*TINY, f"victim.weights={weights}"], output_dir=tmp_path / "job")
    first = run(cfg)
    assert first["inputs"]["victim.weights"] and run(cfg)["config_hash"] == first["config_hash"]
    assert json.loads((tmp_path / "job" / "metrics.json").read_text())["psnr"] == first["psnr"]  # reused
    _victim(weights, 1)  # retrained: same path, same config text, other weights
    assert input_files(cfg)["victim.weights"] != first["inputs"]["victim.weights"]
    with caplog.at_level(logging.WARNING, logger="splitinv.results"):
        second = run(cfg)
    assert "input files changed since its results (victim.weights): rerunning" in caplog.text
    assert second["inputs"] != first["inputs"] and second["psnr"]["mean"] != first["psnr"]["mean"]


def test_another_config_never_overwrites_finished_results(tmp_path):
    out = tmp_path / "job"
    first = run(compose(TINY, output_dir=out))
    before = (out / "metrics.json").read_bytes()
    with pytest.raises(ResultsExist, match=r"holds finished results of another config .* overwrite=true"):
        run(compose([*TINY, "attack.steps=4"], output_dir=out))
    assert (out / "metrics.json").read_bytes() == before and not (out / "failed.json").exists()
    replaced = run(compose([*TINY, "attack.steps=4", "overwrite=true"], output_dir=out))
    assert replaced["config_hash"] != first["config_hash"]


def test_a_failure_supersedes_the_results_it_replaces(tmp_path):
    run(compose(TINY, output_dir=tmp_path / "0"))
    results.write_failure(tmp_path / "0", RuntimeError("the rerun died"))
    assert (
        not (tmp_path / "0" / "metrics.json").exists() and (tmp_path / "0" / results.SUPERSEDED_FILE).exists()
    )
    (tmp_path / "0" / ".hydra").mkdir()
    (tmp_path / "0" / ".hydra" / "config.yaml").write_text("cut: conv1\n")
    frame = collect(tmp_path)
    assert list(frame["status"]) == ["failed"] and "the rerun died" in frame["error"].iloc[0]


# ------------------------------------------------------------------------------------- training settings


def test_train_victim_refuses_zero_steps_and_divergence_and_fine_tunes(tmp_path):
    base = ["recipe=he2019_mnist", "data.n_aux=64", "data.n_eval=32", "trainer.enable_progress_bar=false",
            "logger=csv"]  # fmt: skip
    with pytest.raises(SplitinvError, match=r"ran no step \(trainer.max_epochs=0\?\): nothing was saved"):
        train_victim(compose([*base, "trainer.max_epochs=0", f"checkpoint={tmp_path / 'a.pt'}"],
                             output_dir=tmp_path / "a", config_name="train_victim"))  # fmt: skip
    with pytest.raises(SplitinvError, match=r"diverged|loss became"):
        overrides = [*base, "trainer.max_epochs=1", "optim.lr=1e12", f"checkpoint={tmp_path / 'b.pt'}"]
        train_victim(compose(overrides, output_dir=tmp_path / "b", config_name="train_victim"))
    assert not (tmp_path / "a.pt").exists() and not (tmp_path / "b.pt").exists()
    start = _victim(tmp_path / "start.pt", 3)
    # lr 1e-9 keeps the random start at chance accuracy: deliberately (allow_chance)
    out = train_victim(compose([*base, "trainer.max_epochs=1", "optim.lr=1e-9", f"victim.weights={start}",
                                f"checkpoint={tmp_path / 'c.pt'}", "allow_chance=true"],
                               output_dir=tmp_path / "c", config_name="train_victim"))  # fmt: skip
    assert out["fine_tuned_from"] == str(start)
    tuned = build_victim("he2019_mnist", weights=str(tmp_path / "c.pt"))
    original = build_victim("he2019_mnist", weights=str(start))
    assert torch.allclose(tuned.model.conv1.weight, original.model.conv1.weight, atol=1e-6)  # started from it


def test_decoder_with_no_training_step_is_refused(tmp_path):
    with pytest.raises(SplitinvError, match="trained 0 steps"):
        run(compose([*BASE, "attack=decoder", "trainer.max_epochs=0"], output_dir=tmp_path / "r"))
    assert not (tmp_path / "r" / "metrics.json").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("attack.lr=nan", "attack.lr must be a finite number > 0.0, got nan"),
        ("attack.lr=-1", "attack.lr must be a finite number > 0.0, got -1"),
        ("attack.lr=fast", "attack.lr must be a number, got 'fast'"),
        ("attack.weight_decay=-0.1", "attack.weight_decay must be a finite number >= 0.0"),
    ],
)
def test_bad_decoder_numbers_get_one_line_before_any_work(tmp_path, override, message):
    with pytest.raises(SplitinvError, match=message):
        run(compose([*BASE, "attack=decoder", override], output_dir=tmp_path / "r"))


def test_too_small_images_are_refused_before_training(tmp_path):
    with pytest.raises(SplitinvError, match=r"image_size must be an integer >= 11, got 8: SSIM"):
        run(compose(["victim.image_size=8", "data=fashion_mnist_mini", "attack=rmle"], output_dir=tmp_path))


# ------------------------------------------------------------------------------------------ command lines


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["data=imagefolder", "attack=rmle"],
            "data.root is required (??? in its config) and not set: pass data.root=",
        ),
        (
            ["data=imagefolder", "data.root=/tmp/my", "dir"],
            "'dir' is not an override (no '='): a value with a space",
        ),
        (["hydra.run.dir={file}/x"], "is a file, not a folder: choose another hydra.run.dir"),
    ],
)
def test_command_line_mistakes_get_one_line_and_exit_2(tmp_path, argv, message, capsys, monkeypatch):
    from splitinv.run import main

    (tmp_path / "file").write_text("")
    argv = [a.replace("{file}", str(tmp_path / "file")) for a in argv]
    if not any(a.startswith("hydra.run.dir") for a in argv):
        argv.append(f"hydra.run.dir={tmp_path}/run")
    monkeypatch.setattr(sys, "argv", ["splitinv-run", *argv])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and "Traceback" not in err


def test_os_errors_read_as_one_line():
    full = OSError(errno.ENOSPC, "No space left on device", "/data/out/metrics.json")
    assert os_error_line(full) == (
        "cannot use /data/out/metrics.json (No space left on device): the disk is full: free space or write "
        "elsewhere."
    )
    assert "choose a writable folder" in os_error_line(
        PermissionError(errno.EACCES, "Permission denied", "/x")
    )


def test_sigterm_records_the_job_as_failed_and_exits_143(tmp_path):
    import signal
    import time

    out = tmp_path / "job"
    command = [sys.executable, "-c", "from splitinv.run import main; main()", *BASE, "attack=rmle",
               "attack.steps=1000000", f"hydra.run.dir={out}"]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "reconstructions").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)  # the attack has started: the job is well inside the task
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-1500:]
    failed = json.loads((out / "failed.json").read_text())
    assert "terminated by signal 15 (SIGTERM)" in failed["error"] and not (out / "metrics.json").exists()


@pytest.fixture
def small_filesystem(tmp_path):
    """A 64 KiB tmpfs (where this machine lets the tests mount one), unmounted afterwards."""
    import os

    mount = tmp_path / "tiny"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True
    )
    if made.returncode != 0 or not os.path.ismount(mount):
        pytest.skip("cannot mount a small tmpfs here (needs root in a container that allows it)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_full_disk_is_one_line_and_leaves_no_partial_file(small_filesystem):
    from splitinv.io import save_atomic

    with pytest.raises(OSError) as info:
        save_atomic({"x": torch.zeros(100_000)}, small_filesystem / "victim.pt")
    assert info.value.errno == errno.ENOSPC
    assert os_error_line(info.value).endswith("the disk is full: free space or write elsewhere.")
    assert list(small_filesystem.iterdir()) == []  # the temporary file is gone, nothing half-written


def test_a_read_only_output_folder_is_refused_before_any_work(small_filesystem, capsys, monkeypatch):
    from splitinv.run import main

    if subprocess.run(["mount", "-o", "remount,ro", str(small_filesystem)], capture_output=True).returncode:
        pytest.skip("cannot remount read-only here")
    monkeypatch.setattr(sys, "argv", ["splitinv-run", *TINY, f"hydra.run.dir={small_filesystem}/run"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "is not writable: choose a writable hydra.run.dir" in err


def test_max_steps_means_stop_after_that_many_steps_instead_of_epochs(tmp_path):
    record = run(compose([*BASE, "attack=decoder", "trainer.max_epochs=1", "trainer.max_steps=12",
                          "data.n_aux=32", "data.batch_size=4"], output_dir=tmp_path))  # fmt: skip
    assert record["cost"]["train_steps"] == 12  # max_epochs=1 alone would stop at 8 (32 images, batch 4)
