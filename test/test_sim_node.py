"""End-to-end tests of sim_node: a real node process, driven over DDS from this process.

The test process plays the commander: it publishes JointTrajectory / Float64MultiArray and
records joint_states, goal and episode outcomes. The expected setpoints come from the pure
``TrajectoryFollower`` fed the same inputs, so the arm is checked against the exact JTC
semantics, with a tolerance for the physical tracking lag of position control.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT, node_env, stop_process
from fake_robot import SpinningNode
from geometry_msgs.msg import PointStamped
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float64MultiArray, String
from trajectory_msgs.msg import JointTrajectory

from flow_policy_ros.policy.config import IIWA_JOINT_NAMES
from flow_policy_ros.ros.launch_harness import ros_param_arg
from flow_policy_ros.ros.messages import chunk_to_trajectory_msg
from flow_policy_ros.sim.tasks import sample_episode
from flow_policy_ros.sim.trajectory import TrajectoryFollower

pytestmark = pytest.mark.slow

START_Q = np.asarray(sample_episode("reach", 0).start_q)
#: Tracking tolerance (rad): PyBullet position control with feed-forward lags about a physics step.
TRACK_TOL = 0.02


def start_sim_node(log_path: Path, **params: object) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "flow_policy_ros.ros.sim_node", "--ros-args"]
    for name, value in params.items():
        cmd += ["-p", ros_param_arg(name, value)]
    log = open(log_path, "w")  # noqa: SIM115 - closed by stop_process
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=node_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    proc._log_file = log  # type: ignore[attr-defined]
    return proc


class Commander(SpinningNode):
    """This process's side: publishes commands, records joint states (stamp ns, positions), goal, outcomes."""

    def __init__(self) -> None:
        super().__init__("test_commander")
        self.states: list[tuple[int, float, np.ndarray]] = []  # (stamp ns, receipt monotonic s, positions)
        self.goals: list[np.ndarray] = []
        self.outcomes: list[dict] = []
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        outcomes = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.traj_pub = self.node.create_publisher(JointTrajectory, "joint_trajectory", reliable)
        self.cmd_pub = self.node.create_publisher(Float64MultiArray, "commands", reliable)
        self.node.create_subscription(JointState, "joint_states", self._on_state, qos_profile_sensor_data)
        self.node.create_subscription(PointStamped, "goal", self._on_goal, latched)
        self.node.create_subscription(String, "episode_outcome", self._on_outcome, outcomes)
        self.start_spinning()

    def _on_state(self, msg: JointState) -> None:
        index = [list(msg.name).index(n) for n in IIWA_JOINT_NAMES]
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        with self.lock:
            self.states.append((stamp, time.monotonic(), np.asarray(msg.position)[index]))

    def _on_goal(self, msg: PointStamped) -> None:
        with self.lock:
            self.goals.append(np.array([msg.point.x, msg.point.y, msg.point.z]))

    def _on_outcome(self, msg: String) -> None:
        with self.lock:
            self.outcomes.append(json.loads(msg.data))

    def latest(self) -> tuple[int, np.ndarray]:
        with self.lock:
            stamp, _, q = self.states[-1]
            return stamp, q



@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Callable[..., Commander]]:
    procs: list[subprocess.Popen] = []
    commanders: list[Commander] = []

    def start(**params: object) -> Commander:
        base: dict[str, object] = {"task": "reach", "seeds": [0], "end_on_success": False, "time_limit_s": 60.0,
                                   "reset_pause_s": 0.0}
        base.update(params)
        procs.append(start_sim_node(tmp_path / "sim_node.log", **base))
        commanders.append(Commander())
        commanders[-1].proc = procs[-1]  # type: ignore[attr-defined]
        return commanders[-1]

    try:
        yield start
    finally:
        for commander in commanders:
            commander.close()
        for proc in procs:
            stop_process(proc)
            assert proc.returncode in (0, -2), (tmp_path / "sim_node.log").read_text()[-3000:]


def test_joint_states_rate_goal_and_hold(setup):
    """Without commands: joint_states >= 100 Hz stamped with wall time, the episode goal latched, no drift."""
    robot = setup(wait_for_commander=False)
    robot.wait_for(lambda: len(robot.states) > 10 and robot.goals, 20.0, "joint states and the goal")
    time.sleep(0.5)
    with robot.lock:
        first = len(robot.states)
    time.sleep(2.0)
    with robot.lock:
        window = robot.states[first:]
        goal = robot.goals[-1]
    rate = len(window) / 2.0
    assert rate >= 100.0, f"joint_states at {rate} Hz"
    stamps = np.array([s for s, _, _ in window])
    assert np.all(np.diff(stamps) > 0)
    assert abs(stamps[-1] * 1e-9 - time.time()) < 0.2, "stamps are not wall-clock time"
    np.testing.assert_allclose(goal, sample_episode("reach", 0).goal)
    drift = np.max(np.abs(window[-1][2] - START_Q))
    assert drift < 1e-3, f"arm drifted {drift} rad while holding"


def test_trajectory_executed_and_replacement_spliced(setup):
    """A 1.6 s trajectory is followed with JTC timing; a second one stamped mid-way takes over from its
    stamp (the first one's end point is never reached) and the arm ends at the second one's end point."""
    robot = setup()  # waits for this commander's publisher before starting the episode
    robot.wait_for(lambda: len(robot.states) > 20, 20.0, "joint states")
    time.sleep(0.5)  # the episode has started (reset_pause_s = 0)
    _, q0 = robot.latest()
    target_a = q0 + np.array([0.25, 0.2, -0.2, 0.25, 0.2, 0.25, -0.3])
    target_b = q0 + np.array([-0.2, 0.1, 0.2, 0.1, -0.2, -0.1, 0.3])
    follower = TrajectoryFollower(q0)
    now = time.time_ns()
    stamp_a = now + 200_000_000
    points_a = q0 + np.linspace(0.0, 1.0, 16)[:, None] * (target_a - q0)  # 16 points, 0.1 s apart
    robot.traj_pub.publish(chunk_to_trajectory_msg(points_a, IIWA_JOINT_NAMES, 0.1, stamp_a))
    follower.set_trajectory(stamp_a, 0.1 * np.arange(1, 17), points_a, now)
    stamp_b = stamp_a + 800_000_000
    time.sleep(0.4)
    points_b = np.array([target_b])
    robot.traj_pub.publish(chunk_to_trajectory_msg(points_b, IIWA_JOINT_NAMES, 1.0, stamp_b))  # reached at stamp_b + 1 s
    follower.set_trajectory(stamp_b, [1.0], points_b, time.time_ns())
    time.sleep((stamp_b + 1_500_000_000 - time.time_ns()) * 1e-9)
    with robot.lock:
        states = [(s, q) for s, _, q in robot.states if stamp_a - 100_000_000 <= s]
    errors = [np.max(np.abs(q - follower.sample(s)[0])) for s, q in states]
    assert len(states) > 200
    assert max(errors) < TRACK_TOL, f"max tracking error {max(errors):.4f} rad"
    mid = [q for s, q in states if abs(s - stamp_b) < 10_000_000][0]  # where the splice started
    np.testing.assert_allclose(mid, q0 + 0.5 * (target_a - q0), atol=TRACK_TOL)
    assert max(np.max(np.abs(q - target_a)) for _, q in states) > 0.1  # never reached A
    np.testing.assert_allclose(states[-1][1], target_b, atol=2e-3)


def test_stream_commands_move_the_arm(setup):
    """Float64MultiArray commands at 50 Hz (in a shuffled command joint order) move the arm to the
    commanded positions; when they stop, the arm holds the last one."""
    order = [6, 5, 4, 3, 2, 1, 0]
    robot = setup(command_joint_names=[IIWA_JOINT_NAMES[i] for i in order])
    robot.wait_for(lambda: len(robot.states) > 20, 20.0, "joint states")
    time.sleep(0.5)
    _, q0 = robot.latest()
    delta = np.array([0.3, -0.2, 0.2, 0.3, -0.2, 0.2, -0.3])
    for k in range(1, 51):  # 1 s ramp
        command = q0 + delta * k / 50
        robot.cmd_pub.publish(Float64MultiArray(data=command[order].tolist()))
        time.sleep(0.02)
    time.sleep(0.5)
    _, q_end = robot.latest()
    np.testing.assert_allclose(q_end, q0 + delta, atol=2e-3)
    time.sleep(0.5)
    _, q_later = robot.latest()
    assert np.max(np.abs(q_later - q_end)) < 1e-4, "arm drifted after the last command"


def test_episodes_end_and_report_outcomes(setup, tmp_path):
    """Two short episodes (time limit 0.5 s) run back to back, each outcome is published as JSON, and
    after the last one the node ends by itself with exit status 0 (a launch file ends with it). The 2 s
    reset pause gives DDS discovery time: without a commander the node starts at once, and it is gone
    once its episodes are over (measured: on a loaded machine discovery took longer than 1.2 s)."""
    robot = setup(wait_for_commander=False, seeds=[3, 4], time_limit_s=0.5, reset_pause_s=2.0)
    robot.wait_for(lambda: len(robot.outcomes) == 2, 20.0, "two episode outcomes")
    assert robot.proc.wait(timeout=15) == 0
    assert "all 2 episodes done" in (tmp_path / "sim_node.log").read_text()
    with robot.lock:
        outcomes = list(robot.outcomes)
    assert [o["seed"] for o in outcomes] == [3, 4] and [o["episode"] for o in outcomes] == [0, 1]
    for o in outcomes:
        assert o["task"] == "reach" and o["success"] is False and o["time_to_goal_s"] is None
        assert o["duration_s"] == pytest.approx(0.5, abs=0.01)


class CameraListener(SpinningNode):
    """Records the camera's Image messages (stamp ns, receipt wall ns, message) and any goal."""

    def __init__(self) -> None:
        super().__init__("test_camera_listener")
        self.images: list[tuple[int, int, Image]] = []
        self.goals: list[PointStamped] = []
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.node.create_subscription(Image, "camera/front/image_raw", self._on_image, qos_profile_sensor_data)
        self.node.create_subscription(PointStamped, "goal", self._on_goal, latched)
        self.start_spinning()

    def _on_image(self, msg: Image) -> None:
        with self.lock:
            self.images.append((msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec, time.time_ns(), msg))

    def _on_goal(self, msg: PointStamped) -> None:
        with self.lock:
            self.goals.append(msg)


def test_reach_object_publishes_camera_images_and_no_goal(tmp_path: Path) -> None:
    """reach_object: rgb8 96x96 Images at 12.5 Hz stamped on the joint-state clock, the first (reset pause)
    frame identical to the in-process render of the episode's start, no goal publisher; the episode bag
    records the frames. Bounded: 3 s pause + 1.5 s episode."""
    from flow_policy_ros.data.bag import list_topics, read_image_topic
    from flow_policy_ros.sim.arm import IiwaArm
    from flow_policy_ros.sim.camera import CameraSpec

    proc = start_sim_node(tmp_path / "sim_node.log", task="reach_object", seeds=[1], wait_for_commander=False,
                          reset_pause_s=3.0, time_limit_s=1.5, record_path=str(tmp_path / "bags"))
    listener = CameraListener()
    try:
        assert proc.wait(timeout=25) == 0, (tmp_path / "sim_node.log").read_text()[-3000:]
        time.sleep(0.2)
        with listener.lock:
            images, goals = list(listener.images), list(listener.goals)
        assert listener.node.count_publishers("/goal") == 0 and not goals
    finally:
        listener.close()
        stop_process(proc)
    assert len(images) >= 20, f"only {len(images)} images"
    for stamp, received, msg in images:
        assert (msg.encoding, msg.height, msg.width, msg.step, msg.is_bigendian) == ("rgb8", 96, 96, 288, 0)
        assert len(msg.data) == 96 * 288 and msg.header.frame_id == "front_optical_frame"
        assert 0 <= received - stamp < 200_000_000, "stamp is not the sim-synchronised wall time"
    stamps = np.array([s for s, _, _ in images])
    assert np.all(np.diff(stamps) > 0)
    spec = sample_episode("reach_object", 1)
    with IiwaArm() as arm:
        arm.reset(spec.start_q, visuals=spec.visuals)
        expected = arm.render(CameraSpec())
    first = np.frombuffer(bytes(images[0][2].data), np.uint8).reshape(96, 96, 3)
    assert np.array_equal(first, expected)
    # the running episode's frames: 1.5 s at 12.5 Hz, every 19-20 physics steps (79.2-83.3 ms)
    bag = next((tmp_path / "bags").iterdir())
    assert {"/object_position", "/camera/front/image_raw"} <= set(list_topics(bag)) and "/goal" not in list_topics(bag)
    bag_stamps, frames = read_image_topic(bag, "/camera/front/image_raw")
    assert len(frames) in (18, 19, 20) and frames.shape[1:] == (96, 96, 3)
    gaps = np.diff(bag_stamps)
    assert np.all((gaps >= 79_000_000) & (gaps <= 83_400_000)), gaps
    received = {s: np.frombuffer(bytes(m.data), np.uint8).reshape(96, 96, 3) for s, _, m in images}
    common = [i for i, s in enumerate(bag_stamps) if s in received]
    assert len(common) >= 10 and all(np.array_equal(frames[i], received[bag_stamps[i]]) for i in common)


def test_reach_publishes_no_camera_by_default(setup) -> None:
    robot = setup(wait_for_commander=False)
    robot.wait_for(lambda: len(robot.states) > 10 and robot.goals, 20.0, "joint states and the goal")
    assert robot.node.count_publishers("/camera/front/image_raw") == 0


def test_camera_parameters_are_validated_with_their_names() -> None:
    from flow_policy_ros.ros.sim_node import PARAMETERS, SimNodeParams

    values = {name: (tuple(spec.default) if isinstance(spec.default, list) else spec.default)
              for name, spec in PARAMETERS.items()}
    values["seeds"] = ()
    assert SimNodeParams(**values).camera_spec is None  # reach: camera off under 'auto'
    assert SimNodeParams(**{**values, "task": "reach_object"}).camera_spec.topic == "camera/front/image_raw"
    assert not SimNodeParams(**{**values, "task": "reach_object"}).publishes_goal
    assert SimNodeParams(**{**values, "camera": "enabled"}).publishes_goal
    with pytest.raises(ValueError, match="parameter camera must be one of"):
        SimNodeParams(**{**values, "camera": "on"})
    with pytest.raises(ValueError, match="parameters camera_\\*: .*eye"):
        SimNodeParams(**{**values, "camera": "enabled", "camera_eye": (1.0, 0.0)})
