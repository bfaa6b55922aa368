"""The import graph of the package: every module imports, no import cycle among regimetry modules, and
optuna and mlflow each have one importer (issue 13)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "regimetry"


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _type_checking_only(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(name: str, path: Path) -> set[str]:
    """Every module named by an ``import`` statement of the file, at module level or inside a function
    (``from a import b`` names ``a.b`` when that is a module, else ``a``), except annotation-only
    imports under ``if TYPE_CHECKING:``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if _type_checking_only(node):
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if full in MODULES else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return found


def _graph() -> dict[str, set[str]]:
    graph = {}
    for name, path in MODULES.items():
        edges = set()
        for target in _imports(name, path):
            while target not in MODULES and "." in target:
                target = target.rpartition(".")[0]
            if target in MODULES and target != name and target.startswith("regimetry"):
                edges.add(target)
        graph[name] = edges
    return graph


@pytest.mark.parametrize("name", sorted(m for m in MODULES if not m.endswith("__main__")))
def test_every_module_imports(name):
    importlib.import_module(name)


def test_no_import_cycle_among_regimetry_modules():
    graph = _graph()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("library, owner", [("optuna", "regimetry.studies.backend"), ("mlflow", "regimetry.tracking")])
def test_one_module_imports_each_backend_library(library, owner):
    importers = sorted(name for name, path in MODULES.items()
                       if any(m.split(".")[0] == library for m in _imports(name, path)))
    assert importers, f"nothing imports {library}"
    outside = [name for name in importers if name != owner and not name.startswith(owner + ".")]
    assert not outside, f"{library} is imported outside {owner}: {outside}"


def test_reports_never_reach_the_study_runner():
    graph = _graph()
    seen, todo = set(), ["regimetry.reports"]
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo += sorted(graph[node] - seen)
    reached = {m for m in seen if m.startswith("regimetry.studies.")}
    assert reached <= {"regimetry.studies.backend", "regimetry.studies.spec"}, reached


def test_the_study_harness_loads_tensorflow_only_where_a_model_is_trained():
    """Issue 17: the main process of a multi-worker run trains nothing, so it never imports TensorFlow
    (its workers start ~5 s sooner), and a mistyped option fails in seconds, before any such import."""
    import subprocess
    import sys

    root = PACKAGE.parent
    probe = ("import sys; from regimetry.studies import main, runner, cli, confirm, tuning; import regimetry.run_record; "
             "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')); "
             "assert not loaded, loaded[:5]")
    subprocess.run([sys.executable, "-c", probe], cwd=root, check=True, capture_output=True, text=True, timeout=300)
    bad = subprocess.run([sys.executable, "-X", "importtime", str(root / "experiments" / "03_encoding_ablation.py"),
                          "--set", "data.no_such_field=1", "--no-report"],
                         cwd=root, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "no_such_field" in bad.stderr
    imported = [line.rsplit("|", 1)[-1].strip() for line in bad.stderr.splitlines() if line.startswith("import time:")]
    assert "numpy" in imported and not [m for m in imported if m.split(".")[0] in ("tensorflow", "keras")]
