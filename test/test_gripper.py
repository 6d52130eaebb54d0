"""A gripper as an extra action joint (position), end to end: bags with 7 arm joints + a gripper finger
(its JointState position, its command in the Float64MultiArray), a training config whose action joints
and limits include it, training, export, replay, and policy_node commanding 8 joints over DDS within
the gripper's own limits. Tiny sizes (30 training steps): this checks the plumbing, not the policy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO_ROOT, node_env

from flow_policy_ros.data import bag as bagio
from flow_policy_ros.policy.config import IIWA_JOINT_NAMES

pytestmark = pytest.mark.slow

EPOCH = 1_700_000_000_000_000_000
JOINTS = [*IIWA_JOINT_NAMES, "gripper_finger_joint"]
GRIPPER = (0.0, 0.04, 0.05)  # lower, upper (m), velocity (m/s): a prismatic finger
GOAL = np.array([0.5, 0.1, 0.4])


def gripper_bag(path: Path, seed: int, seconds: float = 2.0) -> Path:
    """Joint states at 100 Hz (arm and finger, shuffled order), a goal, 8-value commands at 50 Hz: the
    arm moves on sines, the finger closes from open to shut over the episode."""
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 2 * np.pi, 7)

    def q(t_s: np.ndarray) -> np.ndarray:
        arm = 0.4 * np.sin(1.1 * t_s[:, None] + phase)
        finger = GRIPPER[1] * (1.0 - np.clip(t_s / seconds, 0.0, 1.0))[:, None]
        return np.concatenate([arm, finger], axis=1)

    with bagio.BagWriter(path, "mcap") as writer:
        writer.write("/goal", bagio.POINT_STAMPED, bagio.point_stamped_msg(EPOCH - 10_000_000, GOAL), EPOCH - 10_000_000)
        t_js = np.arange(int(seconds * 100)) * 0.01
        for t, pos in zip(t_js, q(t_js)):
            order = rng.permutation(8)
            stamp = EPOCH + int(t * 1e9)
            writer.write("/joint_states", bagio.JOINT_STATE,
                         bagio.joint_state_msg(stamp, [JOINTS[i] for i in order], pos[order], np.zeros(8)), stamp)
        t_cmd = np.arange(int(seconds * 50) - 1) * 0.02
        for t, cmd in zip(t_cmd, q(t_cmd + 0.02)):
            writer.write("/commands", bagio.FLOAT64_MULTI_ARRAY, bagio.float64_multi_array_msg(cmd), EPOCH + int(t * 1e9))
    return path


def write_config(path: Path) -> Path:
    config = yaml.safe_load((REPO_ROOT / "config" / "train_reach.yaml").read_text())
    policy = config["policy"]
    policy["observation"]["joint_names"] = JOINTS
    policy["action_joint_names"] = JOINTS
    policy["limits"] = {"lower": [-2.9, -2.0, -2.9, -2.0, -2.9, -2.0, -3.0, GRIPPER[0]],
                        "upper": [2.9, 2.0, 2.9, 2.0, 2.9, 2.0, 3.0, GRIPPER[1]],
                        "velocity": [1.5] * 7 + [GRIPPER[2]]}
    config["train"].update(steps=30, checkpoint_every=30, log_every=10)
    config["train"]["val_fraction"] = 0.0
    path.write_text(yaml.safe_dump(config))
    return path


def flow_policy(*args: str, timeout_s: float = 90.0) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "flow_policy_ros", *args], cwd=REPO_ROOT, env=node_env(),
                          capture_output=True, text=True, timeout=timeout_s)
    assert proc.returncode == 0, f"flow-policy {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_gripper_joint_through_training_export_replay_and_the_node(tmp_path, node_process):
    data = tmp_path / "bags"
    for i in range(3):
        gripper_bag(data / f"episode_{i:04d}", seed=i)
    config = write_config(tmp_path / "gripper.yaml")
    flow_policy("train", str(data), "--config", str(config), "--out", str(tmp_path / "run"), "--no-progress")
    model = tmp_path / "gripper.onnx"
    flow_policy("export", str(tmp_path / "run" / "last.pt"), "--out", str(model))

    from flow_policy_ros.runtime.onnx_policy import OnnxPolicy

    meta = OnnxPolicy(model, providers=["CPUExecutionProvider"], warmup=0).metadata
    assert list(meta.action_joint_names) == JOINTS and meta.action_dim == 8
    assert meta.limits.upper[-1] == pytest.approx(GRIPPER[1]) and meta.limits.velocity[-1] == pytest.approx(GRIPPER[2])

    flow_policy("replay", str(data), "--model", str(model), "--config", str(config), "--out", str(tmp_path / "replay"),
                "--plots", "all", "--no-progress")
    report = json.loads((tmp_path / "replay" / "report.json").read_text())
    assert set(report["bags"][0]["per_joint"]) == set(JOINTS)
    assert len(report["bags"][0]["first_action"]["mae_rad_per_joint"]) == 8

    from fake_robot import SpinningNode
    from geometry_msgs.msg import PointStamped
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Float64MultiArray

    class GripperRobot(SpinningNode):
        def __init__(self) -> None:
            super().__init__("gripper_robot")
            self.commands: list[np.ndarray] = []
            latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                                 durability=DurabilityPolicy.TRANSIENT_LOCAL)
            self.joints = self.node.create_publisher(JointState, "joint_states", qos_profile_sensor_data)
            goal = PointStamped()
            goal.header.frame_id = "world"
            goal.point.x, goal.point.y, goal.point.z = (float(v) for v in GOAL)
            self.node.create_publisher(PointStamped, "goal", latched).publish(goal)
            self.node.create_subscription(Float64MultiArray, "commands", self._on_command, 10)
            self.node.create_timer(0.01, self._publish)
            self.start_spinning()

        def _publish(self) -> None:
            names = JOINTS[::-1]  # another order than the model's: matched by name
            msg = JointState(name=names, position=[0.02 if n == JOINTS[-1] else 0.1 for n in names], velocity=[0.0] * 8)
            msg.header.stamp = self.node.get_clock().now().to_msg()
            self.joints.publish(msg)

        def _on_command(self, msg: Float64MultiArray) -> None:
            with self.lock:
                self.commands.append(np.array(msg.data))

    robot = GripperRobot()
    try:
        node_process(params={"model_path": str(model), "providers": ["CPUExecutionProvider"], "warmup": 1,
                             "ood_margin": 100.0})
        robot.wait_for(lambda: len(robot.commands) > 20, 20.0, "8-joint commands")
        with robot.lock:
            commands = np.array(robot.commands)
    finally:
        robot.close()
    assert commands.shape[1] == 8
    finger = commands[:, -1]
    assert np.all((finger >= GRIPPER[0] - 1e-9) & (finger <= GRIPPER[1] + 1e-9))
    step = GRIPPER[2] * 0.02
    assert np.all(np.abs(np.diff(np.concatenate([[0.02], finger]))) <= step + 1e-9)  # from the measured 0.02 m
