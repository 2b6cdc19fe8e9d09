"""splitinv's version: the one place it is written (pyproject.toml reads it; CITATION.cff and CHANGELOG.md
must name it, tests/test_packaging.py checks). Semantic versioning, see CHANGELOG.md."""

__version__ = "0.3.0"
