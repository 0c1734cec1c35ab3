"""Packaging: every subpackage is declared, imports are light, the public names exist."""

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _declared_packages():
    try:
        import tomllib
    except ImportError:  # pragma: no cover - python 3.10
        tomllib = pytest.importorskip("tomli")
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    tool = cfg["tool"]["setuptools"]
    return set(tool["packages"]), tool["package-dir"]


def test_every_package_folder_is_declared():
    packages, package_dir = _declared_packages()
    folders = {p.parent for p in ROOT.rglob("__init__.py") if ".venv" not in p.parts and "tests" not in p.parts
               and "build" not in p.parts and not any(part.startswith(".") for part in p.relative_to(ROOT).parts)}
    declared_folders = {(ROOT / package_dir[name]).resolve() for name in packages}
    missing = {str(f.relative_to(ROOT)) for f in folders} - {str(f.relative_to(ROOT)) for f in declared_folders}
    assert not missing, f"folders with __init__.py not declared in pyproject: {sorted(missing)}"
    assert packages == set(package_dir), "packages and package-dir must list the same names"


def test_import_krylon_is_light():
    code = "import sys, krylon; print('torch' in sys.modules, 'scipy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"], "import krylon must not import torch or scipy eagerly"


def test_public_api_names():
    import krylon
    from krylon.kernels import backend, linalg, stencil  # noqa: F401
    from krylon.operators import Diffusion, Laplacian, LinearOperator, aslinearoperator, dottest  # noqa: F401
    from krylon.solvers import CG, CGLS, GMRES, MINRES, SolveResult, cg, gmres, minres  # noqa: F401

    assert krylon.CG is CG and krylon.Laplacian is Laplacian
    with pytest.raises(AttributeError):
        krylon.not_a_name  # noqa: B018


def test_code_imports_siblings_relatively():
    """Code inside the subpackages must never import its siblings as top-level modules."""
    bad = []
    for folder in ("kernels", "operators", "solvers", "datasets", "krylon"):
        for f in (ROOT / folder).rglob("*.py"):
            for line in f.read_text().splitlines():
                s = line.strip()
                if s.startswith(("from kernels", "from operators", "from solvers", "from datasets",
                                 "import kernels", "import operators", "import solvers", "import datasets")):
                    bad.append(f"{f.relative_to(ROOT)}: {s}")
    assert not bad, bad


def test_the_scipy_dropins_are_not_shadowed_by_the_solver_modules_of_the_same_name():
    """``solvers/cg.py`` etc. share their names with the scipy-style functions; the package attribute must stay the
    function whatever order the imports run in (importing a submodule fresh would rebind the attribute)."""
    import krylon.solvers as solvers
    from krylon.solvers import compat

    for name in ("cg", "minres", "gmres"):
        assert getattr(solvers, name) is getattr(compat, name)
        assert callable(getattr(solvers, name)) and not isinstance(getattr(solvers, name), type(solvers))
