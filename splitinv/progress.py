"""Progress of long phases: a tqdm bar on a terminal, a plain log line every so often anywhere else.

- :func:`track` / :class:`Progress`: a loop's progress. On a terminal (stderr is a tty, or a notebook) a
  tqdm bar; otherwise (stderr goes to a file or a pipe: a SLURM log) a line on stderr at most every
  :data:`INTERVAL` seconds (``SPLITINV_PROGRESS_INTERVAL`` changes it; 0: after every item) and one at the
  end::

      DCI synthesis: 40/100 steps (40%), 2.1 steps/s, ETA 0:00:28, loss 0.1234
      DCI synthesis: 100/100 steps in 0:00:47 (2.1 steps/s), loss 0.0123

- :class:`LogLineProgress`: the same lines for a Lightning ``fit`` (epoch, step in the epoch and in the whole
  fit, rate, ETA of the fit, the progress bar's loss terms) and ``predict`` (batches).
  :func:`splitinv.training.build_trainer` puts it in place of Lightning's bar off a terminal.

Why not plain tqdm off a terminal: tqdm redraws its bar in place with carriage returns, and a log file keeps
every frame, joined by those carriage returns into one unreadable line (and Lightning's Rich bar writes its
final frames into a redirected stdout). A line every 30 seconds reads as a log.
"""

from __future__ import annotations

import math
import os
import sys
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Generic, TextIO, TypeVar

if TYPE_CHECKING:  # Lightning is imported when LogLineProgress is first used (seconds: track() needs none)
    import lightning.pytorch as L

INTERVAL = 30.0  # seconds between two progress lines off a terminal
QUIET_BELOW = 5.0  # seconds: a phase this short that wrote no periodic line writes no final line either
ENV = "SPLITINV_PROGRESS_INTERVAL"  # seconds; 0: a line after every item

T = TypeVar("T")
_warned_env: set[str] = set()


def interval() -> float:
    """Seconds between progress lines: ``$SPLITINV_PROGRESS_INTERVAL`` if set (a bad value is warned about
    once and ignored), else :data:`INTERVAL`."""
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return INTERVAL
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if math.isfinite(value) and value >= 0:
        return value
    if raw not in _warned_env:
        _warned_env.add(raw)
        warnings.warn(f"{ENV}={raw!r} is not a number of seconds >= 0: using {INTERVAL:g} s.", stacklevel=3)
    return INTERVAL


def interactive(stream: Any = None) -> bool:
    """Whether ``stream`` (default: stderr) shows a live bar: a terminal, or a Jupyter notebook's output."""
    stream = sys.stderr if stream is None else stream
    try:
        if stream.isatty():
            return True
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False
    return _in_notebook()


def _in_notebook() -> bool:
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


# ------------------------------------------------------------------------------------------- formatting


def plural(unit: str) -> str:
    """``step`` -> ``steps``, ``batch`` -> ``batches``."""
    return unit + ("es" if unit.endswith(("s", "x", "ch", "sh")) else "s")


def duration(seconds: float) -> str:
    """``H:MM:SS`` (whole seconds)."""
    return str(timedelta(seconds=round(max(0.0, seconds)))) if math.isfinite(seconds) else "?"


def rate_text(rate: float) -> str:
    """Three significant digits, no exponent above 100 (``2.1``, ``14.8``, ``1234``)."""
    if not math.isfinite(rate):
        return "?"
    return f"{rate:.0f}" if rate >= 100 else f"{rate:.3g}"


# where a LightningModule keeps its loss monitor (splitinv.training.monitor), read by the progress lines
LOSS_MONITOR = "_loss_monitor"


def _postfix(values: Mapping[str, Any]) -> str:
    parts = []
    for name, value in values.items():
        if isinstance(value, float):
            parts.append(f"{name} {value:.4g}")
        elif value is not None:
            parts.append(f"{name} {value}")
    return "".join(f", {p}" for p in parts)


def progress_line(
    desc: str,
    done: int,
    total: int | None,
    unit: str,
    elapsed: float,
    *,
    final: bool = False,
    where: str = "",
    info: Mapping[str, Any] | None = None,
) -> str:
    """One progress line: ``desc: [where, ]done/total units (pct%), rate units/s, ETA h:mm:ss[, info]``, or at
    the end ``desc: done/total units in h:mm:ss (rate units/s)[, info]``."""
    units, per_s = (unit if (total or done) == 1 else plural(unit)), plural(unit) + "/s"
    rate = done / elapsed if elapsed > 0 else float("nan")
    count = f"{done}/{total} {units}" if total else f"{done} {units}"
    head = f"{desc}: {where + ', ' if where else ''}{count}"
    tail = _postfix(info or {})
    if final:
        return f"{head} in {duration(elapsed)} ({rate_text(rate)} {per_s}){tail}"
    pct = f" ({100 * done // total}%)" if total else ""
    eta = ""
    if total and done > 0 and elapsed > 0:
        eta = f", ETA {duration((total - done) * elapsed / done)}"
    return f"{head}{pct}, {rate_text(rate)} {per_s}{eta}{tail}"


def _write(line: str, stream: TextIO | None = None) -> None:
    stream = sys.stderr if stream is None else stream
    try:
        print(line, file=stream, flush=True)
    except (OSError, ValueError):  # a closed stream must not stop the work it reports on
        pass


# --------------------------------------------------------------------------------------------- loops


class Progress(Generic[T]):
    """Progress of one phase: iterate it (``for x in track(items)``) or count by hand (``update(n)``).

    Args:
        iterable: what to iterate over (None: count with :meth:`update`).
        total: the number of items (default: ``len(iterable)`` where it has one).
        desc: names the phase in the bar and the lines ("DCI synthesis").
        unit: the word for an item ("step", "batch"); plural added.
        enabled: False prints nothing; True or None: a bar on a terminal, lines elsewhere.
        every: seconds between lines off a terminal (default: :func:`interval`).
        stream: where to write (default: stderr, looked up at each write).
    """

    def __init__(
        self,
        iterable: Iterable[T] | None = None,
        total: int | None = None,
        desc: str = "progress",
        unit: str = "step",
        enabled: bool | None = None,
        every: float | None = None,
        stream: TextIO | None = None,
    ) -> None:
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except TypeError:  # a DataLoader over an IterableDataset without a length
                total = None
        self.total = int(total) if total is not None else None
        self.desc, self.unit, self.stream = desc, unit, stream
        self.enabled = enabled is not False
        self.every = interval() if every is None else float(every)
        self.n = 0
        self.written = 0  # lines written
        self.info: dict[str, Any] = {}
        self.closed = False
        self._start = self._last = time.monotonic()
        self._bar: Any = None
        if self.enabled and interactive(stream):
            from tqdm.auto import tqdm  # a notebook gets its widget

            self._bar = tqdm(
                total=self.total,
                desc=desc,
                unit=unit,
                leave=False,
                file=stream or sys.stderr,
                dynamic_ncols=True,
            )

    @property
    def lines(self) -> bool:
        """Whether this progress writes log lines (enabled, not on a terminal)."""
        return self.enabled and self._bar is None

    def __iter__(self) -> Iterator[T]:
        if self.iterable is None:
            raise TypeError("Progress was made without an iterable: count with update(n).")
        try:
            for item in self.iterable:
                yield item
                self.update()
        finally:  # the final line for a finished loop (not one the caller broke out of, or that failed)
            self.close(final=self.total is None or self.n >= self.total)

    def __enter__(self) -> Progress[T]:
        return self

    def __exit__(self, kind: Any, value: Any, traceback: Any) -> None:
        self.close(final=kind is None or issubclass(kind, GeneratorExit))

    def update(self, n: int = 1) -> None:
        """``n`` more items done."""
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.lines:
            now = time.monotonic()
            if now - self._last >= self.every and (self.total is None or self.n < self.total):
                self._last = now
                self.written += 1
                _write(self.line(), self.stream)

    def set_postfix(self, **values: Any) -> None:
        """Values shown after the count (``loss=0.12``), until replaced: pass host numbers only."""
        self.info = dict(values)
        if self._bar is not None:
            self._bar.set_postfix(values, refresh=False)

    def line(self, final: bool = False) -> str:
        """The line for now (the final line with ``final``)."""
        elapsed = time.monotonic() - self._start
        return progress_line(self.desc, self.n, self.total, self.unit, elapsed, final=final, info=self.info)

    def close(self, final: bool = True) -> None:
        """End the bar, or write the final line (unless ``final`` is False: the phase failed; or the phase
        took less than :data:`QUIET_BELOW` seconds and wrote no line before)."""
        if self.closed:
            return
        self.closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.lines and final and (self.written or time.monotonic() - self._start >= QUIET_BELOW):
            self.written += 1
            _write(self.line(final=True), self.stream)


def track(
    iterable: Iterable[T],
    total: int | None = None,
    desc: str = "progress",
    unit: str = "step",
    enabled: bool | None = None,
    every: float | None = None,
) -> Progress[T]:
    """``iterable`` with its progress shown (see :class:`Progress`): ``for batch in track(loader, ...)``."""
    return Progress(iterable, total=total, desc=desc, unit=unit, enabled=enabled, every=every)


# ----------------------------------------------------------------------------------------- Lightning


class _LogLines:
    """Lightning's progress as log lines on stderr (rank zero only): every ``every`` seconds and at the end.

    ``fit``: ``fit DecoderModule: epoch 1/2 step 5/8, 5/16 steps (31%), 14.8 steps/s, ETA 0:00:01, train/loss
    0.024``; the steps of the whole fit are training batches, or the optimizer steps that ``max_steps``
    counts when it is set. ``predict``: batches. The values shown are the progress bar's
    (``trainer.progress_bar_metrics``), read only when a line is written: the loops log host values there
    (:class:`splitinv.training.LossMonitor`), so a line costs no device sync. As for :class:`Progress`, a
    phase shorter than :data:`QUIET_BELOW` seconds that wrote no periodic line writes no final line.
    """

    def __init__(self, every: float | None = None, stream: TextIO | None = None) -> None:
        super().__init__()  # Lightning's ProgressBar
        self._every, self.stream = every, stream
        self._enabled = True
        self._phase: dict[str, Any] = {}

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def _begin(self, trainer: L.Trainer, kind: str, pl_module: L.LightningModule) -> None:
        now = time.monotonic()
        self._phase = {
            "kind": kind,
            "desc": f"{kind} {type(pl_module).__name__}",
            "start": now,
            "last": now,
            "every": interval() if self._every is None else float(self._every),
            "batches": 0,
            "step0": trainer.global_step,
            "written": 0,
        }

    def _count(self, trainer: L.Trainer) -> tuple[int, int | None]:
        """(steps or batches done in this phase, how many it makes in all or None)."""
        done = self._phase["batches"]
        if self._phase["kind"] == "predict":
            counts = trainer.num_predict_batches
            return done, int(sum(counts)) if all(isinstance(c, int) for c in counts) else None
        if trainer.max_steps is not None and trainer.max_steps > 0:
            step0 = self._phase["step0"]
            return trainer.global_step - step0, trainer.max_steps - step0
        per_epoch, epochs = trainer.num_training_batches, trainer.max_epochs
        total = (
            per_epoch * epochs if isinstance(per_epoch, int) and epochs is not None and epochs > 0 else None
        )
        return done, total

    def _batch_end(self, trainer: L.Trainer, batch_idx: int) -> None:
        if not self._phase:
            return
        self._phase["batches"] += 1
        now = time.monotonic()
        if not (self._enabled and trainer.is_global_zero) or now - self._phase["last"] < self._phase["every"]:
            return
        done, total = self._count(trainer)
        if total is not None and done >= total:
            return  # the final line follows
        self._phase["last"] = now
        self._write(trainer, done, total, where=self._where(trainer, batch_idx))

    def _end(self, trainer: L.Trainer) -> None:
        phase = self._phase
        if phase and self._enabled and trainer.is_global_zero:
            if phase["written"] or time.monotonic() - phase["start"] >= QUIET_BELOW:
                self._write(trainer, *self._count(trainer), final=True)
        self._phase = {}

    def _where(self, trainer: L.Trainer, batch_idx: int) -> str:
        if self._phase["kind"] != "fit":
            return ""
        epochs, per_epoch = trainer.max_epochs, trainer.num_training_batches
        text = f"epoch {trainer.current_epoch + 1}" + (
            f"/{epochs}" if epochs is not None and epochs > 0 else ""
        )
        return f"{text} step {batch_idx + 1}" + (f"/{per_epoch}" if isinstance(per_epoch, int) else "")

    def _write(
        self, trainer: L.Trainer, done: int, total: int | None, final: bool = False, where: str = ""
    ) -> None:
        fit = self._phase["kind"] == "fit"
        elapsed = time.monotonic() - self._phase["start"]
        line = progress_line(
            self._phase["desc"],
            done,
            total,
            "step" if fit else "batch",
            elapsed,
            final=final,
            where=where,
            info=self._values(trainer) if fit else None,
        )
        self._phase["written"] += 1
        _write(line, self.stream)

    def _values(self, trainer: L.Trainer) -> dict[str, float]:
        """The progress bar's values as host floats (the loops log them there as CPU tensors), and
        ``train/loss`` from the callback metrics where it is already on the host. A loop whose loss terms
        stay on the device between checks (a :class:`splitinv.training.LossMonitor`, kept on the module
        under ``LOSS_MONITOR``) is read now, so the line shows this step's loss, not the last check's."""
        values = {k: float(v) for k, v in trainer.progress_bar_metrics.items() if isinstance(v, (int, float))}
        module = trainer.lightning_module
        latest = getattr(module.__dict__.get(LOSS_MONITOR), "latest", None) if module is not None else None
        if callable(latest):
            values.update(latest())
        loss = trainer.callback_metrics.get("train/loss")
        if "train/loss" not in values and getattr(loss, "device", None) is not None:
            if loss.device.type == "cpu" and loss.numel() == 1:  # type: ignore[union-attr]
                values["train/loss"] = float(loss)  # type: ignore[arg-type]
        return values

    # Lightning's hooks

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._begin(trainer, "fit", pl_module)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._batch_end(trainer, batch_idx)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._end(trainer)

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._begin(trainer, "predict", pl_module)

    def on_predict_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._batch_end(trainer, batch_idx)

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._end(trainer)


def __getattr__(name: str) -> Any:
    """``LogLineProgress``: :class:`_LogLines` as a Lightning ``ProgressBar`` (made on first use, so that
    importing this module does not import Lightning)."""
    if name != "LogLineProgress":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar

    attrs = {"__module__": __name__, "__qualname__": name, "__doc__": _LogLines.__doc__}
    cls = type(name, (_LogLines, ProgressBar), attrs)
    globals()[name] = cls
    return cls
