"""End-to-end tests of policy_node: a real node process, talked to over DDS from this process.

Each test starts ``python -m flow_policy_ros.ros.policy_node`` with a tiny real ONNX policy (from
``test/model_factory.py``), plays a robot in this process (joint states at 100 Hz, a latched
goal) and checks what comes back. Everything runs on localhost DDS in this session's domain
(see ``conftest.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from fake_robot import POSITIONS, FakeRobot

from flow_policy_ros.policy.config import IIWA_JOINT_NAMES, IIWA_VELOCITY_LIMIT

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[1]
H = 8  # horizon of the tiny model
DT = 0.02  # s, 50 Hz


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from model_factory import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("model") / "tiny.onnx", horizon=H)


@pytest.fixture
def robot_factory() -> Iterator[Callable[..., FakeRobot]]:
    robots: list[FakeRobot] = []

    def make(**kwargs: object) -> FakeRobot:
        robots.append(FakeRobot(**kwargs))
        return robots[-1]

    try:
        yield make
    finally:
        for robot in robots:
            robot.close()


def base_params(model_path: Path, **overrides: object) -> dict[str, object]:
    params: dict[str, object] = {"model_path": str(model_path), "providers": ["CPUExecutionProvider"], "warmup": 1}
    params.update(overrides)
    return params


def test_stream_rate_and_shuffled_joint_order(model_path, node_process, robot_factory):
    """Stream mode sends one command per tick at ~50 Hz, and joint states in a shuffled order are
    matched by name: with a tiny velocity limit every command stays within k·v·dt of the measured
    position of the SAME joint (model order), which a positional mix-up (0.2 rad apart) would break."""
    robot = robot_factory(order=[3, 6, 0, 5, 1, 4, 2])
    scale = 0.01
    node_process(params=base_params(model_path, max_velocity_scale=scale, replan_every=4))
    robot.wait_for(lambda: len(robot.commands) > 0, 15.0, "the first command")
    time.sleep(0.5)
    start = time.monotonic()
    time.sleep(2.0)
    window = robot.commands_between(start, start + 2.0)
    assert 40 <= len(window) / 2.0 <= 55, f"command rate {len(window) / 2.0} Hz, expected ~50 Hz"
    with robot.lock:
        commands = [c for _, c in robot.commands]
    step = np.array(IIWA_VELOCITY_LIMIT) * scale * DT
    for k, command in enumerate(commands):
        assert command.shape == (7,)
        assert np.all(np.abs(command - POSITIONS) <= (k + 1) * step + 1e-9), f"command {k} {command} strays"
    for previous, command in zip(commands, commands[1:]):
        assert np.all(np.abs(command - previous) <= step + 1e-9)
    robot.wait_for(lambda: bool(robot.diagnostics), 3.0, "diagnostics")
    with robot.lock:
        diag = robot.diagnostics[-1]
    assert diag["state"] == "running" and diag["rejected_messages"] == "0"
    print("diagnostics at 50 Hz:", diag)


def test_trajectory_mode_publishes_one_trajectory_per_chunk(model_path, node_process, robot_factory):
    """Trajectory mode publishes a JointTrajectory per new chunk (every replan_every=4 ticks: 12.5 Hz),
    with model joint names, at most H points spaced dt apart, and stamps advancing by ~4 ticks."""
    robot = robot_factory()
    node_process(params=base_params(model_path, execution="trajectory", replan_every=4))
    robot.wait_for(lambda: len(robot.trajectories) > 0, 15.0, "the first trajectory")
    time.sleep(0.5)
    start = time.monotonic()
    time.sleep(2.0)
    with robot.lock:
        window = [m for t, m in robot.trajectories if start <= t < start + 2.0]
        assert not robot.commands
    assert 10 <= len(window) / 2.0 <= 14, f"trajectory rate {len(window) / 2.0} Hz, expected ~12.5 Hz"
    for msg in window:
        assert list(msg.joint_names) == list(IIWA_JOINT_NAMES)
        assert 1 <= len(msg.points) <= H
        offsets = [p.time_from_start.sec + p.time_from_start.nanosec * 1e-9 for p in msg.points]
        np.testing.assert_allclose(offsets, DT * np.arange(1, len(offsets) + 1), atol=1e-9)
    stamps = np.array([m.header.stamp.sec + m.header.stamp.nanosec * 1e-9 for m in window])
    assert np.all(np.diff(stamps) > 0)
    assert np.median(np.diff(stamps)) == pytest.approx(4 * DT, abs=DT / 2)


def test_stale_joint_states_stop_commands_then_recover(model_path, node_process, robot_factory):
    """When joint states stop, commands stop within stale_timeout_s (+ a tick and transport slack)
    and the state is 'stale'; when they return, commands resume and the state is 'running'."""
    robot = robot_factory()
    node_process(params=base_params(model_path, stale_timeout_s=0.1))
    robot.wait_for(lambda: len(robot.commands) > 0, 15.0, "the first command")
    robot.mode = "pause"
    paused = time.monotonic()
    time.sleep(1.5)
    assert robot.commands_between(paused + 0.25, paused + 1.5) == []
    robot.wait_for(lambda: robot.diagnostics and robot.diagnostics[-1]["state"] == "stale", 3.0, "state stale")
    robot.mode = "ok"
    resumed = time.monotonic()
    robot.wait_for(lambda: any(t > resumed for t, _ in robot.commands), 5.0, "commands after recovery")
    robot.wait_for(lambda: robot.diagnostics[-1]["state"] == "running", 3.0, "state running")


def test_nan_and_missing_joints_rejected_and_counted(model_path, node_process, robot_factory):
    """JointStates with a NaN position or a missing model joint are rejected: no command is sent on
    them (the node goes stale), and diagnostics count them as rejected messages."""
    robot = robot_factory()
    node_process(params=base_params(model_path))
    robot.wait_for(lambda: len(robot.commands) > 0, 15.0, "the first command")
    for mode in ("nan", "missing"):
        robot.mode = mode
        changed = time.monotonic()
        time.sleep(1.2)
        assert robot.commands_between(changed + 0.25, changed + 1.2) == [], f"commands sent on {mode} joint states"
    robot.mode = "ok"
    robot.wait_for(
        lambda: robot.diagnostics and int(robot.diagnostics[-1]["rejected_messages"]) >= 150, 3.0,
        "rejected_messages >= 150 (about 2 s of bad messages at 100 Hz)",
    )
    resumed = time.monotonic()
    robot.wait_for(lambda: any(t > resumed for t, _ in robot.commands), 5.0, "commands after good data returns")


def test_parameter_file_loads(model_path, node_process, robot_factory, tmp_path):
    """config/policy.yaml declares exactly the node's parameters, and a parameter file given with
    --params-file is applied: 25 Hz and temporal ensembling show in diagnostics and in the command rate."""
    from rclpy.parameter import Parameter

    from flow_policy_ros.ros.policy_node import NODE_NAME, PARAMETERS

    shipped = yaml.safe_load((REPO_ROOT / "config" / "policy.yaml").read_text())
    declared = set(shipped[NODE_NAME]["ros__parameters"])
    assert declared <= set(PARAMETERS)
    unset = {name for name, spec in PARAMETERS.items() if isinstance(spec.default, Parameter.Type)}
    assert unset == {"lower_limits", "upper_limits", "velocity_limits", "guidance_scale"}
    assert unset <= set(PARAMETERS) - declared <= unset | {"thread_priority"}  # unset in the file = unset = the model's

    params = dict(shipped[NODE_NAME]["ros__parameters"])
    params.update(model_path=str(model_path), control_rate_hz=25.0, chunking="temporal_ensemble",
                  providers=["CPUExecutionProvider"], replan_every=2)
    params_file = tmp_path / "policy.yaml"
    params_file.write_text(yaml.safe_dump({NODE_NAME: {"ros__parameters": params}}))
    robot = robot_factory()
    node_process(params_file=params_file)
    robot.wait_for(lambda: len(robot.commands) > 0 and robot.diagnostics, 15.0, "commands and diagnostics")
    start = time.monotonic()
    time.sleep(2.0)
    rate = len(robot.commands_between(start, start + 2.0)) / 2.0
    assert 20 <= rate <= 28, f"command rate {rate} Hz, expected ~25 Hz"
    with robot.lock:
        diag = robot.diagnostics[-1]
    assert diag["control_rate_hz"] == "25"
    assert diag["chunking"] == "temporal_ensemble"
    assert diag["active_provider"] == "CPUExecutionProvider"
    print("diagnostics:", diag)


def test_launch_file_compiles_and_uses_installed_config():
    """launch/policy.launch.py is valid Python and takes its parameters from the installed share directory
    (launch_ros is not installed here, so it cannot be run)."""
    source = (REPO_ROOT / "launch" / "policy.launch.py").read_text()
    compile(source, "policy.launch.py", "exec")
    assert 'get_package_share_directory("flow_policy_ros")' in source
    assert '"config", "policy.yaml"' in source


def test_first_command_published_when_inference_returns(model_path, node_process, robot_factory):
    """Event-driven chunks: the first command of a chunk goes out as soon as inference returns, so the
    time from the observation's header stamp to that command (diagnostics obs_to_command p50) is a few
    ms (inference of the tiny model + DDS), far below a tick (20 ms); the command rate stays ~50 Hz."""
    robot = robot_factory()
    node_process(params=base_params(model_path, replan_every=4))
    robot.wait_for(lambda: len(robot.commands) > 0, 15.0, "the first command")
    start = time.monotonic()
    time.sleep(3.0)
    rate = len(robot.commands_between(start, start + 3.0)) / 3.0
    assert 45 <= rate <= 55, f"command rate {rate} Hz"
    robot.wait_for(lambda: robot.diagnostics and int(robot.diagnostics[-1]["chunks_received"]) > 20, 3.0, "diagnostics")
    with robot.lock:
        diag = robot.diagnostics[-1]
    print("diagnostics:", diag)
    for key in ("tick_jitter_p50_ms", "tick_jitter_p99_ms", "inference_latency_p99_ms", "provider_fallback_reason",
                "model_hash", "deadline_misses"):
        assert key in diag
    # event-driven: the first command follows inference, not the next tick (20 ms); a bound, not a speed target
    assert float(diag["obs_to_command_latency_p50_ms"]) < 20.0, diag


def test_trajectory_mode_stale_publishes_one_empty_trajectory(model_path, node_process, robot_factory):
    """In trajectory mode, joint states stopping makes the node publish ONE empty JointTrajectory (a JTC
    stops on it) and nothing else until data returns."""
    robot = robot_factory()
    node_process(params=base_params(model_path, execution="trajectory", replan_every=4, stale_timeout_s=0.1))
    robot.wait_for(lambda: len(robot.trajectories) > 3, 15.0, "trajectories")
    robot.mode = "pause"
    paused = time.monotonic()
    time.sleep(1.0)
    with robot.lock:
        after = [m for t, m in robot.trajectories if t > paused + 0.02]
    assert len(after) >= 1 and len(after[-1].points) == 0
    assert sum(len(m.points) == 0 for m in after) == 1
    assert all(len(m.points) > 0 for m in after[:-1])
    robot.mode = "ok"
    resumed = time.monotonic()
    robot.wait_for(lambda: any(t > resumed and len(m.points) > 0 for t, m in robot.trajectories), 5.0, "trajectories again")


@pytest.mark.parametrize(("inference_thread", "executor"), [(False, "single_threaded"), (True, "single_threaded"),
                                                            (False, "events"), (True, "events")])
def test_every_inference_and_executor_mode_commands_and_reports_its_stages(model_path, node_process, robot_factory,
                                                                           inference_thread, executor):
    """Inline or threaded inference, on either executor: commands flow at the tick rate, /diagnostics
    name the mode and carry every stage of the decision path (ms, from this activation), and SIGINT
    ends the node with status 0. (Durations are not asserted: speed belongs to `bench --ros`.)"""
    from conftest import stop_process

    from flow_policy_ros.runtime.latency import STAGES

    robot = robot_factory()
    proc = node_process(params=base_params(model_path, inference_thread=inference_thread, executor=executor))
    robot.wait_for(lambda: len(robot.commands) > 0, 15.0, "the first command")
    robot.wait_for(lambda: any(d.get("stage_obs_to_command_p50_ms", "nan") != "nan" for d in robot.diagnostics), 5.0,
                   "a diagnostics message with the stage breakdown")
    start = time.monotonic()
    time.sleep(1.0)
    assert 40 <= len(robot.commands_between(start, start + 1.0)) <= 55
    with robot.lock:
        diag = robot.diagnostics[-1]
    assert diag["inference"] == ("thread" if inference_thread else "inline") and diag["executor"] == executor
    for stage in STAGES:
        for q in (50, 99):
            assert float(diag[f"stage_{stage}_p{q}_ms"]) >= 0.0, (stage, diag)
    assert float(diag["stage_obs_to_command_p50_ms"]) == pytest.approx(float(diag["obs_to_command_latency_p50_ms"]),
                                                                       abs=1e-3)
    stop_process(proc)
    assert proc.returncode == 0


def test_unset_guidance_runs_the_models_default_and_can_be_set_at_run_time(node_process, robot_factory, tmp_path):
    """guidance_scale is an execution setting without a value by default (as eval-sim's): the node runs
    the model's trained w (metadata guidance_scale), and `ros2 param set` still changes it at run time."""
    from model_factory import make_tiny_model
    from rcl_interfaces.msg import Parameter as ParameterMsg
    from rcl_interfaces.msg import ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters

    model = make_tiny_model(tmp_path / "w15.onnx", seed=3, guidance_scale=1.5)
    robot = robot_factory()
    node_process(params=base_params(model))
    robot.wait_for(lambda: robot.diagnostics and "guidance_scale" in robot.diagnostics[-1], 15.0, "diagnostics")
    with robot.lock:
        assert robot.diagnostics[-1]["guidance_scale"] == "1.5"
    client = robot.node.create_client(SetParameters, "/flow_policy_node/set_parameters")
    assert client.wait_for_service(timeout_sec=10.0)
    value = ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=2.0)
    future = client.call_async(SetParameters.Request(parameters=[ParameterMsg(name="guidance_scale", value=value)]))
    deadline = time.monotonic() + 10.0
    while not future.done() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert future.done() and future.result().results[0].successful, future.result()
    robot.wait_for(lambda: robot.diagnostics[-1]["guidance_scale"] == "2", 5.0, "guidance_scale 2 in diagnostics")

class RenamingRobot(FakeRobot):
    """A driver that names the joints lbr_joint_0..6 (config/example_joint_map.yaml), not as the model does."""

    def _publish_joint_state(self) -> None:
        from sensor_msgs.msg import JointState

        msg = JointState(name=[f"lbr_joint_{i}" for i in range(7)], position=[float(q) for q in POSITIONS],
                         velocity=[0.0] * 7)
        msg.header.stamp = self.node.get_clock().now().to_msg()
        self.joint_pub.publish(msg)


@pytest.mark.parametrize("execution", ["stream", "trajectory"])
def test_joint_names_that_do_not_match_the_model_are_named_on_diagnostics(model_path, node_process, robot_factory,
                                                                           execution):
    """Joint states whose names are not the model's: the diagnostics reason names the missing model
    joints and what the message had, and points at the joint map, instead of 'no joint states and goal
    yet'; nothing is commanded."""
    robot = RenamingRobot()
    try:
        node_process(params=base_params(model_path, execution=execution))
        robot.wait_for(lambda: any(d["state"] == "waiting" and d["joint_state_rejection"] for d in robot.diagnostics),
                       20.0, "diagnostics naming the rejected joint states")
        with robot.lock:
            diag = robot.diagnostics[-1]
            sent = len(robot.commands) + sum(len(m.points) > 0 for _, m in robot.trajectories)
        assert diag["reason"].startswith("no usable joint states: joint_states lack the model's joint(s) "), diag["reason"]
        assert all(name in diag["reason"] for name in IIWA_JOINT_NAMES) and "lbr_joint_0" in diag["reason"]
        assert "config/example_joint_map.yaml" in diag["reason"]
        assert int(diag["rejected_messages"]) > 0 and sent == 0
    finally:
        robot.close()


@pytest.mark.parametrize("execution", ["stream", "trajectory"])
def test_nan_goal_is_named_in_goal_rejection(model_path, node_process, robot_factory, execution):
    """A NaN goal after a good one: the node keeps the previous goal (commands go on) and the diagnostics'
    goal_rejection names the NaN goal (it showed the previous reason, or nothing, before)."""
    from geometry_msgs.msg import PointStamped
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    robot = robot_factory()
    node_process(params=base_params(model_path, execution=execution))

    def commanded_after(start: float) -> bool:
        return any(t > start for t, _ in robot.commands) or any(t > start and m.points for t, m in robot.trajectories)

    robot.wait_for(lambda: commanded_after(0.0), 15.0, "the first command")
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    goal_pub = robot.node.create_publisher(PointStamped, "goal", latched)
    bad = PointStamped()
    bad.header.frame_id = "world"
    bad.point.x, bad.point.y, bad.point.z = float("nan"), 0.1, 0.4
    goal_pub.publish(bad)
    sent = time.monotonic()
    robot.wait_for(lambda: bool(robot.diagnostics) and "NaN" in robot.diagnostics[-1]["goal_rejection"], 5.0,
                   "goal_rejection naming the NaN goal")
    robot.wait_for(lambda: commanded_after(sent + 0.5), 5.0, "commands on the previous goal")
    with robot.lock:
        assert robot.diagnostics[-1]["state"] == "running" and int(robot.diagnostics[-1]["rejected_messages"]) >= 1


def test_refused_joint_states_are_named_while_stale(model_path, node_process, robot_factory):
    """Good joint states, then ones lacking a model joint: the node holds (stale) and the reason says the
    joint states still arrive but are refused, naming the missing joint."""
    robot = robot_factory()
    node_process(params=base_params(model_path))
    robot.wait_for(lambda: len(robot.commands) > 0, 15.0, "the first command")
    robot.mode = "missing"
    robot.wait_for(lambda: bool(robot.diagnostics) and robot.diagnostics[-1]["state"] == "stale", 5.0, "stale")
    with robot.lock:
        reason = robot.diagnostics[-1]["reason"]
    assert "the joint states arriving are refused" in reason and IIWA_JOINT_NAMES[0] in reason, reason
