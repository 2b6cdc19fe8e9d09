"""The skeleton every command shares: a thin ``@hydra.main`` around a plain task function.

``hydra_command(...)`` gives a console entry point that refuses unknown config options in one line, runs
the task, prints its one-line summary, and on failure writes ``failed.json`` into the job folder, prints a
:class:`SplitinvError` as one line (exit 2; a multirun logs it and goes on with the other jobs), and always
closes this job's W&B run so each job of a sweep gets its own.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from splitinv.config import check_group_choices
from splitinv.errors import SplitinvError

log = logging.getLogger(__name__)

Task = Callable[[DictConfig], dict[str, Any]]


def run_task(command: str, task: Task, cfg: DictConfig, multirun: bool) -> dict[str, Any] | None:
    """Run ``task(cfg)``; on failure record ``failed.json`` and report it as the command's rules say."""
    from splitinv import results

    try:
        return task(cfg)
    except Exception as err:
        output_dir = cfg.get("paths", {}).get("output_dir")
        if output_dir:
            results.write_failure(Path(output_dir), err)
        if isinstance(err, SplitinvError):  # one line, no traceback: the message says what to change
            print(f"{command}: error: {err}", file=sys.stderr)
            if not multirun:
                sys.exit(2)
        elif not multirun:
            raise
        else:
            log.error("job failed (%s: %s); the sweep goes on", type(err).__name__, err)
        return None
    finally:
        results.finish_wandb()


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
        if record is not None:
            print(summary(record, cfg), flush=True)

    def main(argv: Sequence[str] | None = None) -> None:
        args = list(sys.argv[1:] if argv is None else argv)
        try:
            check_group_choices(args)
            if prepare_argv is not None:
                args = prepare_argv(args)
        except SplitinvError as err:
            print(f"{command}: error: {err}", file=sys.stderr)
            sys.exit(2)
        sys.argv[1:] = args
        _hydra_main()

    return main
