"""What every benchmark here shares: sides run in alternating order each round after a warm-up of each, the
median and spread over rounds, and the machine's load, printed beside the numbers."""

from __future__ import annotations

import logging
import os
import platform
import statistics
from collections.abc import Callable, Sequence

import torch


def machine(device: str) -> str:
    """One line: CPU or GPU, threads, torch, and the load averages (1, 5, 15 min) right now."""
    load = os.getloadavg()
    where = platform.processor() or platform.machine()
    if device.startswith("cuda") and torch.cuda.is_available():
        where = torch.cuda.get_device_name(torch.device(device))
    return (
        f"{where}, {torch.get_num_threads()} threads, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )


def alternate(
    sides: dict[str, Callable[[], float]], rounds: int, warmup: Callable[[str], object] | None = None
) -> dict[str, list[float]]:
    """Each side's value per round, the order of the sides reversed every other round (the side that runs
    first after an idle spell, or beside a newly started job, is slower), after one warm-up call of every
    side (``warmup(name)``, default: the side itself)."""
    names = list(sides)
    for name in names:  # first calls allocate, pick kernels, compile
        warmup(name) if warmup is not None else sides[name]()
    runs: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            runs[name].append(sides[name]())
    return runs


def spread(values: Sequence[float], digits: int = 2) -> str:
    """``median (min-max, n)``."""
    return (
        f"{statistics.median(values):.{digits}f} (min {min(values):.{digits}f}, "
        f"max {max(values):.{digits}f}, n {len(values)})"
    )


def ratios(a: Sequence[float], b: Sequence[float]) -> list[float]:
    """Per-round a / b (the two sides of one round ran back to back, under the same load)."""
    return [x / y for x, y in zip(a, b, strict=True)]


def autocast(device: str, precision: str) -> torch.autocast:
    """The autocast context a bare loop uses for a Lightning precision (bf16-mixed, 16-mixed, 32-true)."""
    kind = "cuda" if device.startswith("cuda") else "cpu"
    if precision == "bf16-mixed":
        return torch.autocast(kind, dtype=torch.bfloat16)
    if precision == "16-mixed":
        return torch.autocast(kind, dtype=torch.float16)
    return torch.autocast(kind, enabled=False)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def quiet() -> None:
    """No Lightning banners between the numbers."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
