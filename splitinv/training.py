"""What every training loop shares: NaN/inf checks and loss logging without a host sync per step, the
precision setting (``auto``: bf16 where the hardware has it) and the trainer factory the configs build.

- :class:`LossMonitor`: a loop's loss terms stay on the device; whether they stayed finite (and the first
  step where one did not) is accumulated there, and copied to the host once on the first step, every
  :data:`CHECK_EVERY` steps and at the end of each epoch, as the optimisation attacks do
  (``attack.check_every``). A NaN is still caught, named by the step where it appeared, in one line.
- :func:`resolve_precision`: ``auto`` is ``bf16-mixed`` on a CUDA GPU with bf16 and on a CPU with AMX tiles,
  ``32-true`` elsewhere; any other value is Lightning's own (an explicit bf16 on a CPU without AMX warns:
  :func:`warn_slow_precision`).
- :func:`build_trainer`: ``conf/trainer/*.yaml``'s target, a Lightning Trainer with the precision resolved
  and, when asked, ``channels_last`` weights and ``torch.compile``\\ d networks (:class:`Speed`); its
  progress is tqdm's bar on a terminal and log lines elsewhere (:mod:`splitinv.progress`), and Lightning's
  notices that are not about the run are filtered out.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import sys
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch
from lightning.fabric.utilities.warnings import PossibleUserWarning
from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar
from torch import Tensor, nn

from splitinv.errors import SplitinvError
from splitinv.progress import LOSS_MONITOR, LogLineProgress, interactive

CHECK_EVERY = 50  # steps between host syncs of a training loop (the first step is always checked)
FP32 = "32-true"
BF16 = "bf16-mixed"


class LossMonitor:
    """NaN/inf checks and logging of a training loop's loss terms, one host sync every ``every`` steps.

    Args:
        what: names the loss in the error ("decoder loss"). hint: what to change, ending the error.
        every: steps between checks. unit: the word for a step in the error ("step", "iteration").
        prog_bar: the terms shown in the progress bar.
    """

    def __init__(
        self,
        what: str,
        hint: str,
        every: int = CHECK_EVERY,
        unit: str = "step",
        prog_bar: Sequence[str] = ("loss",),
    ) -> None:
        if every < 1:
            raise SplitinvError(f"the check interval must be at least 1 step, got {every}.")
        self.what, self.hint, self.every, self.unit = what, hint, int(every), unit
        self.prog_bar = set(prog_bar)
        self.steps = 0  # updates seen
        self.syncs = 0  # host syncs made (what a test counts)
        self._names: list[str] = []
        self._last: Tensor | None = None
        self._bad_step: Tensor | None = None
        self._bad: Tensor | None = None

    def update(
        self,
        values: Mapping[str, Tensor],
        module: L.LightningModule | None = None,
        *,
        batch_idx: int | None = None,
        batch_size: int | None = None,
        step: int | None = None,
        epoch_means: bool = False,
    ) -> dict[str, float] | None:
        """Record one step's terms; returns them on the host at a check step (after logging them), else None.

        ``module`` (a LightningModule being fitted): its progress bar, callback metrics and loggers get the
        terms as ``train/<term>`` at check steps, and with ``epoch_means`` their means as
        ``train/<term>_epoch`` (accumulated on the device by Lightning, read once per epoch). ``step``: the
        number to report (default: the count of updates, from 0).
        """
        names = list(values)
        row = torch.stack([v.detach().float().reshape(()) for v in values.values()])
        index = self.steps if step is None else int(step)
        if self._last is not None and names != self._names:
            self.check()  # the terms change (a new phase): settle the old ones first
        if self._last is None or names != self._names:
            self._names = names
            self._bad_step = torch.full((), -1, dtype=torch.long, device=row.device)
            self._bad = torch.zeros_like(row)
        assert self._bad_step is not None and self._bad is not None
        newly = ~torch.isfinite(row).all() & (self._bad_step < 0)
        self._bad_step = torch.where(newly, index, self._bad_step)
        self._bad = torch.where(newly, row, self._bad)
        self._last = row
        self.steps += 1
        attached = module is not None and module._trainer is not None
        if attached and epoch_means:
            for name, value in values.items():
                module.log(
                    f"train/{name}_epoch",
                    value.detach().float(),
                    on_step=False,
                    on_epoch=True,
                    batch_size=batch_size,
                )
        if not (self.steps == 1 or self.steps % self.every == 0 or _last_step(module, batch_idx)):
            return None
        host = self.check()
        if attached and host is not None:
            _log_host_values(module, host, self.prog_bar, batch_size)
        return host

    def check(self) -> dict[str, float] | None:
        """Copy to the host now (one sync): the last step's terms, or a one-line SplitinvError naming the
        first step since the last check where a term was NaN or inf. None before any update."""
        if self._last is None or self._bad_step is None or self._bad is None:
            return None
        self.syncs += 1
        host = torch.cat([self._bad_step.float().view(1), self._bad, self._last]).tolist()
        k = len(self._names)
        bad_step, bad, last = int(host[0]), host[1 : 1 + k], host[1 + k :]
        if bad_step >= 0:
            raise SplitinvError(self._message(bad_step, bad))
        return dict(zip(self._names, last, strict=True))

    def latest(self) -> dict[str, float]:
        """The last step's progress-bar terms on the host, read now (one sync; checked like every read), as
        ``train/<term>``: what a progress line shows between checks. Empty before any update."""
        host = self.check() or {}
        return {f"train/{k}": v for k, v in host.items() if k in self.prog_bar}

    def _message(self, step: int, values: list[float]) -> str:
        terms = dict(zip(self._names, values, strict=True))
        first = next(n for n, v in terms.items() if not math.isfinite(v))
        value = terms.get("loss", terms[first])
        value = value if not math.isfinite(value) else terms[first]
        detail = ""
        if len(terms) > 1:
            detail = (
                " Terms at that " + self.unit + ": " + ", ".join(f"{n} {v:.4g}" for n, v in terms.items())
            )
        return f"{self.what} became {value} at {self.unit} {step}: {self.hint}{detail}"


def monitor(module: nn.Module, what: str, hint: str, **kwargs: Any) -> LossMonitor:
    """The module's :class:`LossMonitor` (made on first use, kept on the module)."""
    found = module.__dict__.get(LOSS_MONITOR)
    if found is None:
        found = LossMonitor(what, hint, **kwargs)
        module.__dict__[LOSS_MONITOR] = found  # the progress lines read it (splitinv.progress)
    return found


def _last_step(module: L.LightningModule | None, batch_idx: int | None) -> bool:
    """Whether this is the last training step of the epoch or of the fit (checked so nothing slips past)."""
    if module is None or module._trainer is None or batch_idx is None:
        return False
    trainer = module.trainer
    batches = trainer.num_training_batches
    if isinstance(batches, (int, float)) and math.isfinite(batches) and batch_idx + 1 >= batches:
        return True
    if trainer.max_steps is not None and trainer.max_steps > 0:
        pending = 1 if module.automatic_optimization else 0  # manual optimisation has stepped already
        return trainer.global_step + pending >= trainer.max_steps
    return False


def _log_host_values(
    module: L.LightningModule, values: dict[str, float], prog_bar: set[str], batch_size: int | None
) -> None:
    """Host values to the progress bar and callback metrics (as CPU tensors: Lightning reads them every
    step) and to the loggers (once, now: Lightning's own step logging would repeat them, stale, at every
    ``log_every_n_steps`` until the next check)."""
    named = {f"train/{k}": v for k, v in values.items()}
    for name, value in named.items():
        module.log(
            name,
            torch.tensor(value),
            on_step=True,
            on_epoch=False,
            prog_bar=name.removeprefix("train/") in prog_bar,
            logger=False,
            batch_size=batch_size,
        )
    trainer = module.trainer
    if not trainer.loggers:
        return
    connector = getattr(trainer, "_logger_connector", None)
    if connector is not None and hasattr(connector, "log_metrics"):
        connector.log_metrics(named)  # Lightning's own path: its step number, its "epoch" column
        return
    for logger in trainer.loggers:  # pragma: no cover - a Lightning without the connector
        logger.log_metrics(named, step=trainer.global_step)


# ------------------------------------------------------------------------------------------- precision


@functools.cache
def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles (Intel Sapphire Rapids and later): bf16 matrix units."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    if probe is not None:
        try:
            return bool(probe())
        except RuntimeError:  # pragma: no cover
            pass
    try:  # pragma: no cover - a torch without the probe
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # pragma: no cover
        return False
    return "amx_tile" in flags and "amx_bf16" in flags  # pragma: no cover


def cuda_has_bf16() -> bool:
    """Whether a CUDA GPU is there and computes in bf16 natively (Ampere and later)."""
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)


def resolve_precision(precision: Any, accelerator: Any = "auto") -> str | int:
    """A Lightning precision for ``precision`` on this machine: ``auto`` (or None) becomes ``bf16-mixed`` on
    a CUDA GPU with bf16 and on a CPU with AMX, ``32-true`` elsewhere; other values are returned as given.

    ``accelerator``: the trainer's (``cpu``, ``gpu``, ``cuda``, ``auto``, ...), which decides the device.
    """
    if precision is not None and str(precision) != "auto":
        return precision
    device = _device_kind(accelerator)
    if device == "cuda":
        return BF16 if cuda_has_bf16() else FP32
    if device == "cpu":
        return BF16 if cpu_has_amx() else FP32
    return FP32  # mps, tpu, ...: full precision


def _device_kind(accelerator: Any) -> str:
    """``cuda``, ``cpu`` or ``other``: where a trainer with ``accelerator`` runs (``auto``: CUDA if any)."""
    kind = str(accelerator).lower() if isinstance(accelerator, str) else type(accelerator).__name__.lower()
    if kind in ("gpu", "cuda") or "cuda" in kind or (kind == "auto" and torch.cuda.is_available()):
        return "cuda"
    if kind == "cpu" or "cpu" in kind or kind == "auto":
        return "cpu"
    return "other"


def cpu_has_avx512_bf16() -> bool:
    """Whether this CPU has AVX512-BF16 instructions (bf16 dot products, without AMX's matrix units)."""
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    try:
        return bool(probe()) if probe is not None else False
    except RuntimeError:  # pragma: no cover
        return False


def warn_slow_precision(precision: Any, accelerator: Any = "auto") -> None:
    """One warning when a bf16 precision was asked for explicitly (``bf16-mixed``, ``bf16-true``) and runs on
    a CPU without native bf16, decided as ``auto`` decides it (:func:`cpu_has_amx`). Measured: bf16 autocast
    was about 14x slower than fp32 on an AVX2-only CPU (pitfalls.md), and from 1.5x slower to 1.55x faster on
    AMD EPYCs with AVX512-BF16 but no AMX (README, "Precision and speed")."""
    if "bf16" not in str(precision).lower() or _device_kind(accelerator) != "cpu" or cpu_has_amx():
        return
    if cpu_has_avx512_bf16():
        cost = "from 1.5x slower to 1.5x faster than fp32 on such CPUs (AVX512-BF16 without AMX tiles)"
    else:
        cost = "about 14x slower than fp32 there (no bf16 instructions)"
    warnings.warn(
        f"trainer.precision={precision} on a CPU without native bf16 (no AMX tiles) runs {cost}: use "
        "trainer.precision=auto (bf16 only where the hardware has it) or 32-true.",
        UserWarning,
        stacklevel=3,
    )


# ---------------------------------------------------------------------------------------------- trainer


class Speed(L.Callback):
    """Memory layout and compilation for the networks a Lightning loop runs.

    ``channels_last``: 4-D weights in NHWC while fitting and predicting (convolutions then run NHWC),
    put back afterwards. ``compile``: ``nn.Module.compile`` on the module's trained networks while fitting
    (state_dict keys unchanged), undone afterwards.
    """

    def __init__(self, channels_last: bool = False, compile: bool = False) -> None:
        self.channels_last, self.compile = bool(channels_last), bool(compile)
        self._compiled: list[nn.Module] = []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.channels_last:
            pl_module.to(memory_format=torch.channels_last)
        if self.compile and stage == "fit":
            self._compiled = [m for m in pl_module.children() if _trains(m)]
            for m in self._compiled:
                m.compile()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.channels_last:
            pl_module.to(memory_format=torch.contiguous_format)
        for m in self._compiled:
            m._compiled_call_impl = None  # back to eager: later calls (inversion) take other shapes
        self._compiled = []


def _trains(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


# Lightning's console notices that say nothing about the run (matched at the start of the message). The
# bf16 notice says what the run computes in: shown, once per process (metrics.json records it too).
_DROPPED_NOTICES = re.compile(
    r"💡"  # advertising tips ("💡 Tip: ... litlogger")
    r"|GPU available: |TPU available: |HPU available: "
    r"|`Trainer\.fit` stopped: `max_(epochs|steps)=-?\d+` reached\."
    r"|`Trainer\(limit_\w+_batches=[\d.]+\)` was configured so"  # the validation split train-victim asks for
    r"|Loading `train_dataloader` to estimate number of stepping batches"  # the one-cycle schedule's length
)
_ONCE_NOTICES = re.compile(r"Using (16bit|bfloat16) Automatic Mixed Precision \(AMP\)|LOCAL_RANK: \d+ - ")
# Lightning's warnings that are not about the run: (message regex, category, module regex). The eval-mode
# notice: splitinv's modules keep frozen networks (a victim's blocks, a generator) in eval mode on purpose.
_QUIET_WARNINGS: tuple[tuple[str, type[Warning], str], ...] = (
    (
        r"Found \d+ module\(s\) in eval mode at the start of training",
        PossibleUserWarning,
        r"lightning\.pytorch\.",
    ),
    (
        r"The number of training batches \(\d+\) is smaller than the logging interval",
        PossibleUserWarning,
        r"lightning\.pytorch\.",
    ),
    (
        r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        FutureWarning,
        r"lightning\.pytorch\.utilities\._pytree",
    ),
)


class _LightningNotices(logging.Filter):
    """Drops Lightning's notices that are not about this run (:data:`_DROPPED_NOTICES`) and shows the ones
    that are (:data:`_ONCE_NOTICES`) once per process, not at every trainer."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.getMessage())
        if _DROPPED_NOTICES.match(message):
            return False
        if _ONCE_NOTICES.match(message):
            if message in self.seen:
                return False
            self.seen.add(message)
        return True


def _quiet_lightning() -> None:
    """Install the filters (idempotent: called for every trainer, since ``warnings.catch_warnings`` blocks,
    pytest's among them, drop warning filters added inside them)."""
    for name in (
        "lightning.pytorch.utilities.rank_zero",
        "lightning.fabric.utilities.rank_zero",
        "lightning.pytorch",
        "lightning.fabric",
    ):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _LightningNotices) for f in logger.filters):
            logger.addFilter(_LightningNotices())
    for message, category, module in _QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)


def _terminal() -> bool:
    """Whether Lightning's bar (written to stdout) and splitinv's (stderr) are both seen live."""
    return interactive(sys.stdout) and interactive(sys.stderr)


def build_trainer(
    precision: Any = "auto",
    channels_last: bool = False,
    compile: bool = False,
    callbacks: Iterable[L.Callback] | None = None,
    **kwargs: Any,
) -> L.Trainer:
    """A Lightning Trainer (every other keyword is the Trainer's) with ``precision`` resolved for this
    machine (:func:`resolve_precision`) and :class:`Speed` added when ``channels_last`` or ``compile``.

    With ``enable_progress_bar`` (and no progress bar among ``callbacks``): tqdm's bar when stdout and
    stderr are terminals, :class:`~splitinv.progress.LogLineProgress`'s lines on stderr otherwise. Lightning's
    notices that are not about the run are filtered (:func:`_quiet_lightning`)."""
    _quiet_lightning()
    if (kwargs.get("max_steps") or -1) > 0:  # "stop after that many steps instead": epochs no longer decide
        kwargs["max_epochs"] = -1
    extra = list(callbacks or [])
    if kwargs.get("enable_progress_bar") in (None, True) and not any(
        isinstance(c, ProgressBar) for c in extra
    ):
        # not Lightning's default (Rich) bar: it writes its frames into a redirected stdout, and while it is
        # live it captures stderr and prints every frame of the bars of loops run inside predict (per-image
        # attacks) as a line of its own. tqdm's bar (nested bars work) on a terminal, log lines elsewhere.
        extra.append(TQDMProgressBar() if _terminal() else LogLineProgress())
    if channels_last or compile:
        extra.append(Speed(channels_last=channels_last, compile=compile))
    resolved = resolve_precision(precision, kwargs.get("accelerator", "auto"))
    warn_slow_precision(resolved, kwargs.get("accelerator", "auto"))
    return L.Trainer(precision=resolved, callbacks=extra or None, **kwargs)
