"""The robot side of the policy_node DDS tests, in the test process: a real rclpy node that
publishes joint states at 100 Hz and a latched goal and records what the policy sends back."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PointStamped
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray
from trajectory_msgs.msg import JointTrajectory

from flow_policy_ros.contract import IIWA_JOINT_NAMES

#: Measured positions (rad), model joint order; 0.2 rad apart so a name mix-up cannot hide.
POSITIONS = np.array([-0.6, -0.4, -0.2, 0.0, 0.2, 0.4, 0.6])



def wait_until(lock: threading.Lock, condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ``condition()`` under ``lock`` every 20 ms; AssertionError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with lock:
            if condition():
                return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


class SpinningNode:
    """A real rclpy node in this process, in a context of its own, spun by an executor thread.

    Subclasses create their publishers and subscriptions after ``super().__init__(name)`` and then
    call :meth:`start_spinning`; ``lock`` guards what their callbacks record.
    """

    def __init__(self, name: str) -> None:
        self.context = Context()
        rclpy.init(context=self.context)
        self.node = Node(name, context=self.context)
        self.lock = threading.Lock()

    def start_spinning(self) -> None:
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def wait_for(self, condition: Callable[[], bool], timeout_s: float, what: str) -> None:
        wait_until(self.lock, condition, timeout_s, what)

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self.thread.join(timeout=5.0)


class FakeRobot(SpinningNode):
    """The robot side in this process: publishes joint states at 100 Hz and a latched goal,
    records commands, trajectories and diagnostics with their arrival time (monotonic s)."""

    def __init__(self, order: list[int] | None = None) -> None:
        super().__init__("fake_robot")
        self.order = order or list(range(7))
        self.mode = "ok"  # ok | pause | nan | missing
        self.offset = np.zeros(7)  # added to POSITIONS (rad, model joint order): the arm moved
        self.commands: list[tuple[float, np.ndarray]] = []
        self.trajectories: list[tuple[float, JointTrajectory]] = []
        self.diagnostics: list[dict[str, str]] = []
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.joint_pub = self.node.create_publisher(JointState, "joint_states", qos_profile_sensor_data)
        goal_pub = self.node.create_publisher(PointStamped, "goal", latched)
        goal = PointStamped()
        goal.header.frame_id = "world"
        goal.point.x, goal.point.y, goal.point.z = 0.5, 0.1, 0.4
        goal_pub.publish(goal)
        self.node.create_subscription(Float64MultiArray, "commands", self._on_command, reliable)
        self.node.create_subscription(JointTrajectory, "joint_trajectory", self._on_trajectory, reliable)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        self.node.create_timer(0.01, self._publish_joint_state)
        self.start_spinning()

    def _publish_joint_state(self) -> None:
        if self.mode == "pause":
            return
        names = [IIWA_JOINT_NAMES[i] for i in self.order]
        positions = [float(POSITIONS[i] + self.offset[i]) for i in self.order]
        if self.mode == "nan":
            positions[3] = float("nan")
        if self.mode == "missing":
            names, positions = names[1:], positions[1:]
        msg = JointState(name=names, position=positions, velocity=[0.0] * len(names))
        msg.header.stamp = self.node.get_clock().now().to_msg()
        self.joint_pub.publish(msg)

    def _on_command(self, msg: Float64MultiArray) -> None:
        with self.lock:
            self.commands.append((time.monotonic(), np.array(msg.data)))

    def _on_trajectory(self, msg: JointTrajectory) -> None:
        with self.lock:
            self.trajectories.append((time.monotonic(), msg))

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name.endswith(": policy"):
                with self.lock:
                    self.diagnostics.append({kv.key: kv.value for kv in status.values})

    def commands_between(self, start: float, stop: float) -> list[np.ndarray]:
        with self.lock:
            return [c for t, c in self.commands if start <= t < stop]
