"""The skeleton every command shares: a thin ``@hydra.main`` around a plain task function.

``hydra_command(...)`` gives a console entry point that refuses unknown config options in one line, runs
the task, prints its one-line summary, and on failure writes ``failed.json`` into the job folder, prints a
:class:`SplitinvError` as one line (exit 2; a multirun logs it and goes on with the other jobs), and always
closes this job's W&B run so each job of a sweep gets its own.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

from omegaconf import DictConfig

from splitinv.config import check_group_choices
from splitinv.errors import ResultsExist, SplitinvError, one_line_warnings, os_error_line

log = logging.getLogger(__name__)

Task = Callable[[DictConfig], dict[str, Any]]


class Terminated(BaseException):
    """SIGTERM reached a job (how SLURM preempts and times out). A BaseException, so that no library's
    ``except Exception`` swallows it: the job records it in failed.json and the command exits 143."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated(f"terminated by signal {signum} (SIGTERM): the job did not finish; rerun it to resume")


@contextlib.contextmanager
def _sigterm_records_failure() -> Any:
    """Turn SIGTERM into :class:`Terminated` while a job runs, unless someone else (submitit's requeue on
    preemption) already handles it."""
    try:
        installed = signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None)
        previous = signal.signal(signal.SIGTERM, _on_sigterm) if installed else None
    except ValueError:  # not the main thread: leave signals alone
        installed, previous = False, None
    try:
        yield
    finally:
        if installed:
            signal.signal(signal.SIGTERM, previous)


class WandbRuns:
    """Offline W&B runs this command made: listed once at the end (W&B's own console output is silenced by
    ``WANDB_SILENT``: a banner and a summary per job are noise in a sweep's log)."""

    offline: ClassVar[list[str]] = []

    @classmethod
    def note(cls, output_dir: Any, since: float) -> None:
        """Record the offline runs written under ``output_dir``/wandb since ``since`` (a job's start)."""
        if not output_dir:
            return
        with contextlib.suppress(OSError):  # the hint is a courtesy: never fail a job over it
            found = Path(str(output_dir), "wandb").glob("offline-run-*")
            cls.offline.extend(sorted(str(p) for p in found if p.is_dir() and p.stat().st_mtime >= since - 1))

    @classmethod
    def hint(cls) -> str | None:
        if not cls.offline:
            return None
        n = len(cls.offline)
        where = cls.offline[0] if n == 1 else f"{n} runs, e.g. {cls.offline[0]}"
        return f"W&B: offline run{'s' if n > 1 else ''} saved ({where}); upload with `wandb sync DIR`"


def global_rank() -> int:
    """This process's rank in a distributed job (0 alone): Lightning's once it has set it (its strategy does
    at launch), else the launcher's environment (``RANK``, or SLURM's ``SLURM_PROCID``)."""
    rank_zero = sys.modules.get("lightning.fabric.utilities.rank_zero")
    rank = getattr(getattr(rank_zero, "rank_zero_only", None), "rank", None)
    if rank is not None:
        return int(rank)
    for name in ("RANK", "SLURM_PROCID"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def _finish_wandb(cfg: DictConfig, since: float) -> None:
    from splitinv import results

    results.finish_wandb()
    WandbRuns.note(cfg.get("paths", {}).get("output_dir"), since)


def run_task(command: str, task: Task, cfg: DictConfig, multirun: bool) -> dict[str, Any] | None:
    """Run ``task(cfg)``; on failure record ``failed.json`` and report it as the command's rules say.

    SIGTERM during the job records ``failed.json`` (terminated) and exits 143, in a sweep too: a preempted
    sweep must not look finished. A rerun resumes (per-image attacks keep their finished images)."""
    from splitinv import results

    start = time.time()
    try:
        with _sigterm_records_failure():
            return task(cfg)
    except Terminated as err:
        output_dir = cfg.get("paths", {}).get("output_dir")
        if output_dir:
            results.write_failure(Path(output_dir), RuntimeError(str(err)))
        print(f"{command}: error: {err}", file=sys.stderr, flush=True)
        _finish_wandb(cfg, start)
        sys.stdout.flush()
        os._exit(143)  # 128 + SIGTERM, at once: the launcher must not start the next job
    except Exception as err:
        output_dir = cfg.get("paths", {}).get("output_dir")
        if output_dir and not isinstance(err, ResultsExist):  # never touch another config's results
            results.write_failure(Path(output_dir), err)
        SweepStatus.failed.append(str(output_dir or "?"))  # in-process jobs; on_multirun_end adds the rest
        if isinstance(err, (SplitinvError, OSError)):  # one line, no traceback: what to change
            line = os_error_line(err) if isinstance(err, OSError) else str(err)
            print(f"{command}: error: {line}", file=sys.stderr)
            if not multirun:
                sys.exit(2)
        elif not multirun:
            raise
        else:
            log.error("job failed (%s: %s); the sweep goes on", type(err).__name__, err)
        return None
    finally:
        _finish_wandb(cfg, start)


# Hydra flags that take the next argument as their value
_FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
                     "--config-dir", "-cd", "--experimental-rerun"}  # fmt: skip


def check_overrides(args: Sequence[str]) -> None:
    """One-line errors for command lines Hydra would answer with a traceback: a value with an unquoted space
    (``data.root=/my dir``), and a run or sweep folder that cannot be created."""
    previous = ""
    for arg in args:
        if "=" in arg and previous not in _FLAGS_WITH_VALUE and not arg.startswith(("-", "~")):
            check_grammar(arg)
        if previous in _FLAGS_WITH_VALUE or arg.startswith(("-", "~")) or "=" in arg:  # ~key: delete key
            previous = arg
            continue
        if "=" in previous and not previous.startswith("-"):
            raise SplitinvError(
                f"'{arg}' is not an override (no '='): a value with a space must be quoted as a whole, "
                f"e.g. '{previous} {arg}'."
            )
        previous = arg
    for arg in args:
        key, _, value = arg.lstrip("+").partition("=")
        if key in ("hydra.run.dir", "hydra.sweep.dir") and value and "${" not in value:
            _check_creatable(Path(value).expanduser(), key)


def hydra_quote(value: str) -> str:
    """``value`` as Hydra's override grammar reads it back unchanged: as it is where it parses as one plain
    value, else in single quotes (a path with spaces and brackets, ``/my data (copy)``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        (parsed,) = OverridesParser.create().parse_overrides([f"k={value}"])
        if parsed.value() == value:
            return value
    except Exception:  # the grammar's own errors: quote it
        pass
    body = value.replace("'", "\\'")  # backslashes stay literal, except a trailing run (before the quote)
    stripped = body.rstrip("\\")
    return "'" + stripped + "\\" * (2 * (len(body) - len(stripped))) + "'"


def check_grammar(arg: str) -> None:
    """A one-line error for an override Hydra's grammar rejects (its lexer's message is a multi-line
    traceback-like block): ``data.root=/my data (copy)`` must be quoted inside, as ``data.root='...'``."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        OverridesParser.create().parse_overrides([arg])
    except OverrideParseException as err:
        key, _, value = arg.partition("=")
        why = " ".join(str(err).split("See https")[0].split())
        raise SplitinvError(
            f"'{arg}' does not parse as an override ({why}): quote the value inside the argument, e.g. "
            f'"{key}={hydra_quote(value)}".'
        ) from None


def _check_creatable(path: Path, key: str) -> None:
    """A folder ``path`` can be created (or exists as a folder) and written: else a one-line error."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise SplitinvError(f"{key}={path}: {probe} is a file, not a folder: choose another {key}.")
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        raise SplitinvError(f"{key}={path}: {probe} is not writable: choose a writable {key}.")


def check_launcher(config_name: str, args: Sequence[str]) -> None:
    """``hydra/launcher=slurm``: resolve its counts now (one job of the sweep, each swept key at its first
    value), so a count SLURM cannot take (``trainer.devices=-1``) is a one-line error, not Hydra's traceback
    from inside the launcher."""
    if not any(a.lstrip("+").startswith("hydra/launcher=slurm") for a in args):
        return
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf
    from omegaconf.errors import InterpolationResolutionError

    from splitinv.config import compose

    overrides = [a for a, before in zip(args, ["", *args], strict=False) if not a.startswith("-")
                 and before not in _FLAGS_WITH_VALUE]  # fmt: skip
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:  # a malformed override: Hydra itself reports it
        return
    single = []
    for override in parsed:
        line = override.input_line or ""
        if override.is_sweep_override():
            line = f"{override.get_key_element()}={next(iter(override.sweep_string_iterator()))}"
        single.append(line)
    cfg = compose(single, config_name=config_name, return_hydra_config=True)
    try:
        OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    except InterpolationResolutionError as err:
        cause: BaseException | None = err
        while cause is not None and not isinstance(cause, SplitinvError):  # OmegaConf drops __cause__
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            raise SplitinvError(str(cause)) from None
        raise


class SweepStatus:
    """A Hydra callback (``hydra.callbacks`` in conf/hydra/default.yaml): after a multirun, in the launching
    process whatever the launcher, count the jobs of this sweep that wrote ``failed.json`` so the command can
    exit non-zero (scripts and CI can tell), after the other jobs finished."""

    failed: ClassVar[list[str]] = []

    def __init__(self) -> None:
        self.start = 0.0

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.start = time.time()
        SweepStatus.failed.clear()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from splitinv.results import FAILED_FILE

        root = Path(str(config.hydra.sweep.dir))
        if root.is_dir():  # jobs in other processes (joblib, submitit) leave their failed.json
            written = {str(p.parent) for p in root.rglob(FAILED_FILE) if p.stat().st_mtime >= self.start - 1}
            SweepStatus.failed[:] = sorted(written | set(SweepStatus.failed))

    # the other hooks Hydra calls
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None: ...
    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None: ...
    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None: ...
    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None: ...


def hydra_command(
    command: str,
    config_name: str,
    task: Task,
    summary: Callable[[dict[str, Any], DictConfig], str],
    prepare_argv: Callable[[list[str]], list[str]] | None = None,
) -> Callable[[], None]:
    """A console entry point running ``task`` on the composed ``config_name`` (see the module docstring).

    ``summary(record, cfg)`` is the line printed after a successful job; ``prepare_argv`` may rewrite the
    command line first (``splitinv-run``'s ``cut=@stages``).
    """
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    @hydra.main(version_base="1.3", config_path="pkg://splitinv.conf", config_name=config_name)
    def _hydra_main(cfg: DictConfig) -> None:
        multirun = HydraConfig.get().mode == RunMode.MULTIRUN
        record = run_task(command, task, cfg, multirun)
        if record is not None and global_rank() == 0:  # one summary per job, not one per DDP rank
            print(summary(record, cfg), flush=True)

    def main(argv: Sequence[str] | None = None) -> None:
        args = list(sys.argv[1:] if argv is None else argv)
        try:
            check_overrides(args)
            check_group_choices(args)
            check_launcher(config_name, args)
            if prepare_argv is not None:
                args = prepare_argv(args)
        except SplitinvError as err:
            print(f"{command}: error: {err}", file=sys.stderr)
            sys.exit(2)
        sys.argv[1:] = args
        SweepStatus.failed.clear()
        WandbRuns.offline.clear()
        os.environ.setdefault("WANDB_SILENT", "true")  # W&B's banners and summaries: see WandbRuns
        shown = warnings.showwarning
        one_line_warnings(command)
        try:
            _hydra_main()
        finally:
            warnings.showwarning = shown  # in-process callers (tests, notebooks) get theirs back
        if hint := WandbRuns.hint():
            print(hint, file=sys.stderr, flush=True)
        if SweepStatus.failed:  # a multirun in which jobs failed: the others finished, the exit says so
            print(
                f"{command}: {len(SweepStatus.failed)} job(s) failed (failed.json in "
                f"{', '.join(SweepStatus.failed[:5])}{' ...' if len(SweepStatus.failed) > 5 else ''})",
                file=sys.stderr,
            )
            sys.exit(1)

    return main
