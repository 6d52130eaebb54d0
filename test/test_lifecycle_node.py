"""The managed (lifecycle) policy node, driven through its real lifecycle services over DDS.

Each test starts ``python -m flow_policy_ros.ros.policy_node`` with ``autostart:=false`` and a tiny
real ONNX policy, plays the robot in this process (``fake_robot.FakeRobot``) and calls
``/flow_policy_node/change_state`` and ``/flow_policy_node/get_state`` (lifecycle_msgs services,
as ``ros2 lifecycle set`` does), checking what the node publishes in each state: nothing while
unconfigured or inactive, commands while active, one empty trajectory on deactivate in
trajectory mode, and a re-activation that does not load the model again. The ``shutdown``
transition ends the process (status 0); SIGINT/SIGTERM run the same shutdown first (empty trajectory
delivered to this process's subscriber before the node process exits).
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fake_robot import POSITIONS, FakeRobot
from geometry_msgs.msg import PointStamped
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rclpy.lifecycle import TransitionCallbackReturn

from flow_policy_ros.contract import IIWA_JOINT_NAMES, goal_feature
from flow_policy_ros.policy.config import IIWA_VELOCITY_LIMIT

pytestmark = pytest.mark.slow

H = 8
DT = 0.02
SERVICE_TIMEOUT_S = 20.0


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from model_factory import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("model") / "tiny.onnx", horizon=H)


class LifecycleClient:
    """Calls the policy node's lifecycle services from the robot's node (its executor thread spins them)."""

    def __init__(self, robot: FakeRobot, node_name: str = "flow_policy_node") -> None:
        self.robot = robot
        self.change = robot.node.create_client(ChangeState, f"/{node_name}/change_state")
        self.get = robot.node.create_client(GetState, f"/{node_name}/get_state")
        assert self.change.wait_for_service(timeout_sec=SERVICE_TIMEOUT_S), "change_state service never appeared"
        assert self.get.wait_for_service(timeout_sec=SERVICE_TIMEOUT_S), "get_state service never appeared"

    def _call(self, client, request):
        future = client.call_async(request)
        deadline = time.monotonic() + SERVICE_TIMEOUT_S
        while not future.done():
            assert time.monotonic() < deadline, f"no answer from {client.srv_name}"
            time.sleep(0.01)
        return future.result()

    def state(self) -> str:
        return self._call(self.get, GetState.Request()).current_state.label

    def transition(self, transition_id: int) -> bool:
        return self._call(self.change, ChangeState.Request(transition=Transition(id=transition_id))).success


@pytest.fixture
def robot() -> Iterator[FakeRobot]:
    fake = FakeRobot()
    try:
        yield fake
    finally:
        fake.close()


def managed_params(model_path: Path, **overrides: object) -> dict[str, object]:
    params: dict[str, object] = {"model_path": str(model_path), "providers": ["CPUExecutionProvider"], "warmup": 1,
                                 "autostart": False}
    params.update(overrides)
    return params


def received_after(robot: FakeRobot, start: float) -> tuple[list[np.ndarray], list]:
    """Commands and trajectories that arrived after ``start`` (monotonic s)."""
    with robot.lock:
        return [c for t, c in robot.commands if t > start], [m for t, m in robot.trajectories if t > start]


def diagnostics_count(robot: FakeRobot) -> int:
    with robot.lock:
        return len(robot.diagnostics)


def log_count(log: Path, text: str) -> int:
    return log.read_text().count(text)


def test_trajectory_mode_every_transition(model_path, node_process, robot, tmp_path):
    """unconfigured: nothing published -> configure: diagnostics 'inactive', still no trajectory ->
    activate: trajectories -> deactivate: exactly one empty trajectory, then silence -> activate
    again without reloading the model -> deactivate, cleanup: diagnostics stop -> shutdown: finalized."""
    proc = node_process(params=managed_params(model_path, execution="trajectory"))
    log = tmp_path / "policy_node_0.log"
    client = LifecycleClient(robot)
    assert client.state() == "unconfigured"
    start = time.monotonic()
    time.sleep(1.5)
    assert received_after(robot, start) == ([], []) and diagnostics_count(robot) == 0

    assert client.transition(Transition.TRANSITION_CONFIGURE)
    assert client.state() == "inactive"
    configured = time.monotonic()
    robot.wait_for(lambda: bool(robot.diagnostics), 5.0, "diagnostics of the configured node")
    time.sleep(1.0)
    assert received_after(robot, configured) == ([], [])
    with robot.lock:
        assert robot.diagnostics[-1]["state"] == "inactive" and robot.diagnostics[-1]["model_hash"]

    for activation in (1, 2):
        activated = time.monotonic()
        assert client.transition(Transition.TRANSITION_ACTIVATE)
        assert client.state() == "active"
        robot.wait_for(lambda since=activated: sum(t > since and len(m.points) > 0 for t, m in robot.trajectories) >= 5, 10.0,
                       f"trajectories after activation {activation}")
        assert received_after(robot, activated)[0] == [], "trajectory mode sent stream commands"
        deactivated = time.monotonic()
        assert client.transition(Transition.TRANSITION_DEACTIVATE)
        assert client.state() == "inactive"
        time.sleep(1.0)
        after = received_after(robot, deactivated)[1]
        assert len(after) >= 1 and len(after[-1].points) == 0, "no empty trajectory on deactivate"
        assert list(after[-1].joint_names) == list(IIWA_JOINT_NAMES)
        assert sum(len(m.points) == 0 for m in after) == 1, "more than one empty trajectory"
        assert all(len(m.points) > 0 for m in after[:-1]), "a trajectory was sent after the stop"
        with robot.lock:
            assert robot.diagnostics[-1]["state"] == "inactive"
    assert log_count(log, "configured: model") == 1, "re-activation loaded the model again"
    assert log_count(log, "activated: commanding") == 2

    assert client.transition(Transition.TRANSITION_CLEANUP)
    assert client.state() == "unconfigured"
    time.sleep(0.5)  # a diagnostics message may have been in flight
    seen = diagnostics_count(robot)
    time.sleep(1.5)
    assert diagnostics_count(robot) == seen, "an unconfigured node still publishes diagnostics"
    assert client.transition(Transition.TRANSITION_UNCONFIGURED_SHUTDOWN)
    assert_exits_after_shutdown(proc, log)


def test_stream_mode_stops_on_deactivate_and_resumes_from_the_last_command(model_path, node_process, robot, tmp_path):
    """Stream mode: no command while inactive; commands at ~50 Hz while active; none after deactivate.
    Re-activated after the arm moved 0.1 rad (while the robot held the last command), the new
    activation's fresh controller still walks from the last command SENT at the velocity limit:
    its first command is within one step of it, not a jump to the arm."""
    scale = 0.01
    proc = node_process(params=managed_params(model_path, max_velocity_scale=scale))
    client = LifecycleClient(robot)
    assert client.transition(Transition.TRANSITION_CONFIGURE)
    configured = time.monotonic()
    time.sleep(1.0)
    assert received_after(robot, configured) == ([], [])
    assert client.transition(Transition.TRANSITION_ACTIVATE)
    robot.wait_for(lambda: len(robot.commands) >= 50, 10.0, "50 commands")
    start = time.monotonic()
    time.sleep(1.0)
    rate = len(received_after(robot, start)[0]) / 1.0
    assert 40 <= rate <= 55, f"command rate {rate} Hz"
    assert client.transition(Transition.TRANSITION_DEACTIVATE)
    deactivated = time.monotonic()
    robot.offset = np.full(7, 0.1)
    time.sleep(1.0)
    with robot.lock:
        before = [c for t, c in robot.commands if t <= deactivated]
    assert received_after(robot, deactivated + 0.1) == ([], []), "commands while inactive"
    step = np.array(IIWA_VELOCITY_LIMIT) * scale * DT
    assert np.all(np.abs(before[-1] - (POSITIONS + robot.offset)) > 10 * step), "the arm did not move away"

    reactivated = time.monotonic()
    assert client.transition(Transition.TRANSITION_ACTIVATE)
    robot.wait_for(lambda: any(t > reactivated for t, _ in robot.commands), 10.0, "commands after re-activation")
    first = received_after(robot, reactivated)[0][0]
    assert np.all(np.abs(first - before[-1]) <= step + 1e-9), "re-activation jumped from the held command"
    assert client.state() == "active"
    assert client.transition(Transition.TRANSITION_ACTIVE_SHUTDOWN)
    shut_down = time.monotonic()
    assert_exits_after_shutdown(proc, tmp_path / "policy_node_0.log")
    time.sleep(0.3)
    assert received_after(robot, shut_down + 0.1) == ([], []), "commands after the shutdown transition"


def assert_exits_after_shutdown(proc: subprocess.Popen, log: Path) -> None:
    """After the ``shutdown`` transition the process ends by itself, status 0, saying so, without a traceback
    (before: it kept running, finalized, until Ctrl-C)."""
    assert proc.wait(timeout=10) == 0
    text = log.read_text()
    assert "shut down (finalized): exiting" in text and "Traceback" not in text, text[-3000:]


@pytest.mark.parametrize(("sig", "managed", "executor"), [
    (signal.SIGINT, False, "events"),
    (signal.SIGTERM, False, "single_threaded"),
    (signal.SIGINT, True, "single_threaded"),
    (signal.SIGTERM, True, "events"),
], ids=["SIGINT-autostart-events", "SIGTERM-autostart-single_threaded", "SIGINT-managed-single_threaded",
        "SIGTERM-managed-events"])
def test_signal_sends_the_empty_trajectory_before_exit(model_path, node_process, robot, tmp_path, sig, managed, executor):
    """SIGINT/SIGTERM while commanding in trajectory mode, autostarted ('plain') or activated through the
    lifecycle services: the node runs the deactivate path before it exits, so the robot's subscriber in
    this process receives exactly one empty trajectory, as the last message, and the process exits 0.
    (Before: rclpy's signal handler shut the context down first and no stop went out.)"""
    params = managed_params(model_path, execution="trajectory", executor=executor, autostart=not managed)
    proc = node_process(params=params)
    if managed:
        client = LifecycleClient(robot)
        assert client.transition(Transition.TRANSITION_CONFIGURE) and client.transition(Transition.TRANSITION_ACTIVATE)
    robot.wait_for(lambda: sum(len(m.points) > 0 for _, m in robot.trajectories) >= 5, 20.0, "trajectories")
    signalled = time.monotonic()
    proc.send_signal(sig)
    assert proc.wait(timeout=10) == 0
    robot.wait_for(lambda: any(t > signalled and not m.points for t, m in robot.trajectories), 2.0,
                   "the empty trajectory after the signal")
    time.sleep(0.2)
    after = received_after(robot, signalled)[1]
    assert len(after[-1].points) == 0 and sum(not m.points for m in after) == 1, [len(m.points) for m in after]
    assert list(after[-1].joint_names) == list(IIWA_JOINT_NAMES)
    text = (tmp_path / "policy_node_0.log").read_text()
    assert f"{sig.name}: shutting down" in text and "Traceback" not in text, text[-3000:]


def test_signal_in_stream_mode_stops_the_stream_and_exits(model_path, node_process, robot, tmp_path):
    """Stream mode: after SIGTERM no command arrives (the tick timer is gone before the process), exit 0."""
    proc = node_process(params=managed_params(model_path, autostart=True))
    robot.wait_for(lambda: len(robot.commands) >= 20, 20.0, "commands")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    stopped = time.monotonic()
    time.sleep(0.3)
    assert received_after(robot, stopped) == ([], [])
    text = (tmp_path / "policy_node_0.log").read_text()
    assert "SIGTERM: shutting down" in text and "shut down (finalized): exiting" in text and "Traceback" not in text


def test_configure_failure_leaves_the_node_unconfigured(node_process, robot, tmp_path):
    """A model path that does not exist: configure returns failure, the log names the file in one
    line, the node stays unconfigured (and alive), and activate is refused."""
    proc = node_process(params=managed_params(tmp_path / "missing.onnx"))
    log = tmp_path / "policy_node_0.log"
    client = LifecycleClient(robot)
    assert not client.transition(Transition.TRANSITION_CONFIGURE)
    assert client.state() == "unconfigured"
    assert not client.transition(Transition.TRANSITION_ACTIVATE)
    lines = [line for line in log.read_text().splitlines() if "configure failed" in line]
    assert len(lines) == 1 and "missing.onnx" in lines[0], log.read_text()
    assert proc.poll() is None


def test_autostart_failure_exits_with_status_1(node_process, tmp_path):
    """autostart (the default) with a bad model: the process exits 1 with one line naming the file,
    so a launch file's OnProcessExit handler sees the failure."""
    proc = node_process(params={"model_path": str(tmp_path / "missing.onnx")})
    assert proc.wait(timeout=30) == 1
    text = (tmp_path / "policy_node_0.log").read_text()
    assert "flow_policy_node: error: configure failed" in text and "missing.onnx" in text, text


def test_autostart_default_is_active(model_path, node_process, robot):
    """Without autostart given the node configures and activates itself: commands come without any
    lifecycle call, and get_state says active."""
    node_process(params={"model_path": str(model_path), "providers": ["CPUExecutionProvider"], "warmup": 1})
    client = LifecycleClient(robot)
    robot.wait_for(lambda: len(robot.commands) > 0, 15.0, "commands")
    assert client.state() == "active"



def test_callbacks_queued_before_a_transition_are_harmless(model_path):
    """The cause of the once-flaky 'no answer from get_state' after ACTIVE_SHUTDOWN: rclpy's EventsExecutor
    can dispatch ONE more tick of a timer that the transition destroyed (the tick was queued behind the
    change_state call; seen in 2 of 40 deactivations), and a message already queued for a destroyed
    subscription. On the released node that tick raised AttributeError and killed the process. Here the
    stale callbacks are called directly, in-process, after deactivate and after shutdown: no exception,
    nothing published, counters unchanged."""
    import rclpy
    from rclpy.context import Context
    from sensor_msgs.msg import JointState

    from flow_policy_ros.ros.launch_harness import ros_param_arg
    from flow_policy_ros.ros.policy_node import PolicyNode

    params = managed_params(model_path, execution="trajectory", executor="single_threaded")
    context = Context()
    rclpy.init(context=context, args=["--ros-args", *[a for k, v in params.items() for a in ("-p", ros_param_arg(k, v))]])
    try:
        node = PolicyNode(context=context)
        published = []
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        node._publisher.publish = published.append  # what a stale callback would send
        assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
        assert len(published) == 1 and not published[0].points  # the stop
        counters = node.controller.counters.as_dict()
        msg = JointState(name=list(IIWA_JOINT_NAMES), position=[0.0] * 7, velocity=[0.0] * 7)
        node._on_tick()
        node._on_joint_state(msg)
        assert published[1:] == [] and node.controller.counters.as_dict() == counters
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_shutdown() == TransitionCallbackReturn.SUCCESS and node.finalized
        node._on_tick()  # raised AttributeError ('NoneType' object has no attribute 'on_tick') before the fix
        node._publish_diagnostics()
        node._on_joint_state(msg)
        node._on_vector(goal_feature(), PointStamped())  # a goal (empty frame is fine; NaN-free) after release
        bad_goal = PointStamped()
        bad_goal.point.x = float("nan")
        node._on_vector(goal_feature(), bad_goal)
        node.destroy_node()
    finally:
        rclpy.try_shutdown(context=context)


def test_fatal_error_reaches_rosout(node_process, tmp_path):
    """A node that cannot start says why through the ROS logger too, not only on stderr: a FATAL Log from
    flow_policy_node naming the missing model arrives on /rosout (what rqt_console and the ROS log files show)."""
    from fake_robot import SpinningNode
    from rcl_interfaces.msg import Log
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    class RosoutListener(SpinningNode):
        def __init__(self) -> None:
            super().__init__("rosout_listener")
            self.logs: list[Log] = []
            qos = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
            self.node.create_subscription(Log, "/rosout", self._on_log, qos)
            self.start_spinning()

        def _on_log(self, msg: Log) -> None:
            with self.lock:
                self.logs.append(msg)

    listener = RosoutListener()
    try:
        proc = node_process(params={"model_path": str(tmp_path / "missing.onnx")})
        assert proc.wait(timeout=30) == 1
        listener.wait_for(lambda: any(m.level == Log.FATAL and m.name == "flow_policy_node" for m in listener.logs), 5.0,
                          "a FATAL log of flow_policy_node on /rosout")
        with listener.lock:
            fatal = [m.msg for m in listener.logs if m.level == Log.FATAL]
        assert len(fatal) == 1 and fatal[0].startswith("exiting: configure failed") and "missing.onnx" in fatal[0], fatal
    finally:
        listener.close()
