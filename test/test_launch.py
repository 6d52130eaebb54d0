"""Checks of launch/*.launch.py against the INSTALLED share directory (what `ros2 launch` would use).

``ros2 launch`` cannot run here (no launch/launch_ros), so the files are parsed with ``ast``:
every ``os.path.join(<share>, "config"/...)``-style file they reference must exist under
``flow_policy_ros.paths.share_dir()``, every parameter they set must be declared by the node
it is given to, and every parameter in the installed YAML files must be declared by the node
(the nodes' parameter tables are imported). When ``launch`` IS importable, the files are also
loaded and their LaunchDescription built.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest
import yaml

from flow_policy_ros import paths

REPO_ROOT = Path(__file__).resolve().parents[1]
LAUNCH_FILES = sorted((REPO_ROOT / "launch").glob("*.launch.py"))
#: node name in the YAML / launch file -> (executable, module with the parameter table, table name)
NODES = {
    "flow_policy_node": ("policy_node", "flow_policy_ros.ros.policy_node", "PARAMETERS"),
    "sim_node": ("sim_node", "flow_policy_ros.ros.sim_node", "PARAMETERS"),
}


def declared(executable: str) -> set[str]:
    for _, (exe, module, table) in NODES.items():
        if exe == executable:
            return set(getattr(importlib.import_module(module), table))
    raise AssertionError(f"unknown executable {executable}")


def _strings(node: ast.AST, names: dict[str, ast.AST]) -> list[str]:
    """String constants in ``node``, following variables assigned in the file (``params_file = ...``)."""
    out = []
    for n in ast.walk(node):
        if isinstance(n, ast.Constant) and isinstance(n.value, str):
            out.append(n.value)
        elif isinstance(n, ast.Name) and n.id in names:
            out += _strings(names[n.id], names)
    return out


def _assignments(tree: ast.AST) -> dict[str, ast.AST]:
    return {t.id: n.value for n in ast.walk(tree) if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}


def _node_calls(tree: ast.AST) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "Node"]


def _kwarg(call: ast.Call, name: str) -> ast.AST:
    return next(k.value for k in call.keywords if k.arg == name)


@pytest.fixture(scope="module")
def share() -> Path:
    try:
        return paths.share_dir()
    except FileNotFoundError as exc:
        pytest.fail(f"package not installed: {exc} (run `make setup`)")


def test_launch_files_installed_and_current(share):
    assert LAUNCH_FILES, "no launch files in launch/"
    for path in LAUNCH_FILES:
        installed = share / "launch" / path.name
        assert installed.is_file(), f"{installed} missing: reinstall (`make setup`)"
        assert installed.read_text() == path.read_text(), f"{installed} is stale: reinstall (`make setup`)"


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_referenced_files_and_parameters_exist(path, share):
    """Each Node(...) names an executable of this package; the YAML files passed to it exist in the
    installed share/config and hold that node's section; dict parameters are declared by the node."""
    tree = ast.parse(path.read_text(), str(path))
    calls = _node_calls(tree)
    assert calls, f"{path.name}: no Node(...)"
    for call in calls:
        executable = ast.literal_eval(_kwarg(call, "executable"))
        name = ast.literal_eval(_kwarg(call, "name"))
        assert name in NODES and NODES[name][0] == executable, f"{path.name}: node {name} / {executable} unknown"
        params = _kwarg(call, "parameters")
        yamls = [s for s in _strings(params, _assignments(tree)) if s.endswith(".yaml")]
        assert yamls, f"{path.name}: {name} gets no YAML file"
        for file_name in yamls:
            installed = share / "config" / file_name
            assert installed.is_file(), f"{path.name} references {installed}, which is not installed"
            assert name in yaml.safe_load(installed.read_text()), f"{installed} has no section {name}"
        for element in params.elts:
            if isinstance(element, ast.Dict):
                keys = {ast.literal_eval(k) for k in element.keys}
                assert keys <= declared(executable), f"{path.name}: {keys - declared(executable)} not declared by {name}"
    assert "get_package_share_directory" in path.read_text()


@pytest.mark.parametrize("node_name", sorted(NODES))
def test_installed_yaml_parameters_are_declared(node_name, share):
    executable = NODES[node_name][0]
    yaml_name = {"flow_policy_node": "policy.yaml", "sim_node": "sim.yaml"}[node_name]
    data = yaml.safe_load((share / "config" / yaml_name).read_text())
    params = set(data[node_name]["ros__parameters"])
    assert params <= declared(executable), f"{yaml_name}: {params - declared(executable)} not declared by {executable}"


def test_launch_descriptions_build_when_launch_is_available():
    if importlib.util.find_spec("launch") is None or importlib.util.find_spec("launch_ros") is None:
        pytest.skip("launch / launch_ros are not installed here (ROS 2 from PyPI wheels has no launch)")
    for path in LAUNCH_FILES:
        spec = importlib.util.spec_from_file_location(path.stem.replace(".", "_"), path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        assert module.generate_launch_description().entities
