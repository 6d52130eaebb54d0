"""policy_node in shadow mode over DDS: a real node process against a fake robot in this process.

The robot publishes joint states and never moves by itself; the node must publish only its
previews (``/flow_policy_node/preview/...``), nothing on ``commands`` / ``joint_trajectory``, keep
every preview within the limits and one step (k + 1 for trajectory point k) of the measured arm,
follow the arm when it is moved by hand, and report the difference on /diagnostics.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from fake_robot import POSITIONS, FakeRobot
from std_msgs.msg import Float64MultiArray
from trajectory_msgs.msg import JointTrajectory

from flow_policy_ros.policy.config import IIWA_JOINT_NAMES, IIWA_VELOCITY_LIMIT

pytestmark = pytest.mark.slow

H, DT, SCALE = 8, 0.02, 0.05
STEP = np.array(IIWA_VELOCITY_LIMIT) * SCALE * DT  # rad per tick


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory):
    from model_factory import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("model") / "tiny.onnx", horizon=H)


class ShadowRobot(FakeRobot):
    """The fake robot, also listening to the node's preview topics."""

    def __init__(self) -> None:
        self.previews: list[tuple[float, np.ndarray, np.ndarray]] = []  # (time, points (K, A), arm offset then)
        super().__init__()
        self.node.create_subscription(Float64MultiArray, "/flow_policy_node/preview/commands", self._on_preview_command, 10)
        self.node.create_subscription(JointTrajectory, "/flow_policy_node/preview/joint_trajectory",
                                      self._on_preview_trajectory, 10)

    def _on_preview_command(self, msg: Float64MultiArray) -> None:
        with self.lock:
            self.previews.append((time.monotonic(), np.array(msg.data)[None, :], self.offset.copy()))

    def _on_preview_trajectory(self, msg: JointTrajectory) -> None:
        if msg.points:
            with self.lock:
                self.previews.append((time.monotonic(), np.array([p.positions for p in msg.points]), self.offset.copy()))


@pytest.mark.parametrize("execution", ["stream", "trajectory"])
def test_shadow_mode_publishes_only_previews_that_follow_the_arm(model_path, node_process, execution):
    robot = ShadowRobot()
    try:
        node_process(params={"model_path": str(model_path), "providers": ["CPUExecutionProvider"], "warmup": 1,
                             "execution": execution, "shadow": True, "max_velocity_scale": SCALE})
        robot.wait_for(lambda: len(robot.previews) > 5, 20.0, "previews")
        robot.wait_for(lambda: robot.diagnostics and int(robot.diagnostics[-1]["shadow_ticks_compared"]) > 0, 5.0,
                       "shadow figures on /diagnostics")
        moved = np.zeros(7)
        moved[2] = 0.1  # someone moves joint 3 by hand (less than the tracking tolerance), back, and again:
        moves = []      # a move that lands on the observation of a replan is absorbed by it, three are not
        for offset in (moved, np.zeros(7), moved):
            robot.offset = offset
            moves.append(time.monotonic())
            time.sleep(0.5)
        time.sleep(0.5)
        since = time.monotonic()
        robot.wait_for(lambda: robot.diagnostics and float(robot.diagnostics[-1]["shadow_diff_max_rad"]) >= 0.09
                       and any(t > since for t, _, _ in robot.previews), 5.0, "the hand-guided move in the figures")
        time.sleep(1.1)  # a fresh diagnostics message
        with robot.lock:
            previews = list(robot.previews)
            diag = dict(robot.diagnostics[-1])
            commands, trajectories = list(robot.commands), list(robot.trajectories)
    finally:
        robot.close()
    assert commands == [] and trajectories == [], "shadow mode published on commands/joint_trajectory"
    for arrived, points, offset in previews:
        if any(move <= arrived < move + 0.3 for move in moves):
            continue  # computed around the move: which position it saw is unknown
        arm = POSITIONS + offset
        for k, point in enumerate(points):
            assert np.all(np.abs(point - arm) <= (k + 1) * STEP + 1e-6), f"preview point {k} {point} strays from {arm}"
    assert any(np.all(np.abs(points[0] - (POSITIONS + moved)) <= STEP + 1e-6) for t, points, _ in previews if t > since), \
        "the previews did not follow the moved arm"
    assert diag["shadow"] == "true" and diag["state"] == "running"
    assert diag["shadow_worst_joint"] == IIWA_JOINT_NAMES[2]
    assert float(diag[f"shadow_worst_rad.{IIWA_JOINT_NAMES[2]}"]) >= 0.09
    steps = 1 if execution == "stream" else 4  # trajectory: the arm stands, a chunk runs ahead for 4 ticks
    assert 0.0 <= float(diag["shadow_diff_p50_rad"]) <= steps * STEP.max() + 1e-4
    assert float(diag["shadow_diff_p50_rad"]) <= float(diag["shadow_diff_p95_rad"]) <= float(diag["shadow_diff_max_rad"])
    print(f"shadow diagnostics ({execution}):", {k: v for k, v in diag.items() if k.startswith("shadow")})
