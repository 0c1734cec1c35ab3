"""One version: pyproject's, read from the installed distribution by ``krylon.__version__`` and the HDF5 writer."""

from __future__ import annotations

import importlib.metadata
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

import krylon
from krylon.datasets import hdf5, read_attrs, write_dataset

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _pyproject_version() -> str:
    """``[project] version`` read from the file itself (an independent reference to the metadata)."""
    text = (ROOT / "pyproject.toml").read_text()
    project = re.search(r"^\[project\]\s*$(.*?)(?=^\[)", text, re.S | re.M).group(1)
    return re.search(r'^version\s*=\s*"([^"]+)"', project, re.M).group(1)


def test_version_is_pyprojects():
    assert krylon.__version__ == importlib.metadata.version("krylon") == _pyproject_version()


def test_datasets_record_the_same_version(tmp_path):
    path = write_dataset(tmp_path / "v.h5", {"a": np.zeros((2, 3))})
    assert read_attrs(path)["krylon_version"] == krylon.__version__


def test_version_without_an_installed_distribution(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    assert hdf5._version() == krylon._installed_version() == "0+unknown"


def test_version_is_read_on_first_use_only():
    """``import krylon`` stays light: importlib.metadata loads when ``__version__`` is asked for."""
    code = ("import sys, krylon; before = 'importlib.metadata' in sys.modules; v = krylon.__version__; "
            "from krylon import __version__ as w; print(before, v == w, 'importlib.metadata' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True", "True"]


def test_dead_helper_is_gone():
    assert not hasattr(krylon, "torch_ones")
    assert "torch_ones" not in dir(krylon)
    with pytest.raises(AttributeError):
        krylon.torch_ones  # noqa: B018


def test_package_docstring_example_runs():
    import doctest

    result = doctest.testmod(krylon)
    assert result.attempted > 0 and result.failed == 0
