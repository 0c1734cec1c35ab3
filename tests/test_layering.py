"""Imports point one way: kernels <- operators <- solvers <- datasets <- krylon/ (API, cli, bench).

Every module of the package is parsed (not imported), and every import in it is resolved to the
module it names: relative imports against the module's own package, absolute ``krylon.*`` ones as
written, function-local and ``TYPE_CHECKING`` imports included, and ``importlib.import_module``
with a literal name.  Files map to layers by folder at the repository root, the way pyproject maps
them to ``krylon.kernels`` etc.; a module may import its own layer and the layers below it.
"""

from __future__ import annotations

import ast
import pathlib
from typing import NamedTuple

ROOT = pathlib.Path(__file__).resolve().parents[1]
# lowest first; each layer may import the ones before it; krylon/ (API, cli, bench) may import anything
LAYERS = ("kernels", "operators", "solvers", "datasets", "krylon")
RANK = {name: i for i, name in enumerate(LAYERS)}
# top-level names a sibling could be imported under by mistake (test_package forbids that; counted here too)
_BARE = {name: name for name in LAYERS[:-1]}


class Violation(NamedTuple):
    path: str  # relative to the scanned root
    line: int
    source_layer: str
    target: str  # the module imported, fully qualified
    target_layer: str

    def __str__(self):
        return (f"{self.path}:{self.line}: {self.source_layer} imports {self.target} "
                f"({self.target_layer} is above {self.source_layer})")


def module_name(root: pathlib.Path, path: pathlib.Path) -> tuple[str, str]:
    """``(layer, dotted module name)`` of a file under one of the layer folders."""
    rel = path.relative_to(root)
    layer = rel.parts[0]
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    dotted = ["krylon"] + (parts[1:] if layer == "krylon" else parts)
    return layer, ".".join(dotted)


def layer_of(module: str) -> str | None:
    """The layer a fully qualified module belongs to, or None outside the package."""
    parts = module.split(".")
    if parts[0] in _BARE:
        return _BARE[parts[0]]
    if parts[0] != "krylon":
        return None
    if len(parts) > 1 and parts[1] in RANK and parts[1] != "krylon":
        return parts[1]
    return "krylon"  # the top level: krylon, krylon.cli, krylon.bench..., krylon.__version__


def imported_modules(tree: ast.AST, module: str, is_package: bool):
    """``(line, module)`` for every import in ``tree``, relative ones resolved against ``module``'s package."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if node.level - 1 > len(package):
                    raise ValueError(f"{module}:{node.lineno}: relative import beyond the top-level package")
                base = package[: len(package) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module
            for alias in node.names:
                # "from pkg import name" may import the submodule pkg.name: count the longer name
                yield node.lineno, prefix if alias.name == "*" else f"{prefix}.{alias.name}"
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            yield node.lineno, node.args[0].value


def layering_violations(root: pathlib.Path) -> list[Violation]:
    """Every import in the package under ``root`` that reaches a higher layer."""
    found = []
    for layer in LAYERS:
        folder = root / layer
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*.py")):
            _, module = module_name(root, path)
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for line, target in imported_modules(tree, module, path.name == "__init__.py"):
                target_layer = layer_of(target)
                if target_layer is not None and RANK[target_layer] > RANK[layer]:
                    found.append(Violation(path.relative_to(root).as_posix(), line, layer, target, target_layer))
    return found


# ----------------------------------------------------------------------------- the package
def test_imports_point_down_the_layers():
    found = layering_violations(ROOT)
    assert not found, "imports against kernels <- operators <- solvers <- datasets <- krylon/:\n" + "\n".join(map(str, found))


def test_every_layer_folder_was_scanned():
    """A renamed folder must not make the check vacuous."""
    for layer in LAYERS:
        assert (ROOT / layer / "__init__.py").is_file(), f"{layer}/ is not a package folder any more"


# ----------------------------------------------------------------------------- the checker itself
def _write(root: pathlib.Path, files: dict[str, str]) -> pathlib.Path:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    for layer in LAYERS:
        (root / layer).mkdir(exist_ok=True)
        (root / layer / "__init__.py").touch()
    return root


def test_checker_finds_every_kind_of_upward_import(tmp_path):
    root = _write(tmp_path, {
        "kernels/a.py": "from ..operators import base\n",                    # relative, module level
        "kernels/sub/__init__.py": "from ...solvers.cg import CG\n",         # relative from a nested package
        "operators/b.py": "def f():\n    import krylon.datasets.hdf5\n",   # absolute, function-local
        "solvers/c.py": "from .. import datasets\n",                        # a sibling package by name
        "datasets/d.py": "from krylon import __version__\n",               # the top level
        "datasets/e.py": "import importlib\nm = importlib.import_module('krylon.cli')\n",
        "operators/f.py": "from solvers import cg\n",                      # a bare sibling name
    })
    got = {(v.path, v.target, v.target_layer) for v in layering_violations(root)}
    assert got == {
        ("kernels/a.py", "krylon.operators.base", "operators"),
        ("kernels/sub/__init__.py", "krylon.solvers.cg.CG", "solvers"),
        ("operators/b.py", "krylon.datasets.hdf5", "datasets"),
        ("solvers/c.py", "krylon.datasets", "datasets"),
        ("datasets/d.py", "krylon.__version__", "krylon"),
        ("datasets/e.py", "krylon.cli", "krylon"),
        ("operators/f.py", "solvers.cg", "solvers"),
    }


def test_checker_accepts_downward_and_same_layer_imports(tmp_path):
    root = _write(tmp_path, {
        "kernels/a.py": "from . import b\nfrom .b import g\nimport numpy, torch\n",
        "kernels/b.py": "def g():\n    pass\n",
        "operators/learned/net.py": "from ...kernels import fft\nfrom ..base import LinearOperator\n",
        "solvers/c.py": "from ..operators import Laplacian\nfrom ..kernels.linalg import dot\n",
        "datasets/d.py": "def f():\n    from ..solvers import CG\n    import krylon.operators\n",
        "krylon/cli.py": "from .datasets import open_dataset\nimport krylon.bench\n",
        "krylon/bench/x.py": "from ...solvers import CG\nfrom .. import __version__\n",
    })
    assert layering_violations(root) == []


def test_module_names_follow_pyprojects_mapping(tmp_path):
    root = _write(tmp_path, {"operators/learned/net.py": "", "krylon/bench/x.py": ""})
    assert module_name(root, root / "operators/learned/net.py") == ("operators", "krylon.operators.learned.net")
    assert module_name(root, root / "krylon/bench/x.py") == ("krylon", "krylon.bench.x")
    assert module_name(root, root / "krylon/__init__.py") == ("krylon", "krylon")
    assert module_name(root, root / "solvers/__init__.py") == ("solvers", "krylon.solvers")
