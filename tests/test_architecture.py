"""The house rules of issue 19, checked on the source: functions fit on a screen, public names are
documented, no import cycle between steer's modules, no line over 120 characters."""

import ast
import fnmatch
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "steer"
MODULES = sorted(ROOT.rglob("*.py"))
MAX_FUNCTION_LINES = 60


def _name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def test_no_function_is_longer_than_a_screen():
    long = [
        f"{_name(p)}.{f.name}: {f.end_lineno - f.lineno + 1} lines"
        for p in MODULES
        for f in _functions(ast.parse(p.read_text(encoding="utf-8")))
        if f.end_lineno - f.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, long


def test_every_public_name_has_a_docstring():
    missing = []
    for p in MODULES:
        tree = ast.parse(p.read_text(encoding="utf-8"))
        if not ast.get_docstring(tree):
            missing.append(_name(p))
        for node in tree.body:  # module level: functions and classes (and their public methods)
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                if not ast.get_docstring(node):
                    missing.append(f"{_name(p)}.{node.name}")
    assert not missing, missing


def _imports(path: Path) -> set[str]:
    """steer modules this module imports at load time (module level, not inside functions)."""
    out = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("steer"):
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("steer"))
    return out


def test_no_import_cycle():
    names = {_name(p): p for p in MODULES}
    graph = {n: {m for m in _imports(p) if m in names and m != n} for n, p in names.items()}
    graph = {n: deps - {"steer"} for n, deps in graph.items()}  # steer/__init__ imports nothing at load time
    state: dict[str, int] = {}

    def visit(n: str, path: list[str]) -> None:
        state[n] = 1
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                pytest.fail("import cycle: " + " -> ".join(path[path.index(m) :] + [m]) if m in path else m)
            if m not in state:
                visit(m, path + [m])
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [n])


@pytest.mark.parametrize("folder", ["steer", "tests", "experiments"])
def test_no_line_over_120_characters(folder):
    base = ROOT.parent / folder
    long = [
        f"{p.relative_to(ROOT.parent)}:{i}"
        for p in sorted(base.rglob("*.py"))
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if len(line) > 120
    ]
    assert not long, long


def test_every_shipped_data_file_is_packaged():
    """A wheel install must carry every data file the package reads (prompts, answer keys, SFT data)."""
    line = re.search(r"^steer = \[(.*)\]$", (ROOT.parent / "pyproject.toml").read_text(), re.M)  # py3.10: no tomllib
    globs = re.findall(r'"([^"]+)"', line.group(1))
    shipped = [p.relative_to(ROOT).as_posix() for p in (ROOT / "data").rglob("*.jsonl") if "judge" not in p.parts]
    unpackaged = [f for f in shipped if not any(fnmatch.fnmatch(f, g) for g in globs)]
    assert shipped and not unpackaged, unpackaged


def test_pyproject_is_valid_for_setuptools():
    """pip install reads pyproject.toml through setuptools' validation; extras in normalised form (older pip)."""
    from setuptools.config.pyprojecttoml import read_configuration

    extras = read_configuration(ROOT.parent / "pyproject.toml")["project"]["optional-dependencies"]
    assert {"demo", "demo-1-5b", "sft", "dev"} <= set(extras)
    assert all(isinstance(v, list) for v in extras.values())
