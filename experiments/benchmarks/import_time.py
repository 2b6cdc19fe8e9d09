"""Start-up time: how long `import splitinv` and the `splitinv` command's help take, against Python's floor.

Each command runs in a fresh subprocess (nothing cached in memory between runs; the OS file cache is warmed
by one untimed run of each first), several times in alternation; the median wall-clock seconds of each are
printed. `splitinv --help` and `splitinv layers --help` run the installed console script, as a user does.
Target: both help commands under 2 s (they import neither torch, timm, Lightning nor W&B).

    python experiments/benchmarks/import_time.py [--runs 7]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

TARGET_S = 2.0


def commands() -> dict[str, list[str]]:
    script = shutil.which("splitinv") or str(Path(sys.executable).parent / "splitinv")
    return {
        "python -c pass": [sys.executable, "-c", "pass"],
        'python -c "import splitinv"': [sys.executable, "-c", "import splitinv"],
        "splitinv --help": [script, "--help"],
        "splitinv layers --help": [script, "layers", "--help"],
    }


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="timed runs of each command (default 7)")
    args = parser.parse_args()
    todo = commands()
    for command in todo.values():  # warm the file cache; fail early on a broken command
        timed(command)
    times: dict[str, list[float]] = {name: [] for name in todo}
    names = list(todo)
    for r in range(args.runs):  # alternate, so that load on a shared machine hits all alike
        for name in names if r % 2 == 0 else names[::-1]:  # and no command always runs first
            times[name].append(timed(todo[name]))
    width = max(len(name) for name in todo)
    load = os.getloadavg()
    print(
        f"median of {args.runs} runs each, seconds (min-max); load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    for name, values in times.items():
        print(f"{name:<{width}}  {statistics.median(values):.3f}  ({min(values):.3f}-{max(values):.3f})")
    slowest = max(statistics.median(times[n]) for n in ("splitinv --help", "splitinv layers --help"))
    verdict = "met" if slowest < TARGET_S else "MISSED"
    print(f"target: splitinv --help and splitinv layers --help < {TARGET_S:.0f} s: {verdict}")


if __name__ == "__main__":
    main()
