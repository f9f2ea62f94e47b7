"""The package's layers import only downward: decoding <- backends <- runtime <- faces."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2] / "la_edge"
LAYERS = {"errors": 0, "decoding": 1, "backends": 2, "runtime": 3, "faces": 4}


def _layer(module: str) -> int:
    """Layer of a dotted la_edge module name (the top-level __init__ counts as a face: it is the API)."""
    parts = module.split(".")
    return LAYERS.get(parts[1], 4) if len(parts) > 1 else 4


def _imports(path: pathlib.Path):
    """(line, absolute la_edge module) for every la_edge import in a file, lazy ones included."""
    rel = path.relative_to(ROOT.parent).with_suffix("")
    pkg = list(rel.parts[:-1]) if rel.name != "__init__" else list(rel.parts[:-1])
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[: len(pkg) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
                names = [mod] if node.module else [f"{mod}.{a.name}" for a in node.names]
            else:
                names = [node.module or ""]
            for n in names:
                if n.startswith("la_edge"):
                    yield node.lineno, n
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("la_edge"):
                    yield node.lineno, a.name


FILES = sorted(p for p in ROOT.rglob("*.py"))


def test_every_module_sits_in_a_layer():
    for p in FILES:
        rel = p.relative_to(ROOT)
        assert rel.parts[0] in LAYERS or rel.name in ("errors.py", "__init__.py", "__main__.py"), rel


@pytest.mark.parametrize("path", [p for p in FILES if p.parent != ROOT], ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_downward(path):
    here = _layer("la_edge." + ".".join(path.relative_to(ROOT).with_suffix("").parts))
    for line, mod in _imports(path):
        there = _layer(mod)
        same_face = here == there
        assert there < here or same_face, f"{path.relative_to(ROOT)}:{line} imports {mod} (layer {there} > {here})"


def test_no_backend_imports_the_runtime():
    for p in (ROOT / "backends").rglob("*.py"):
        for line, mod in _imports(p):
            assert not mod.startswith(("la_edge.runtime", "la_edge.faces")), f"{p.name}:{line} imports {mod}"
