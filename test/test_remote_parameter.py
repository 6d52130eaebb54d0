"""flow-policy robot-config --from-parameter over DDS: the robot_description string parameter of a
running node (a stand-in for robot_state_publisher, a real rclpy node in this process) gives the
same robot section as the URDF file; a missing node or parameter is one line and exit 2."""

from __future__ import annotations

import os
from pathlib import Path

import pybullet_data
from fake_robot import SpinningNode

from flow_policy_ros.cli import main

IIWA_URDF = Path(pybullet_data.getDataPath()) / "kuka_iiwa" / "model.urdf"


def _body(text: str) -> list[str]:
    """The YAML without its first header line (which names the source)."""
    return text.splitlines()[1:]


def test_from_parameter_matches_the_urdf_file(tmp_path, capsys):
    name = f"fake_robot_state_publisher_{os.getpid()}"
    publisher = SpinningNode(name)
    publisher.node.declare_parameter("robot_description", IIWA_URDF.read_text())
    publisher.node.declare_parameter("publish_frequency", 20.0)
    publisher.start_spinning()
    try:
        code = main(["robot-config", "--from-parameter", f"/{name}", "--timeout", "15", "--out", str(tmp_path / "p.yaml")])
        missing = main(["robot-config", "--from-parameter", f"/{name}_absent", "--timeout", "1"])
    finally:
        publisher.close()
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 0
    assert main(["robot-config", "--urdf", str(IIWA_URDF), "--out", str(tmp_path / "f.yaml")]) == 0
    from_parameter = (tmp_path / "p.yaml").read_text()
    assert f"the URDF parameter robot_description of /{name}" in from_parameter.splitlines()[0]
    assert _body(from_parameter) == _body((tmp_path / "f.yaml").read_text())
    assert missing == 2 and len(err) == 1
    assert f"no service /{name}_absent/get_parameters within 1 s" in err[0]


def test_from_parameter_of_a_node_without_robot_description(capsys):
    name = f"fake_node_without_description_{os.getpid()}"
    node = SpinningNode(name)
    node.node.declare_parameter("publish_frequency", 20.0)
    node.start_spinning()
    try:
        code = main(["robot-config", "--from-parameter", name, "--timeout", "15"])
    finally:
        node.close()
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.strip() == f"flow-policy robot-config: error: --from-parameter {name}: parameter 'robot_description' is not set"
