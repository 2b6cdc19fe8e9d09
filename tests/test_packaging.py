"""One version everywhere (the package, CITATION.cff, CHANGELOG.md, results files), the licence pyproject
declares, and the packaging settings that keep the wheel whole (.ci/wheel_smoke.sh builds and checks the
wheel itself; this is the fast guard)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import splitinv
from splitinv._version import __version__

ROOT = Path(__file__).resolve().parents[1]
tomllib = pytest.importorskip("tomllib")  # Python 3.11+


def test_one_version_in_package_citation_and_changelog() -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+", __version__)
    assert splitinv.__version__ == __version__
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert citation["version"] == __version__ and citation["cff-version"] == "1.2.0"
    assert citation["license"] == "MIT" and citation["title"] and citation["authors"]
    newest = re.search(r"^## (\d+\.\d+\.\d+) - (\d{4}-\d\d-\d\d)$", (ROOT / "CHANGELOG.md").read_text(), re.M)
    assert newest and newest.group(1) == __version__
    assert str(citation["date-released"]) == newest.group(2)


def test_results_record_the_version() -> None:
    from splitinv.config import versions

    assert versions()["splitinv"] == __version__  # build_record writes versions() into every metrics.json


def test_pyproject_reads_the_version_and_declares_the_licence_file() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["dynamic"] == ["version"] and "version" not in project["project"]
    attr = project["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    assert attr == "splitinv._version.__version__"
    assert project["project"]["license"] == "MIT"  # SPDX, not the deprecated table
    assert "LICENSE" in project["project"]["license-files"]
    licence = (ROOT / "LICENSE").read_text()
    assert licence.startswith("MIT License\n") and "Permission is hereby granted, free of charge" in licence


def test_setup_finds_every_package_including_nets() -> None:
    """The packages setup.py hands setuptools: every folder under splitinv/ with an __init__.py (the list
    that once lacked splitinv.nets), and conf/ as splitinv.conf."""
    code = (
        "import setuptools; setuptools.setup = lambda **kw: print(sorted(kw['packages'])); "
        "exec(open('setup.py').read())"
    )
    printed = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    packages = set(eval(printed.stdout))
    on_disk = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for p in (ROOT / "splitinv").rglob("__init__.py")
        if not p.parent.is_symlink() and "conf" not in p.parent.relative_to(ROOT).parts
    }
    assert "splitinv.nets" in on_disk and on_disk | {"splitinv.conf"} == packages
