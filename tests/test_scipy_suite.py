"""scipy's own iterative-solver tests, run against krylon's drop-ins ``krylon.solvers.cg / gmres / minres``.

The test file ships inside the installed scipy (``scipy/sparse/linalg/_isolve/tests/test_iterative.py``);
nothing of it is copied here.  It is loaded at run time with its one import of the solvers,
``from scipy.sparse.linalg._isolve import (bicg, ..., tfqmr)``, pointed at a module holding krylon's
``cg``, ``gmres`` and ``minres``; everything else it imports (``LinearOperator``, ``dia_array``...) is
scipy's, as a user's code would pass it.  Its tests are then collected from this module.

scipy also tests solvers that krylon does not provide (bicg, bicgstab, cgs, gcrotmk, lgmres, qmr,
tfqmr): their cases are not generated (the ``solver`` and ``case`` fixtures are narrowed to krylon's
three), and the tests written for one of them alone are skipped with the reason below.  Every other
case must pass.
"""

from __future__ import annotations

import ast
import os
import sys
import types
import warnings

import pytest

import krylon.solvers as ks

scipy = pytest.importorskip("scipy")

KRYLON = {"cg": ks.cg, "gmres": ks.gmres, "minres": ks.minres}
SCIPY_ONLY = ("bicg", "bicgstab", "cgs", "gcrotmk", "lgmres", "qmr", "tfqmr")
SOLVERS_MODULE = "scipy.sparse.linalg._isolve"
TARGET = "_krylon_scipy_suite_solvers"  # the stand-in for SOLVERS_MODULE, only while the file is loaded
# tests of scipy's file that exercise a solver krylon does not have, and nothing else
ONLY_SCIPY_SOLVERS = {
    "test_show": "exercises tfqmr(show=True) only; krylon has no tfqmr",
    "TestQMR": "exercises qmr's left/right preconditioners only; krylon has no qmr",
}


def _missing(name):
    def solver(*args, **kwargs):
        pytest.skip(f"krylon has no {name}")

    solver.__name__ = solver.__qualname__ = name
    return solver


def _suite_path() -> str:
    path = os.path.join(os.path.dirname(scipy.__file__), "sparse", "linalg", "_isolve", "tests", "test_iterative.py")
    if not os.path.exists(path):
        pytest.skip(f"scipy {scipy.__version__} does not ship its tests ({path} is missing)", allow_module_level=True)
    return path


def load_suite(path: str) -> types.ModuleType:
    """scipy's test module, its ``from scipy.sparse.linalg._isolve import ...`` retargeted at krylon."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=path)
    retargeted = 0
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == SOLVERS_MODULE:
            node.module = TARGET
            retargeted += 1
    if retargeted != 1:
        # scipy reorganised its test file: fail loudly instead of silently testing scipy against itself
        raise RuntimeError(f"expected one import from {SOLVERS_MODULE} in {path}, found {retargeted}")
    solvers = types.ModuleType(TARGET)
    for name in SCIPY_ONLY:
        setattr(solvers, name, _missing(name))
    for name, fn in KRYLON.items():
        setattr(solvers, name, fn)
    module = types.ModuleType("_krylon_scipy_test_iterative")
    module.__file__ = path
    sys.modules[TARGET] = solvers
    try:
        with warnings.catch_warnings():
            # scipy marks slow tests for its pytest-fail-slow plugin, which krylon does not use
            warnings.filterwarnings("ignore", r"Unknown pytest\.mark\.fail_slow", pytest.PytestUnknownMarkWarning)
            exec(compile(tree, path, "exec"), module.__dict__)
    finally:
        del sys.modules[TARGET]
    return module


suite = load_suite(_suite_path())
_ours = set(KRYLON.values())

# every test function and class of scipy's file, collected as if defined here
for _name, _obj in vars(suite).items():
    if _name.startswith(("test_", "Test")):
        if _name in ONLY_SCIPY_SOLVERS:
            _obj = pytest.mark.skip(reason=ONLY_SCIPY_SOLVERS[_name])(_obj)
        globals()[_name] = _obj


# the solver-parametrized fixtures and marks, narrowed to krylon's solvers (the other solvers' cases are deselected)
@pytest.fixture(params=[s for s in suite._SOLVERS if s in _ours], ids=lambda s: s.__name__, scope="session")
def solver(request):
    return request.param


_cases = [c for c in suite.cases if c.solver in _ours]


@pytest.fixture(params=_cases, ids=[c.name for c in _cases], scope="module")
def case(request):
    return request.param


def _narrow_solver_parametrize(fn):
    marks = []
    for mark in getattr(fn, "pytestmark", []):
        if mark.name == "parametrize" and mark.args[0] == "solver":
            mark = pytest.mark.parametrize("solver", [s for s in mark.args[1] if s in _ours],
                                           ids=lambda s: s.__name__).mark
        marks.append(mark)
    fn.pytestmark = marks


for _name in list(globals()):
    if _name.startswith("test_") and callable(globals()[_name]):
        _narrow_solver_parametrize(globals()[_name])

# test_precond_inverse loops over _SOLVERS itself
suite._SOLVERS = [s for s in suite._SOLVERS if s in _ours]


def test_the_suite_is_scipys_and_aimed_at_krylon():
    """The loaded file is scipy's, its solvers are krylon's, and scipy-only solvers are stubs."""
    assert suite.__file__.startswith(os.path.dirname(scipy.__file__))
    assert suite.cg is ks.cg and suite.gmres is ks.gmres and suite.minres is ks.minres
    assert {s.__name__ for s in suite._SOLVERS} == set(KRYLON)
    assert {c.solver.__name__ for c in _cases} == set(KRYLON)
    # every scipy problem case, for each of krylon's solvers that the case does not skip
    expected = sum(1 for c in suite.IterativeParams().cases for s in KRYLON.values() if s not in c.skip)
    assert len(_cases) == expected > 30
