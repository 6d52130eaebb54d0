"""The package's layering, checked on the source (every import statement, also inside functions).

core (errors, contract, paths, reports) <- runtime <- data <- policy <- export; sim and ros build
on runtime/data; the CLI sits on top and nothing imports it. The runtime path (what runs on the
robot) imports neither torch, rclpy nor pybullet.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "flow_policy_ros"
CORE = {"errors", "contract", "paths", "reports", "metrics", "__init__", "__main__"}

#: layer -> package layers it may import (core is always allowed).
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "runtime": set(),
    "data": {"runtime"},
    "policy": {"runtime", "data"},
    "export": {"runtime", "data", "policy"},
    "sim": {"runtime", "data"},
    "ros": {"runtime", "data", "sim"},
    "cli": {"runtime", "data", "policy", "export", "sim", "ros", "cli"},
}
#: third-party modules a layer must never import.
FORBIDDEN_THIRD_PARTY: dict[str, set[str]] = {
    "core": {"torch", "rclpy", "pybullet", "onnxruntime"},
    "runtime": {"torch", "rclpy", "pybullet", "rosbags", "matplotlib"},
    "data": {"torch", "pybullet"},
    "sim": {"torch", "rclpy"},
    "policy": {"rclpy", "pybullet"},
}


def layer_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE_DIR)
    if rel.name == "__main__.py":
        return "cli"  # ``python -m flow_policy_ros`` is the CLI's entry point
    if len(rel.parts) == 1:
        assert rel.stem in CORE, f"{rel}: a top-level module must be one of the core modules {sorted(CORE)}"
        return "core"
    return rel.parts[0]


def imported_modules(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
            if node.module == "flow_policy_ros":  # from flow_policy_ros import paths
                found += [(node.lineno, f"flow_policy_ros.{alias.name}") for alias in node.names]
    return found


def package_layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "flow_policy_ros" or len(parts) == 1:
        return None
    if not ((PACKAGE_DIR / parts[1]).is_dir() or (PACKAGE_DIR / f"{parts[1]}.py").is_file()):
        return None  # a name such as __version__, not a module
    return "core" if parts[1] in CORE else parts[1]


MODULES = sorted(PACKAGE_DIR.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE_DIR)))
def test_module_imports_respect_the_layers(path: Path) -> None:
    layer = layer_of(path)
    assert layer in ALLOWED, f"{path}: unknown layer {layer!r}; add it to the layering table"
    bad = []
    for line, module in imported_modules(path):
        target = package_layer(module)
        if target is not None and target != "core" and target != layer and target not in ALLOWED[layer]:
            bad.append(f"line {line}: {layer} imports {module}")
        if module.split(".")[0] in FORBIDDEN_THIRD_PARTY.get(layer, set()):
            bad.append(f"line {line}: {layer} imports {module}")
    assert not bad, f"{path.relative_to(PACKAGE_DIR)}: " + "; ".join(bad)


def test_nothing_outside_the_cli_imports_it() -> None:
    offenders = [
        f"{path.relative_to(PACKAGE_DIR)}:{line}"
        for path in MODULES
        if layer_of(path) != "cli"
        for line, module in imported_modules(path)
        if package_layer(module) == "cli"
    ]
    assert not offenders, f"modules below the CLI import it: {offenders}"


def test_the_layer_check_catches_a_violation(tmp_path: Path) -> None:
    """Positive control: the import scan sees a function-level import of a forbidden layer."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from flow_policy_ros.ros import policy_node\n    import torch\n")
    modules = [m for _, m in imported_modules(bad)]
    assert modules == ["flow_policy_ros.ros", "flow_policy_ros.ros.policy_node", "torch"] or \
        set(modules) >= {"flow_policy_ros.ros", "torch"}
    assert package_layer("flow_policy_ros.ros.policy_node") == "ros"
    assert "ros" not in ALLOWED["runtime"]


# --------------------------------------------------------------------------- import cycles


def module_name(path: Path, root: Path = PACKAGE_DIR.parent) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def import_graph(paths: list[Path], known: set[str], root: Path = PACKAGE_DIR.parent) -> dict[str, set[str]]:
    """module -> package modules it imports explicitly (anywhere in the file, also inside functions);
    ``from pkg import name`` counts as importing ``pkg.name`` when that is a module."""
    graph: dict[str, set[str]] = {}
    for path in paths:
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names if alias.name in known}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                subs = {f"{node.module}.{alias.name}" for alias in node.names} & known
                targets |= subs or ({node.module} & known)
        graph[module_name(path, root)] = targets - {module_name(path, root)}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_no_import_cycle_among_the_package_modules() -> None:
    """Not even through imports inside functions: a cycle means two modules that are really one job
    (or a helper that belongs below both)."""
    known = {module_name(p) for p in MODULES}
    cycles = import_cycles(import_graph(MODULES, known))
    assert not cycles, f"import cycles: {cycles}"


def test_the_cycle_check_finds_a_function_level_cycle(tmp_path: Path) -> None:
    """Positive control: two modules importing each other, one of them inside a function (as
    cli/bench.py and cli/bench_sweep.py once did)."""
    pkg = tmp_path / "flow_policy_ros" / "cli"
    pkg.mkdir(parents=True)
    (pkg / "a.py").write_text("from flow_policy_ros.cli.b import g\n")
    (pkg / "b.py").write_text("def g():\n    from flow_policy_ros.cli import a\n")
    (pkg / "c.py").write_text("import flow_policy_ros.cli.a\n")
    paths = sorted(pkg.glob("*.py"))
    graph = import_graph(paths, {module_name(p, tmp_path) for p in paths}, tmp_path)
    assert graph["flow_policy_ros.cli.c"] == {"flow_policy_ros.cli.a"}
    assert import_cycles(graph) == [["flow_policy_ros.cli.a", "flow_policy_ros.cli.b"]]
