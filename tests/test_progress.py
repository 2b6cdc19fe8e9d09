"""Progress reporting (splitinv.progress): log lines off a terminal, tqdm on one, nothing when disabled; the
Lightning callback that build_trainer puts in place of Lightning's bar off a terminal; Lightning's notices
that are not about the run filtered out, splitinv's own warnings kept."""

from __future__ import annotations

import io
import logging
import re
import sys
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import pytest
import torch
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from tqdm.std import tqdm as std_tqdm

from splitinv import progress, training
from splitinv.progress import LogLineProgress, Progress, track
from splitinv.training import build_trainer, monitor

LINE = re.compile(
    r"^(?P<desc>[^:]+): (?P<n>\d+)/(?P<total>\d+) steps \((?P<pct>\d+)%\), (?P<rate>[\d.]+) steps/s, "
    r"ETA (?P<eta>\d+:\d\d:\d\d)$"
)


class Clock:
    """Stands in for time.monotonic: advanced by hand."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(progress.time, "monotonic", c)
    return c


# ------------------------------------------------------------------------------------------ track/Progress


def test_lines_off_a_terminal_give_count_percentage_rate_and_eta_then_a_final_line(
    clock: Clock, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(progress.ENV, "0")  # a line after every item
    seen = []
    for i in track(range(4), desc="DCI synthesis"):
        clock.t += 2.0  # each item takes 2 s: 0.5 steps/s
        seen.append(i)
    assert seen == [0, 1, 2, 3]
    out, err = capsys.readouterr()
    assert out == "" and "\r" not in err
    assert err.splitlines() == [
        "DCI synthesis: 1/4 steps (25%), 0.5 steps/s, ETA 0:00:06",
        "DCI synthesis: 2/4 steps (50%), 0.5 steps/s, ETA 0:00:04",
        "DCI synthesis: 3/4 steps (75%), 0.5 steps/s, ETA 0:00:02",
        "DCI synthesis: 4/4 steps in 0:00:08 (0.5 steps/s)",
    ]


def test_lines_come_at_most_every_interval(
    clock: Clock, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(progress.ENV, "5")
    for _ in track(range(6), desc="phase", unit="batch"):
        clock.t += 2.0  # lines due at 6 s (3 items) and then at 12 s: the end, which gets the final line
    assert capsys.readouterr().err.splitlines() == [
        "phase: 3/6 batches (50%), 0.5 batches/s, ETA 0:00:06",
        "phase: 6/6 batches in 0:00:12 (0.5 batches/s)",
    ]


def test_the_default_interval_is_the_module_constant(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(progress.ENV, raising=False)
    assert progress.interval() == progress.INTERVAL == 30.0
    monkeypatch.setenv(progress.ENV, "2.5")
    assert progress.interval() == 2.5
    monkeypatch.setenv(progress.ENV, "soon")
    with pytest.warns(UserWarning, match="SPLITINV_PROGRESS_INTERVAL='soon' is not a number"):
        assert progress.interval() == 30.0


def test_manual_progress_shows_its_postfix_and_counts_updates(
    clock: Clock, capsys: pytest.CaptureFixture[str]
) -> None:
    with Progress(total=10, desc="encoder", unit="step", every=0) as bar:
        clock.t += 4.0
        bar.update(4)
        bar.set_postfix(loss=0.123456)
        clock.t += 6.0
        bar.update(6)
    assert capsys.readouterr().err.splitlines() == [
        "encoder: 4/10 steps (40%), 1 steps/s, ETA 0:00:06",
        "encoder: 10/10 steps in 0:00:10 (1 steps/s), loss 0.1235",
    ]


def test_a_short_quiet_phase_and_a_failed_one_write_no_final_line(
    clock: Clock, capsys: pytest.CaptureFixture[str]
) -> None:
    for _ in track(range(3), desc="quick", every=30):  # 3 s in all: no periodic line, no final line
        clock.t += 1.0
    with pytest.raises(RuntimeError), Progress(total=10, desc="broken", every=30) as bar:
        clock.t += 60
        bar.update(1)  # one periodic line (60 s >= 30 s)
        raise RuntimeError("boom")
    for _ in track(range(2), desc="slow", every=30):  # no periodic line, but long enough for a final one
        clock.t += 3.0
    assert capsys.readouterr().err.splitlines() == [
        "broken: 1/10 steps (10%), 0.0167 steps/s, ETA 0:09:00",
        "slow: 2/2 steps in 0:00:06 (0.333 steps/s)",
    ]


def test_on_a_terminal_it_is_a_tqdm_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(progress.ENV, "0")
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    bar = track(range(50), desc="DCI synthesis")
    assert isinstance(bar._bar, std_tqdm)
    for _ in bar:
        pass
    written = terminal.getvalue()
    assert "\r" in written and "DCI synthesis:" in written and "%|" in written  # tqdm's frames
    assert "steps/s, ETA" not in written and " in 0:00:" not in written  # no log line


@pytest.mark.parametrize("terminal", [False, True])
def test_disabled_progress_prints_nothing(
    terminal: bool, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(progress.ENV, "0")
    if terminal:
        monkeypatch.setattr(sys, "stderr", FakeTerminal())
    for _ in track(range(5), desc="quiet", enabled=False):
        pass
    with Progress(total=3, desc="quiet", enabled=False, every=0) as bar:
        bar.update(3)
    assert bar._bar is None
    assert capsys.readouterr() == ("", "")
    if terminal:
        assert sys.stderr.getvalue() == ""  # type: ignore[attr-defined]


def test_the_optimisation_loops_report_through_it(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """optimize_state (GAN inversion, the GAN-prior search) writes lines off a terminal, with its name."""
    from splitinv.optim import optimize_state

    monkeypatch.setenv(progress.ENV, "0")
    state = {"z": torch.zeros(2, 3)}
    optimize_state(
        state, lambda s: (s["z"] - 1).pow(2).sum(1), steps=3, lr=0.1, progress=True, name="invert@z"
    )
    lines = capsys.readouterr().err.splitlines()
    assert [LINE.match(line)["n"] for line in lines[:-1]] == ["1", "2"]  # type: ignore[index]
    assert lines[-1].startswith("invert@z: 3/3 steps in ")
    optimize_state(state, lambda s: (s["z"] - 1).pow(2).sum(1), steps=3, lr=0.1, progress=False)
    assert capsys.readouterr().err == ""


# ------------------------------------------------------------------------------------------- Lightning


class Tiny(L.LightningModule):
    """Two batches of 2; a frozen block in eval mode (as splitinv's modules keep a victim's blocks)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(4, 1)
        self.frozen = nn.Linear(4, 4).eval()
        self.frozen.requires_grad_(False)
        self.losses: list[float] = []  # every step's loss (a test's host read; the loop itself reads few)

    def train(self, mode: bool = True) -> Tiny:
        super().train(mode)
        self.frozen.eval()
        return self

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = self.net(self.frozen(batch[0])).pow(2).mean()
        self.losses.append(float(loss))
        monitor(self, "tiny loss", "lower the lr.").update(
            {"loss": loss}, self, batch_idx=batch_idx, batch_size=len(batch[0])
        )
        return loss

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.net(batch[0])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.net.parameters(), lr=0.1)


def _loader(n: int = 4) -> DataLoader:
    return DataLoader(
        TensorDataset(torch.rand(n, 4, generator=torch.Generator().manual_seed(0))), batch_size=2
    )


def _settings(tmp_path: Path, **kwargs: Any) -> dict[str, Any]:
    return {
        "accelerator": "cpu",
        "max_epochs": 2,
        "logger": CSVLogger(tmp_path / "logs"),  # with a logger: Lightning's logging-interval notice
        "enable_checkpointing": False,
        "enable_model_summary": False,
        "default_root_dir": tmp_path,
        **kwargs,
    }


def test_the_callback_writes_fit_and_predict_lines_in_place_of_lightnings_bar(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(progress.ENV, "0")
    trainer = build_trainer(precision="32-true", **_settings(tmp_path))  # stderr is pytest's: not a tty
    bars = [
        c for c in trainer.callbacks if isinstance(c, (RichProgressBar, TQDMProgressBar, LogLineProgress))
    ]
    assert len(bars) == 1 and isinstance(trainer.progress_bar_callback, LogLineProgress)
    tiny = Tiny()
    trainer.fit(tiny, train_dataloaders=_loader())
    out, err = capsys.readouterr()
    loss = trainer.progress_bar_metrics["train/loss"]
    lines = err.splitlines()
    fit = [line for line in lines if line.startswith("fit Tiny: ")]
    assert len(fit) == 4, lines  # steps 1-3, then the final line (step 4 is the end)
    assert all(
        re.fullmatch(r".*, [\d.]+ steps/s, ETA 0:00:\d\d, train/loss [-\d.e]+", line) for line in fit[:-1]
    )
    assert [line.split(", ")[0] for line in fit[:-1]] == [
        "fit Tiny: epoch 1/2 step 1/2",
        "fit Tiny: epoch 1/2 step 2/2",
        "fit Tiny: epoch 2/2 step 1/2",
    ]
    assert [line.split(", ")[1] for line in fit[:-1]] == [
        "1/4 steps (25%)",
        "2/4 steps (50%)",
        "3/4 steps (75%)",
    ]
    # each line shows its own step's loss (step 3 is not a check step: the line reads it, not step 2's)
    shown = [float(line.rsplit("train/loss ", 1)[1]) for line in fit[:-1]]
    assert shown == [float(f"{v:.4g}") for v in tiny.losses[:3]] and len(set(tiny.losses[:3])) == 3
    assert re.fullmatch(
        rf"fit Tiny: 4/4 steps in 0:00:\d\d \([\d.]+ steps/s\), train/loss {re.escape(f'{loss:.4g}')}",
        fit[-1],
    )
    assert "Epoch" not in out + err and "\r" not in out + err  # no Lightning bar, in either stream

    trainer.predict(Tiny(), dataloaders=_loader(6), return_predictions=False)
    predict = [line for line in capsys.readouterr().err.splitlines() if line.startswith("predict Tiny: ")]
    assert [line.split(", ")[0] for line in predict[:-1]] == [
        "predict Tiny: 1/3 batches (33%)",
        "predict Tiny: 2/3 batches (66%)",
    ]
    assert re.fullmatch(r"predict Tiny: 3/3 batches in 0:00:\d\d \([\d.]+ batches/s\)", predict[-1])


def test_a_terminal_keeps_a_tqdm_bar_and_no_bar_means_no_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as m:
        m.setattr(sys, "stdout", FakeTerminal())
        m.setattr(sys, "stderr", FakeTerminal())
        on_terminal = build_trainer(precision="32-true", **_settings(tmp_path))
    assert isinstance(on_terminal.progress_bar_callback, TQDMProgressBar)
    monkeypatch.setenv(progress.ENV, "0")
    off = build_trainer(precision="32-true", **_settings(tmp_path, enable_progress_bar=False))
    assert off.progress_bar_callback is None
    off.fit(Tiny(), train_dataloaders=_loader())
    assert "fit Tiny" not in capsys.readouterr().err


NOTICES = ("GPU available:", "TPU available:", "`Trainer.fit` stopped: `max_epochs=2` reached.")
QUIETED = ("module(s) in eval mode at the start of training", "is smaller than the logging interval")
LEAFSPEC = "isinstance(treespec, LeafSpec)"
RANK_ZERO = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
    "lightning.pytorch",
    "lightning.fabric",
)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_lightnings_notices_are_filtered_and_splitinvs_warnings_are_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from splitinv.victims import build_victim

    records = _Records()
    rank_zero = logging.getLogger(RANK_ZERO[0])  # where Lightning's rank_zero_info records are made
    rank_zero.addHandler(records)
    try:
        # the control: a plain Lightning trainer, with splitinv's logging filters taken off, says all of it
        with monkeypatch.context() as m, warnings.catch_warnings(record=True) as plain:
            warnings.simplefilter("always")
            for name in RANK_ZERO:
                m.setattr(logging.getLogger(name), "filters", [])
            L.Trainer(enable_progress_bar=False, **_settings(tmp_path)).fit(Tiny(), _loader())
        plain_text = "\n".join(records.messages + [str(w.message) for w in plain])
        for notice in (*NOTICES, *QUIETED):
            assert notice in plain_text, notice
        leafspec_shown = LEAFSPEC in plain_text  # torch's deprecation (torch >= 2.10)
        records.messages.clear()

        with warnings.catch_warnings(record=True) as quiet:
            warnings.simplefilter("always")
            build_trainer(precision="32-true", enable_progress_bar=False, **_settings(tmp_path)).fit(
                Tiny(), _loader()
            )
            build_victim("resnet18", image_size=32, num_classes=10)  # splitinv warns: RANDOM weights
        quiet_text = "\n".join(records.messages + [str(w.message) for w in quiet])
        for notice in (*NOTICES, *QUIETED):
            assert notice not in quiet_text, notice
        assert not (leafspec_shown and LEAFSPEC in quiet_text)
        assert "has RANDOM weights" in quiet_text
    finally:
        rank_zero.removeHandler(records)


def test_the_warning_filters_match_only_their_messages_and_modules() -> None:
    """Each filter is precise: the same message from elsewhere, or another Lightning warning, still shows."""
    from lightning.fabric.utilities.warnings import PossibleUserWarning

    leafspec = "`isinstance(treespec, LeafSpec)` is deprecated, use ..."
    eval_mode = "Found 3 module(s) in eval mode at the start of training. ..."
    interval = "The number of training batches (8) is smaller than the logging interval ..."
    fit_loop, connector = (
        "lightning.pytorch.loops.fit_loop",
        "lightning.pytorch.trainer.connectors.data_connector",
    )
    cases = [  # (message, category, module, shown)
        (leafspec, FutureWarning, "lightning.pytorch.utilities._pytree", False),
        (leafspec, FutureWarning, "mypackage.trees", True),
        (eval_mode, PossibleUserWarning, fit_loop, False),
        (interval, PossibleUserWarning, fit_loop, False),
        ("The 'train_dataloader' does not have many workers ...", PossibleUserWarning, connector, True),
        ("victim resnet18 has RANDOM weights (weights=None) ...", UserWarning, "splitinv.victims", True),
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        training._quiet_lightning()
        for message, category, module, _shown in cases:
            warnings.warn_explicit(message, category, f"{module.replace('.', '/')}.py", 1, module=module)
    shown = [str(w.message) for w in caught]
    assert shown == [message for message, _c, _m, visible in cases if visible]


def test_the_notice_filter_drops_the_noise_and_shows_the_precision_once() -> None:
    notices = training._LightningNotices()

    def shown(message: str) -> bool:
        return notices.filter(logging.LogRecord("lightning", logging.INFO, __file__, 1, message, None, None))

    assert not shown("💡 Tip: For seamless cloud logging, try installing [litlogger]")
    assert not shown("GPU available: True (cuda), used: True")
    assert not shown("TPU available: False, using: 0 TPU cores")
    assert not shown("`Trainer.fit` stopped: `max_epochs=10` reached.")
    assert not shown("`Trainer.fit` stopped: `max_steps=1000` reached.")
    assert shown("`Trainer.fit` stopped: No training batches.")  # about the run: kept
    assert not shown("`Trainer(limit_val_batches=1.0)` was configured so 100% of the batches will be used..")
    assert not shown("Loading `train_dataloader` to estimate number of stepping batches.")
    assert shown("Using bfloat16 Automatic Mixed Precision (AMP)")
    assert not shown("Using bfloat16 Automatic Mixed Precision (AMP)")  # once
    assert shown("Using 16bit Automatic Mixed Precision (AMP)")  # another precision: said again
    assert shown("Restoring states from the checkpoint path at x.ckpt")
