"""flow-policy play: release schedule (pure) and live playback over DDS on loopback with preserved timing."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT, node_env, stop_process

from flow_policy_ros.cli import CliError, main
from flow_policy_ros.data import bag as bagio
from flow_policy_ros.data.play import is_latched, release_offsets

EPOCH = 1_700_000_000_000_000_000
NAMES = [f"lbr_iiwa_joint_{i}" for i in range(1, 8)]


def test_release_offsets_rate_and_start_offset() -> None:
    times = EPOCH + np.array([0, 100, 250, 1000], np.int64) * 1_000_000
    idx, offsets = release_offsets(times, rate=2.0, start_offset_s=0.1)
    assert idx.tolist() == [1, 2, 3]
    np.testing.assert_allclose(offsets, [0.0, 0.075, 0.45])
    with pytest.raises(CliError, match="--rate"):
        release_offsets(times, rate=0.0)


def test_latched_topics() -> None:
    assert is_latched("/goal") and is_latched("/robot/goal")
    assert not is_latched("/joint_states") and not is_latched("/goals")


def test_bad_bag_is_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["play", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no such bag" in err


def _gapped_bag(path: Path, gaps_ms: np.ndarray) -> np.ndarray:
    stamps = EPOCH + np.concatenate([[0], np.cumsum(gaps_ms)]).astype(np.int64) * 1_000_000
    with bagio.BagWriter(path, "mcap") as writer:
        writer.write("/goal", bagio.POINT_STAMPED, bagio.point_stamped_msg(EPOCH, np.array([0.4, 0.0, 0.5])), EPOCH)
        for t in stamps:
            writer.write("/joint_states", bagio.JOINT_STATE, bagio.joint_state_msg(int(t), NAMES, np.zeros(7), np.zeros(7)), int(t))
    return stamps


@pytest.mark.slow
def test_play_preserves_relative_timing(tmp_path: Path) -> None:
    import rclpy
    from geometry_msgs.msg import PointStamped
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import JointState

    gaps_ms = np.random.default_rng(0).choice([20, 50, 90, 150], size=30)
    stamps = _gapped_bag(tmp_path / "bag", gaps_ms)
    received: dict[int, float] = {}
    goals: list[float] = []
    clocks: list[int] = []
    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("play_test_listener", context=context)
    node.create_subscription(JointState, "/joint_states",
                             lambda m: received.setdefault(m.header.stamp.sec * 10**9 + m.header.stamp.nanosec, time.monotonic()),
                             qos_profile_sensor_data)
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    node.create_subscription(PointStamped, "/goal", lambda m: goals.append(m.point.x), latched)
    node.create_subscription(Clock, "/clock", lambda m: clocks.append(m.clock.sec * 10**9 + m.clock.nanosec), 10)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    proc = subprocess.Popen([sys.executable, "-m", "flow_policy_ros", "play", str(tmp_path / "bag"), "--clock",
                             "--wait-for-subscribers", "10", "--delay", "0.5"], cwd=REPO_ROOT, env=node_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 20.0
        while proc.poll() is None and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.002)
        for _ in range(50):
            executor.spin_once(timeout_sec=0.01)
        assert proc.poll() == 0, proc.stdout.read() if proc.stdout else ""
    finally:
        stop_process(proc)
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=context)
    got = [int(s) for s in stamps if int(s) in received]
    assert len(got) >= 0.8 * len(stamps), f"received {len(got)} of {len(stamps)}"
    recorded_gaps = np.diff(got) * 1e-9
    arrival_gaps = np.diff([received[s] for s in got])
    error_ms = np.abs(arrival_gaps - recorded_gaps) * 1e3
    assert np.median(error_ms) < 10.0, error_ms
    assert error_ms.max() < 60.0, error_ms
    assert goals == [0.4]
    assert clocks and min(clocks) >= EPOCH and max(clocks) <= int(stamps[-1])
