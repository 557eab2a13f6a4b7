"""The package's shape: public names never shadowed by submodules, imports that run one way
(no cycle, no reaching into another package's private modules), a core that needs no extras."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import appvitals

SRC = Path(appvitals.__file__).resolve().parent


def _modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path) -> set[str]:
    """Every appvitals module `name` imports, at any depth of the file (lazy imports count)."""
    modules = _modules()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for target in targets:
            if target in modules and target != name:
                found.add(target)
    return found


def test_public_functions_survive_importing_every_submodule():
    """`appvitals.exposition` stayed a function after `import appvitals.server` (a live bug):
    no public name of a package may be shadowed by one of its submodules."""
    for info in pkgutil.walk_packages(appvitals.__path__, "appvitals."):
        importlib.import_module(info.name)
    for name, path in _modules().items():
        if path.name != "__init__.py":
            continue
        package = importlib.import_module(name)
        for public in getattr(package, "__all__", ()):
            value = getattr(package, public)
            assert not isinstance(value, type(sys)), f"{name}.{public} is shadowed by a submodule"
    registry = appvitals.Registry()
    registry.counter("hits", "Hits").inc()
    assert b"hits_total 1" in appvitals.exposition(registry)


def test_collector_metrics_answer_after_the_in_app_server_was_imported():
    code = (
        "import appvitals.stats.server\n"
        "from starlette.testclient import TestClient\n"
        "from appvitals.fleet.collector import create_app\n"
        "with TestClient(create_app(':memory:')) as c:\n"
        "    r = c.get('/metrics')\n"
        "    assert r.status_code == 200, r.status_code\n"
        "    assert 'vitals_collector' in r.text or 'collector' in r.text\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_imports_form_no_cycle():
    modules = _modules()
    graph = {name: _imports(name, path) for name, path in modules.items()}
    # a package's __init__ may re-export its own children; that edge is not a dependency
    for name in graph:
        graph[name] = {t for t in graph[name] if not t.startswith(name + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)


def test_no_module_imports_another_packages_private_module():
    for name, path in _modules().items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for target in _imports(name, path):
            leaf = target.rpartition(".")[2]
            if leaf.startswith("_") and not leaf.startswith("__"):
                owner = target.rpartition(".")[0]
                assert owner == package, f"{name} imports {target}, private to {owner}"


def test_roles_depend_downward_only():
    """cli -> roles -> wire/model: the fleet's shared layer imports no role, the in-app
    stats never import the fleet, and no library module imports the command line."""
    for name, path in _modules().items():
        deps = _imports(name, path)
        if name.startswith("appvitals.fleet.wire"):
            assert not {d for d in deps if d.startswith("appvitals.fleet.") and
                        not d.startswith("appvitals.fleet.wire")}, name
        if name.startswith("appvitals.stats"):
            assert not {d for d in deps if d.startswith("appvitals.fleet")}, name
        if not name.startswith("appvitals.cli") and name != "appvitals.__main__":
            assert not {d for d in deps if d.startswith("appvitals.cli")}, name


def test_no_capability_probing_of_warehouses():
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        for line in text.splitlines():
            if ("hasattr(" in line or "getattr(" in line) and "warehouse" in line:
                raise AssertionError(f"{path.name}: probes a warehouse: {line.strip()}")
