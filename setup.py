"""Packages are found, not listed: every package under splitinv/, plus conf/ installed as splitinv.conf (its
place is set in pyproject.toml's package-dir; `packages.find` cannot rename a folder, hence this file)."""

from setuptools import find_packages, setup

setup(
    packages=sorted(
        {*find_packages(include=["splitinv", "splitinv.*"], exclude=["splitinv.conf*"]), "splitinv.conf"}
    )
)
