"""The ros2_control examples in config/ros2_control/ fit the node: each names the shipped model's
action joints (in the model's order: a forward controller matches commands by position), a
controller of the right type, and a launch command that remaps the node's topic for its execution
mode onto the topic that controller subscribes to (``/<controller>/joint_trajectory`` or
``/<controller>/commands``), with launch arguments policy.launch.py declares."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import onnx
import pytest
import yaml

from flow_policy_ros.ros.launch_support import POLICY_ARGUMENTS, POLICY_REMAPS
from flow_policy_ros.runtime.metadata import PolicyMetadata

REPO_ROOT = Path(__file__).resolve().parents[1]
CONTROL = REPO_ROOT / "config" / "ros2_control"
POLICY_NODE = REPO_ROOT / "flow_policy_ros" / "ros" / "policy_node.py"

#: file -> (controller name, controller type, node execution mode, the node's topic, the controller's topic suffix)
CASES = {
    "joint_trajectory_controller.yaml": ("joint_trajectory_controller",
                                         "joint_trajectory_controller/JointTrajectoryController",
                                         "trajectory", "joint_trajectory", "joint_trajectory"),
    "forward_position_controller.yaml": ("forward_position_controller",
                                         "forward_command_controller/ForwardCommandController",
                                         "stream", "commands", "commands"),
}


def shipped_action_joints() -> tuple[str, ...]:
    model = onnx.load(str(REPO_ROOT / "models" / "iiwa_reach.onnx"), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    return PolicyMetadata.from_json(props["flow_policy"]).action_joint_names


def node_topic_by_execution() -> dict[str, str]:
    """The node's own output topic per execution mode, read from policy_node.py's publisher choice."""
    source = POLICY_NODE.read_text()
    match = re.search(r'\(Float64MultiArray, "(\w+)"\) if p\.execution == "stream" else \(JointTrajectory, "(\w+)"\)', source)
    assert match, "policy_node.py no longer chooses its publisher as this test expects; update the test"
    return {"stream": match.group(1), "trajectory": match.group(2)}


def launch_command(path: Path) -> list[str]:
    lines = [line.lstrip("# ").strip() for line in path.read_text().splitlines() if line.startswith("#")]
    (command,) = [line for line in lines if line.startswith("ros2 launch flow_policy_ros policy.launch.py")]
    return shlex.split(command)


def test_both_examples_exist():
    assert sorted(p.name for p in CONTROL.glob("*.yaml")) == sorted(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_controller_yaml_names_the_models_joints_and_a_controller_of_the_right_type(name):
    controller, kind, _, _, _ = CASES[name]
    data = yaml.safe_load((CONTROL / name).read_text())
    manager = data["controller_manager"]["ros__parameters"]
    assert manager[controller]["type"] == kind
    assert manager["joint_state_broadcaster"]["type"] == "joint_state_broadcaster/JointStateBroadcaster"
    assert manager["update_rate"] >= 50  # at least the node's control rate
    params = data[controller]["ros__parameters"]
    assert tuple(params["joints"]) == shipped_action_joints()  # same names, same order
    if kind.startswith("forward_command_controller"):
        assert params["interface_name"] == "position"
    else:
        assert params["command_interfaces"] == ["position"]
        assert params["allow_nonzero_velocity_at_trajectory_end"] is True  # chunks end mid-motion


@pytest.mark.parametrize("name", sorted(CASES))
def test_launch_command_remaps_the_nodes_topic_onto_the_controllers(name):
    controller, _, execution, node_topic, suffix = CASES[name]
    assert node_topic_by_execution()[execution] == node_topic
    tokens = launch_command(CONTROL / name)
    arguments = dict(t.split(":=", 1) for t in tokens[4:])
    declared = {a.name for a in POLICY_ARGUMENTS} | set(POLICY_REMAPS) | {"params_file"}
    assert set(arguments) <= declared
    assert arguments["execution"] == execution
    remaps = {POLICY_REMAPS[arg]: topic for arg, topic in arguments.items() if arg in POLICY_REMAPS}
    assert remaps == {node_topic: f"/{controller}/{suffix}"}


def test_first_motion_page_uses_the_same_files_and_topics():
    text = (REPO_ROOT / "docs" / "first_motion.md").read_text()
    for name, (controller, _, execution, node_topic, suffix) in CASES.items():
        assert f"`{node_topic}` →" in text  # the node topic it remaps
        assert f"config/ros2_control/{name}" in text
        assert f"/{controller}/{suffix}" in text and f"execution:={execution}" in text
    assert "max_velocity_scale" in text and "e-stop" in text.lower() and "shadow mode" in text.lower()
