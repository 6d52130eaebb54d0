"""launch/*.launch.py: checked against the INSTALLED share directory, and run for real where launch_ros is.

Always (no launch needed): the files are parsed with ``ast``: every ``Node(...)`` names an
executable of this package, every YAML file they reference is installed and has the node's
section, every parameter in the installed YAML and every launch argument of
``launch_support``'s tables is declared by its node with the same type, and no parameter
argument carries a default that would silently replace the YAML's value.

When ``launch`` and ``launch_ros`` are importable (a system ROS 2; the PyPI wheels used here
have neither, so CI skips these), each launch file is run as ``ros2 launch`` runs it
(``LaunchService`` + ``IncludeLaunchDescription``) in a subprocess on this session's DDS domain:
sim_demo ends with status 0 after ``episodes:=2``; a bad model path ends policy.launch.py with
status 1; without ``execution:=...`` the parameter file's value is used.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import node_env

from flow_policy_ros import paths
from flow_policy_ros.ros import launch_support
from flow_policy_ros.ros.launch_support import POLICY_ARGUMENTS, SIM_ARGUMENTS, ParameterArgument, parameter_overrides

REPO_ROOT = Path(__file__).resolve().parents[1]
LAUNCH_FILES = sorted((REPO_ROOT / "launch").glob("*.launch.py"))
#: node name in the YAML / launch file -> (executable, module with the parameter table, YAML file)
NODES = {
    "flow_policy_node": ("policy_node", "flow_policy_ros.ros.policy_node", "policy.yaml"),
    "sim_node": ("sim_node", "flow_policy_ros.ros.sim_node", "sim.yaml"),
}
#: ParameterSpec.type (rcl_interfaces ParameterType) of each Python type a launch argument converts to.
PARAMETER_TYPES = {str: 4, float: 3, int: 2, bool: 1}
HAVE_LAUNCH = importlib.util.find_spec("launch") is not None and importlib.util.find_spec("launch_ros") is not None
needs_launch = pytest.mark.skipif(not HAVE_LAUNCH, reason="launch / launch_ros are not installed here "
                                  "(ROS 2 from PyPI wheels has no launch); the layout they need is checked in test_install_layout")


def parameter_table(node_name: str) -> dict:
    return importlib.import_module(NODES[node_name][1]).PARAMETERS


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
def test_nodes_and_referenced_files_exist(path, share):
    """Each Node(...) names an executable of this package under its YAML node name; each YAML file the
    launch file names is installed in share/config and holds the section of a node the file starts."""
    source = path.read_text()
    tree = ast.parse(source, str(path))
    calls = _node_calls(tree)
    assert calls, f"{path.name}: no Node(...)"
    started = set()
    for call in calls:
        assert ast.literal_eval(_kwarg(call, "package")) == "flow_policy_ros"
        executable, name = _kwarg(call, "executable"), _kwarg(call, "name")
        pairs = ([(ast.literal_eval(executable), ast.literal_eval(name))] if isinstance(executable, ast.Constant)
                 else [(exe, node) for node, (exe, _, _) in NODES.items() if f'"{exe}"' in source and f'"{node}"' in source])
        for exe, node in pairs:
            assert node in NODES and NODES[node][0] == exe, f"{path.name}: node {node} / {exe} unknown"
            started.add(node)
    yamls = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and str(n.value).endswith(".yaml")}
    assert yamls, f"{path.name}: references no parameter file"
    for file_name in yamls:
        installed = share / "config" / file_name
        assert installed.is_file(), f"{path.name} references {installed}, which is not installed"
        assert set(yaml.safe_load(installed.read_text())) & started, f"{installed} has no section for {started}"
    assert "get_package_share_directory" in source and "end_launch_with" in source


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_no_launch_default_replaces_a_yaml_value(path):
    """Parameter arguments come from launch_support's tables (empty default = not given); no
    DeclareLaunchArgument in the file gives a parameter argument a default of its own."""
    tree = ast.parse(path.read_text(), str(path))
    parameter_arguments = {a.name for a in POLICY_ARGUMENTS + SIM_ARGUMENTS}
    for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "DeclareLaunchArgument"):
        if call.args and isinstance(call.args[0], ast.Constant):
            assert call.args[0].value not in parameter_arguments, f"{path.name}: {call.args[0].value} declared with a default"
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    assert "parameter_overrides" in used and "declare_arguments" in used


@pytest.mark.parametrize("node_name", sorted(NODES))
def test_installed_yaml_parameters_are_declared(node_name, share):
    data = yaml.safe_load((share / "config" / NODES[node_name][2]).read_text())
    params = set(data[node_name]["ros__parameters"])
    assert params <= set(parameter_table(node_name)), f"{params - set(parameter_table(node_name))} not declared"


@pytest.mark.parametrize(("node_name", "arguments"), [("flow_policy_node", POLICY_ARGUMENTS), ("sim_node", SIM_ARGUMENTS)])
def test_launch_arguments_set_declared_parameters_of_their_type(node_name, arguments):
    table = parameter_table(node_name)
    for argument in arguments:
        if argument.parameter == "use_sim_time":  # declared by every rclpy node
            assert argument.type is bool
            continue
        assert argument.parameter in table, f"{argument.name} sets undeclared parameter {argument.parameter}"
        assert PARAMETER_TYPES[argument.type] == table[argument.parameter].type, f"{argument.name}: type differs"


def test_parameter_overrides_only_for_given_arguments():
    given = {"model": "/m.onnx", "execution": "", "control_rate_hz": "25", "autostart": "False", "use_sim_time": "true"}
    assert parameter_overrides(POLICY_ARGUMENTS, given) == {
        "model_path": "/m.onnx", "control_rate_hz": 25.0, "autostart": False, "use_sim_time": True}
    assert parameter_overrides(POLICY_ARGUMENTS, {}) == {}
    assert parameter_overrides(SIM_ARGUMENTS, {"episodes": "3"}) == {"episodes": 3}
    assert isinstance(parameter_overrides(POLICY_ARGUMENTS, {"control_rate_hz": "50"})["control_rate_hz"], float)


@pytest.mark.parametrize(("argument", "text"), [(ParameterArgument("autostart", "autostart", bool, ""), "maybe"),
                                                (ParameterArgument("episodes", "episodes", int, ""), "3.5")])
def test_bad_launch_argument_names_itself(argument, text):
    with pytest.raises(ValueError, match=rf"launch argument {argument.name}:='{text}'"):
        launch_support.typed_value(argument, text)


# --------------------------------------------------------------------------- the exit report (no launch needed)


def test_exit_report_takes_the_nodes_own_error_line():
    """The last '<node>: error: <reason>' line of the node's output, across chunk boundaries, bytes or str."""
    report = launch_support.NodeExitReport("flow_policy_node")
    report.on_output(b"[INFO] [1.0] [flow_policy_node]: starting\nflow_policy_node: err")
    report.on_output("or: configure failed: /m/missing.onnx: file not found\n[FATAL] [2.0] [flow_policy_node]: exiting\n")
    report.on_output("sim_node: error: not mine\n")
    assert report.describe(1) == "flow_policy_node exited with status 1: configure failed: /m/missing.onnx: file not found"
    unterminated = launch_support.NodeExitReport("sim_node")
    unterminated.on_output("sim_node: error: task 'x' unknown")
    assert unterminated.describe(1) == "sim_node exited with status 1: task 'x' unknown"
    silent = launch_support.NodeExitReport("sim_node")
    assert silent.describe(-11) == "sim_node exited with status -11: it printed no error line; see its output above"


class _Recorder:
    """Stands for a launch class: keeps its constructor's arguments."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.args, self.kwargs = args, kwargs


@pytest.fixture
def fake_launch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Just enough of ``launch`` for end_launch_with (launch is not installed here)."""
    import types

    modules = {name: types.ModuleType(name) for name in ("launch", "launch.actions", "launch.event_handlers",
                                                          "launch.events")}
    for name in ("EmitEvent", "OpaqueFunction", "RegisterEventHandler"):
        setattr(modules["launch.actions"], name, type(name, (_Recorder,), {}))
    for name in ("OnProcessExit", "OnProcessIO"):
        setattr(modules["launch.event_handlers"], name, type(name, (_Recorder,), {}))
    modules["launch.events"].Shutdown = type("Shutdown", (_Recorder,), {})
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)


def _handlers(node: object, name: str) -> tuple:
    io, exit_ = (action.args[0] for action in launch_support.end_launch_with(node, name))
    assert io.kwargs["target_action"] is node and exit_.kwargs["target_action"] is node
    return io.kwargs, exit_.kwargs["on_exit"]


def test_a_failing_node_ends_the_launch_with_a_line_naming_it_and_its_reason(fake_launch, node_process, tmp_path):
    """A real policy_node with a missing model (its real output), through end_launch_with's handlers:
    the launch's last line is the NodeFailed message naming the node and the node's own reason, and the
    node logged the reason through the ROS logger too ([FATAL], so /rosout and the log files)."""
    proc = node_process(params={"model_path": str(tmp_path / "missing.onnx")})
    assert proc.wait(timeout=30) == 1
    output = (tmp_path / "policy_node_0.log").read_bytes()
    node = object()
    io, on_exit = _handlers(node, "flow_policy_node")
    for k in range(0, len(output), 37):  # chunks as the pipe delivers them
        io["on_stderr"](types_namespace(text=output[k:k + 37]))
    actions = on_exit(types_namespace(returncode=1, process_name="policy_node-1"), types_namespace(is_shutdown=False))
    function, args = actions[0].kwargs["function"], actions[0].kwargs["args"]
    with pytest.raises(launch_support.NodeFailed) as info:
        function(None, *args)
    message = str(info.value)
    assert message.startswith("flow_policy_node exited with status 1: configure failed: ") and "missing.onnx" in message
    fatal = [line for line in output.decode().splitlines() if "[FATAL]" in line]
    assert len(fatal) == 1 and "[flow_policy_node]: exiting: configure failed" in fatal[0] and "missing.onnx" in fatal[0]


def test_a_clean_exit_shuts_the_launch_down_and_ctrl_c_is_left_alone(fake_launch):
    _, on_exit = _handlers(object(), "sim_node")
    actions = on_exit(types_namespace(returncode=0, process_name="sim_node-1"), types_namespace(is_shutdown=False))
    assert actions[0].kwargs["event"].kwargs["reason"] == "sim_node finished"
    assert on_exit(types_namespace(returncode=1, process_name="sim_node-1"), types_namespace(is_shutdown=True)) is None


def types_namespace(**values: object) -> object:
    import types

    return types.SimpleNamespace(**values)


# --------------------------------------------------------------------------- for real (needs launch_ros)

RUNNER = """
import sys
from launch import LaunchDescription, LaunchService
from launch.actions import IncludeLaunchDescription
from launch.launch_description_sources import AnyLaunchDescriptionSource
path, arguments = sys.argv[1], sys.argv[2:]
service = LaunchService(argv=arguments, noninteractive=True)
pairs = [tuple(a.split(':=', 1)) for a in arguments]
service.include_launch_description(LaunchDescription([
    IncludeLaunchDescription(AnyLaunchDescriptionSource(path), launch_arguments=pairs)]))
sys.exit(service.run())
"""


def run_launch(share: Path, file_name: str, arguments: list[str], log: Path) -> subprocess.Popen:
    """``ros2 launch flow_policy_ros FILE ARGS`` (what ros2launch does), output to ``log``."""
    env = node_env()  # the install prefix on AMENT_PREFIX_PATH, as `make` or sourcing setup.bash leave it
    env["AMENT_PREFIX_PATH"] = os.pathsep.join(p for p in (str(share.parents[1]), env.get("AMENT_PREFIX_PATH")) if p)
    out = open(log, "w")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen([sys.executable, "-c", RUNNER, str(share / "launch" / file_name), *arguments],
                            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    proc._log_file = out  # type: ignore[attr-defined]
    return proc


def finish(proc: subprocess.Popen, timeout_s: float) -> int:
    try:
        return proc.wait(timeout=timeout_s)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=15)
        proc._log_file.close()  # type: ignore[attr-defined]


@needs_launch
@pytest.mark.slow
def test_sim_demo_ends_with_status_0_after_its_episodes(share, tmp_path):
    proc = run_launch(share, "sim_demo.launch.py", ["episodes:=2"], tmp_path / "launch.log")
    assert finish(proc, 120) == 0, (tmp_path / "launch.log").read_text()[-3000:]
    assert "all 2 episodes done" in (tmp_path / "launch.log").read_text()


@needs_launch
@pytest.mark.slow
def test_failing_node_ends_the_launch_with_status_1(share, tmp_path):
    proc = run_launch(share, "policy.launch.py", [f"model:={tmp_path / 'missing.onnx'}"], tmp_path / "launch.log")
    assert finish(proc, 60) == 1
    lines = [line for line in (tmp_path / "launch.log").read_text().splitlines() if "[ERROR]" in line]
    assert "flow_policy_node exited with status 1: configure failed" in lines[-1] and "missing.onnx" in lines[-1], lines


@needs_launch
@pytest.mark.slow
def test_parameter_file_value_kept_unless_the_argument_is_given(share, tmp_path):
    """params_file says execution: trajectory; no execution:=... given, so the node runs trajectory mode."""
    data = yaml.safe_load((share / "config" / "policy.yaml").read_text())
    data["flow_policy_node"]["ros__parameters"].update(execution="trajectory", providers=["CPUExecutionProvider"])
    params = tmp_path / "policy.yaml"
    params.write_text(yaml.safe_dump(data))
    log = tmp_path / "launch.log"
    proc = run_launch(share, "policy.launch.py", [f"params_file:={params}"], log)
    deadline = time.monotonic() + 60
    while "configured:" not in log.read_text() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    assert finish(proc, 30) == 0, log.read_text()[-3000:]
    line = next(x for x in log.read_text().splitlines() if "configured:" in x)
    assert ", trajectory," in line, line
