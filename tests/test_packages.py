"""pyproject.toml lists every package of optc: setuptools maps ``optc`` to the repository root
and installs only the packages listed, so a plain (non-editable) install would miss one left out."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["package-dir"] == {"optc": "."}
    found = set()
    for here, dirs, files in os.walk(ROOT):
        rel = Path(here).relative_to(ROOT).parts
        dirs[:] = [d for d in dirs if rel or (d not in ("tests", "build") and not d.startswith("."))]
        if "__init__.py" in files:
            found.add(".".join(["optc", *rel]))
    assert sorted(found) == sorted(config["packages"])
