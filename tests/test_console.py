"""What a command prints besides its result: warnings on one line each, W&B's chatter replaced by one hint."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest

from splitinv import errors, task

TINY = [
    "victim.image_size=32",
    "data=fashion_mnist_mini",
    "data.n_aux=32",
    "data.n_eval=4",
    "data.batch_size=16",
    "trainer.max_epochs=1",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "cut=layer1",
]


def _shown(command: str, message: str, category: type[Warning], filename: str, lineno: int) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        errors.one_line_warnings(command)
        warnings.warn_explicit(message, category, filename, lineno)
    return message


def test_splitinv_warning_is_one_line_with_the_command(capsys: pytest.CaptureFixture) -> None:
    own = str(Path(task.__file__).with_name("victims.py"))
    _shown("splitinv-run", "victim x has RANDOM weights\n  (second line)", UserWarning, own, 10)
    assert capsys.readouterr().err == "splitinv-run: warning: victim x has RANDOM weights (second line)\n"


def test_other_library_warning_keeps_its_category_and_origin(capsys: pytest.CaptureFixture) -> None:
    _shown("splitinv-run", "old API", FutureWarning, "/site-packages/somelib/mod.py", 12)
    assert capsys.readouterr().err == "splitinv-run: warning: FutureWarning: old API (mod.py:12)\n"


def test_a_run_prints_warnings_once_on_one_line_and_one_wandb_hint(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("wandb")
    from splitinv.run import main

    out = tmp_path / "run"
    monkeypatch.setattr(sys, "argv", ["splitinv-run", *TINY, "logger=wandb", f"hydra.run.dir={out}"])
    monkeypatch.chdir(tmp_path)
    before = warnings.showwarning
    main()
    assert warnings.showwarning is before  # put back for the caller
    captured = capsys.readouterr()
    err_lines = captured.err.splitlines()
    random = [line for line in err_lines if "RANDOM weights" in line]
    assert len(random) == 1 and random[0].startswith("splitinv-run: warning: victim resnet18 has RANDOM"), (
        err_lines
    )
    assert not [line for line in err_lines if "_target_(" in line or line.startswith("wandb:")], err_lines
    hints = [line for line in err_lines if line.startswith("W&B: offline run saved (")]
    assert len(hints) == 1, err_lines
    run_dir = Path(hints[0].split("(", 1)[1].split(")", 1)[0])
    assert run_dir.parent == out / "wandb" and run_dir.is_dir()
    assert captured.out.strip().splitlines()[-1].startswith("decoder resnet18 @ layer1:")  # the result line


def test_help_lists_the_options_a_user_can_choose_not_the_shared_bases(
    capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from splitinv.run import main

    monkeypatch.setattr(sys, "argv", ["splitinv-run", "--help"])
    with pytest.raises(SystemExit) as exit_:
        main()
    out = capsys.readouterr().out
    assert exit_.value.code in (0, None)
    shipped = sorted(f.stem for f in (Path(__file__).parents[1] / "conf" / "attack").glob("[!_]*.yaml"))
    assert {"rmle", "decoder", "dci"} <= set(shipped)
    assert f"\nattack: {', '.join(shipped)}\n" in out  # no _base, _optimize
    assert "\nexperiment/he2019_setting: inverse_random_paper," in out and "victim: " in out
    assert "_base" not in out and "_optimize" not in out and "\nseed: 0\n" in out  # the config follows
