"""What the launch files share: arguments that override node parameters only when given, and the
exit policy (a node that fails ends the launch with a non-zero status; a node that ends cleanly,
such as sim_node after its episodes, ends the launch).

Parameters come from the installed YAML files (``params_file``-style arguments choose others); a
launch argument in :data:`POLICY_ARGUMENTS` / :data:`SIM_ARGUMENTS` has an empty default and
overrides its parameter only when the user gives it (``ros2 launch ... execution:=trajectory``),
typed as the node declares it. The tables and :func:`parameter_overrides` are plain Python; the
functions that build launch actions import ``launch`` / ``launch_ros`` when called, so this module
imports (and is tested) where those are not installed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ParameterArgument:
    """A launch argument ``name`` that sets node parameter ``parameter`` (of type ``type``) when given."""

    name: str
    parameter: str
    type: type
    description: str


POLICY_ARGUMENTS: tuple[ParameterArgument, ...] = (
    ParameterArgument("model", "model_path", str, "ONNX policy file (empty in policy.yaml = the packaged model)"),
    ParameterArgument("execution", "execution", str, "stream (forward position controller) | trajectory (JTC)"),
    ParameterArgument("control_rate_hz", "control_rate_hz", float, "control tick rate (Hz)"),
    ParameterArgument("guidance_scale", "guidance_scale", float, "classifier-free guidance weight w in [0, 5]"),
    ParameterArgument("autostart", "autostart", bool,
                      "true: configure + activate at start; false: wait for `ros2 lifecycle set /flow_policy_node ...`"),
    ParameterArgument("use_sim_time", "use_sim_time", bool, "run on /clock (e.g. `flow-policy play --clock`)"),
    ParameterArgument("shadow", "shadow", bool,
                      "true: publish only to ~/preview/... (no controller listens), the arm vs the previews on /diagnostics"),
)
SIM_ARGUMENTS: tuple[ParameterArgument, ...] = (
    ParameterArgument("task", "task", str, "reach | reach_around"),
    ParameterArgument("episodes", "episodes", int, "episodes to run, then sim_node and the launch end (0 = forever)"),
    ParameterArgument("record_path", "record_path", str, "directory for one rosbag2 per episode"),
)
#: policy.launch.py remaps: launch argument -> the node's topic name (default: unchanged).
POLICY_REMAPS: dict[str, str] = {
    "joint_states_topic": "joint_states",
    "goal_topic": "goal",
    "commands_topic": "commands",
    "joint_trajectory_topic": "joint_trajectory",
}
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def typed_value(argument: ParameterArgument, text: str) -> Any:
    """``text`` (a launch argument's value) as the parameter's type; raises ValueError naming the argument."""
    try:
        if argument.type is bool:
            if text.strip().lower() in _TRUE + _FALSE:
                return text.strip().lower() in _TRUE
            raise ValueError("expected true or false")
        return argument.type(text)
    except ValueError as exc:
        raise ValueError(f"launch argument {argument.name}:={text!r}: {exc} ({argument.type.__name__} "
                         f"for parameter {argument.parameter})") from None


def parameter_overrides(arguments: Sequence[ParameterArgument], given: Mapping[str, str]) -> dict[str, Any]:
    """{parameter: typed value} for the arguments given a non-empty value; the others keep the YAML's."""
    return {a.parameter: typed_value(a, given[a.name]) for a in arguments if given.get(a.name, "") != ""}


# --------------------------------------------------------------------------- launch actions (need launch)


def declare_arguments(arguments: Sequence[ParameterArgument], defaults: Mapping[str, str] | None = None) -> list:
    """DeclareLaunchArgument for each argument (default empty = "not given", unless ``defaults`` says)."""
    from launch.actions import DeclareLaunchArgument

    defaults = defaults or {}
    return [DeclareLaunchArgument(a.name, default_value=defaults.get(a.name, ""),
                                  description=f"{a.description}; unset = the value in the parameter file")
            for a in arguments]


def given_values(context: Any, arguments: Sequence[ParameterArgument]) -> dict[str, str]:
    """The launch arguments' values in ``context`` (a LaunchContext)."""
    from launch.substitutions import LaunchConfiguration

    return {a.name: LaunchConfiguration(a.name).perform(context) for a in arguments}


class NodeExitReport:
    """Why a launched node ended, for the launch's last line: the node's own one-line error.

    The nodes of this package end a failure with ``<node name>: error: <reason>`` on stderr
    (:func:`flow_policy_ros.ros.node_runner.report_fatal`); :meth:`on_output` keeps the last such
    line of the node's output, :meth:`describe` turns an exit into one sentence naming the node,
    its exit status and that reason. Plain Python: tested without ``launch``.
    """

    def __init__(self, node_name: str) -> None:
        self.node_name = node_name
        self.reason = ""
        self._marker = f"{node_name}: error: "
        self._partial = ""

    def on_output(self, text: bytes | str) -> None:
        """Feed a chunk of the node's stdout/stderr (lines may span chunks)."""
        if isinstance(text, bytes):
            text = text.decode(errors="replace")
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            start = line.find(self._marker)
            if start >= 0:
                self.reason = line[start + len(self._marker):].strip()

    def describe(self, returncode: int) -> str:
        """``<node> exited with status <n>: <reason>`` (or a pointer to its output when it gave none)."""
        self.on_output("\n")  # a last line without its newline
        reason = self.reason or "it printed no error line; see its output above"
        return f"{self.node_name} exited with status {returncode}: {reason}"


class NodeFailed(Exception):
    """A launched node exited with a non-zero status; the message names the node and its reason."""


def end_launch_with(node: Any, node_name: str) -> list:
    """Event handlers for ``node`` (a launch_ros Node named ``node_name``), to add to the launch
    description after it: a non-zero exit ends the launch with status 1 and, as its last error
    line, ``<node_name> exited with status <n>: <the node's own error line>``; an exit with status 0
    shuts the launch down (status 0). Exits while the launch is already shutting down (Ctrl-C) are
    left alone.

    launch gives a non-zero status only when an action raises, and then prints "Caught exception in
    launch (see debug for traceback): <message>"; the message is the sentence that names the node and
    its reason, and the line before it (the node's own FATAL log line) says the same.
    """
    from launch.actions import EmitEvent, OpaqueFunction, RegisterEventHandler
    from launch.event_handlers import OnProcessExit, OnProcessIO
    from launch.events import Shutdown

    report = NodeExitReport(node_name)

    def on_io(event: Any) -> None:
        report.on_output(event.text)

    def on_exit(event: Any, context: Any) -> list | None:
        if context.is_shutdown:
            return None
        if event.returncode != 0:
            return [OpaqueFunction(function=_fail, args=[report.describe(event.returncode)])]
        return [EmitEvent(event=Shutdown(reason=f"{node_name} finished"))]

    return [RegisterEventHandler(OnProcessIO(target_action=node, on_stdout=on_io, on_stderr=on_io)),
            RegisterEventHandler(OnProcessExit(target_action=node, on_exit=on_exit))]


def _fail(context: Any, reason: str) -> None:
    raise NodeFailed(reason)
