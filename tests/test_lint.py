"""The repository passes ``ruff check`` with the configuration in pyproject (``[tool.ruff]``)."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _ruff() -> list[str]:
    if importlib.util.find_spec("ruff") is not None:
        return [sys.executable, "-m", "ruff"]
    exe = shutil.which("ruff")
    if exe is None:
        pytest.skip("ruff is not installed (it comes with the test extra: pip install -e '.[test]')")
    return [exe]


def ruff_violations(*args: str, stdin: str | None = None) -> list[dict]:
    """``ruff check`` with pyproject's configuration (the repository by default), as JSON records."""
    cmd = _ruff() + ["check", "--no-cache", "--output-format", "json", "--exit-zero", *(args or ["."])]
    proc = subprocess.run(cmd, cwd=ROOT, input=stdin, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr}")
    return json.loads(proc.stdout)


def _path(v: dict) -> str:
    return pathlib.Path(v["filename"]).resolve().relative_to(ROOT).as_posix()


def test_ruff_check_passes():
    found = [f"{_path(v)}:{v['location']['row']}: {v['code']} {v['message']}" for v in ruff_violations()]
    assert not found, "ruff check (configuration in pyproject.toml):\n" + "\n".join(found)


def test_the_check_sees_a_violation():
    """The configuration is active where the tests live: an unused import and a 151-character line are reported."""
    source = "import os\n\nx = " + "1" * 147 + "\n"
    found = ruff_violations("--stdin-filename", "tests/_probe.py", "-", stdin=source)
    assert sorted(v["code"] for v in found) == ["E501", "F401"]


def test_pyproject_configures_ruff_and_the_test_extra_installs_it():
    text = (ROOT / "pyproject.toml").read_text()
    assert "[tool.ruff]" in text and "[tool.ruff.lint]" in text
    try:
        import tomllib
    except ImportError:  # pragma: no cover - python 3.10
        tomllib = pytest.importorskip("tomli")
    cfg = tomllib.loads(text)
    assert any(req.split(">")[0].split("=")[0].strip() == "ruff" for req in cfg["project"]["optional-dependencies"]["test"])
    assert cfg["tool"]["ruff"]["lint"]["select"]
