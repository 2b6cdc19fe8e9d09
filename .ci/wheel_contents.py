"""Compare a built wheel's files with the tracked files under splitinv/ and conf/ (conf/ installs as
splitinv/conf/): every tracked file must be in the wheel, and the wheel must hold nothing else.
Usage: python .ci/wheel_contents.py REPO WHEEL. Exits 1 listing the differences."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path


def tracked(repo: Path) -> set[str]:
    """The tracked files under splitinv/ and conf/, as their paths inside the installed package."""
    out = subprocess.run(
        ["git", "-C", str(repo), "ls-files", "splitinv", "conf"], capture_output=True, text=True, check=True
    ).stdout.split()
    return {("splitinv/" + p) if p.startswith("conf/") else p for p in out}


def in_wheel(wheel: Path) -> set[str]:
    """The wheel's files outside its .dist-info folder."""
    with zipfile.ZipFile(wheel) as z:
        return {n for n in z.namelist() if not n.split("/", 1)[0].endswith(".dist-info")}


def main() -> None:
    repo, wheel = Path(sys.argv[1]), Path(sys.argv[2])
    want, have = tracked(repo), in_wheel(wheel)
    missing, extra = sorted(want - have), sorted(have - want)
    for path in missing:
        print(f"missing from the wheel: {path}")
    for path in extra:
        print(f"in the wheel but not tracked: {path}")
    if missing or extra or not want:
        sys.exit(1)
    print(f"{wheel.name}: all {len(want)} tracked files under splitinv/ and conf/, nothing else")


if __name__ == "__main__":
    main()
