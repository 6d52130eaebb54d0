"""TrajectoryExecution: one limited trajectory per chunk, followed tick by tick as a JTC executes it."""

from __future__ import annotations

import numpy as np

from flow_policy_ros.contract import IIWA_JOINT_NAMES, JointLimits, ObservationSpec
from flow_policy_ros.runtime.chunking import ActionChunk, make_scheduler
from flow_policy_ros.runtime.controller_config import ControllerConfig, ControllerCounters
from flow_policy_ros.runtime.decisions import Stop, Trajectory
from flow_policy_ros.runtime.safety import CommandLimiter, SafetyLimits
from flow_policy_ros.runtime.tick_clock import TickClock
from flow_policy_ros.runtime.tracking import ArmTracking
from flow_policy_ros.runtime.trajectory_execution import TrajectoryExecution

H, A = 8, 7
P = 20_000_000
LIMITS = SafetyLimits.from_joint_limits(JointLimits())
STEP = LIMITS.velocity * P * 1e-9
SPEC = ObservationSpec(joint_names=IIWA_JOINT_NAMES, fields=("joint_positions", "goal"))


def build() -> TrajectoryExecution:
    config = ControllerConfig(SPEC, H, P * 1e-9, "trajectory", "rtc", rtc_max_delay=3)
    tracking = ArmTracking()
    tracking.observe(np.zeros(A))
    return TrajectoryExecution(config, LIMITS, make_scheduler("rtc", H, 4), CommandLimiter(LIMITS, config.period_s),
                               TickClock(P), tracking, ControllerCounters())


def ramp(value: float = 0.01, start: float = 0.0) -> np.ndarray:
    return start + np.outer(np.arange(1, H + 1) * value, np.ones(A))


def at_tick(ex: TrajectoryExecution, tick: int) -> None:
    ex.clock.advance(tick * P)
    ex.begin_tick(tick)


def running(actions: np.ndarray) -> tuple[TrajectoryExecution, Trajectory]:
    ex = build()
    at_tick(ex, 0)
    ex.scheduler.add_chunk(ActionChunk(actions, 0), 0)
    ex.pending_stamp_ns = 7
    out = ex.on_chunk(0, 0, 0, actions)
    assert len(out) == 1 and isinstance(out[0], Trajectory)
    return ex, out[0]


def test_the_chunk_is_published_limited_and_the_last_command_follows_it():
    ex, trajectory = running(ramp(0.5))
    assert trajectory.tick == 0 and trajectory.stamp_ns == 0 and trajectory.obs_stamp_ns == 7
    assert np.all(np.abs(np.diff(trajectory.points, axis=0)) <= STEP + 1e-12)
    np.testing.assert_array_equal(ex.limiter.last_command, trajectory.points[0])
    for k in (1, 2, 5):  # skipped ticks too
        at_tick(ex, k)
        np.testing.assert_array_equal(ex.limiter.last_command, trajectory.points[k])
    at_tick(ex, H + 3)  # past the end the JTC holds the last point
    np.testing.assert_array_equal(ex.limiter.last_command, trajectory.points[-1])
    assert ex.on_running_tick(H + 3, due=True) == [] and ex.late_command(0, True) == []


def test_a_new_trajectory_replaces_the_old_at_the_current_tick_limited_against_the_tick_before():
    ex, first = running(ramp(0.01))
    at_tick(ex, 2)
    ex.scheduler.add_chunk(ActionChunk(np.tile(first.points[2] + 1.0, (H, 1)), 2), 2)
    second = ex.on_chunk(2, 2, 0, np.zeros((H, A)))[0]
    assert second.tick == 2
    assert np.all(np.abs(second.points[0] - first.points[1]) <= STEP + 1e-12)
    assert ex.executing().start == 2


def test_rtc_commits_what_the_jtc_executes_and_splices_the_new_chunk_at_the_prefix_end():
    ex, first = running(ramp(0.01))
    at_tick(ex, 4)
    rows = ex.commit_prefix(4, 2)
    np.testing.assert_array_equal(rows, first.points[4:6])
    new = np.tile(first.points[5] + 0.004, (H, 1))
    new[:2] = rows
    ex.scheduler.add_chunk(ActionChunk(new, 4), 4)
    out = ex.on_chunk(4, 4, 2, new)[0]  # arrives at tick 4: stamped for tick 6
    assert out.tick == 6 and out.stamp_ns == 6 * P
    np.testing.assert_array_equal(ex.limiter.last_command, first.points[4])  # still on the first trajectory
    np.testing.assert_array_equal(ex.commit_prefix(4, 3)[2], out.points[0])  # the splice is part of what runs
    at_tick(ex, 6)
    np.testing.assert_array_equal(ex.limiter.last_command, out.points[0])


def test_a_stop_holds_the_last_command_and_commits_nothing():
    ex, first = running(ramp(0.01))
    at_tick(ex, 3)
    assert ex.stop("stale") == [Stop("stale")] and ex.counters.stops_sent == 1
    assert ex.executing() is None and ex.commit_prefix(3, 2).shape == (0, A)
    at_tick(ex, 6)
    np.testing.assert_array_equal(ex.limiter.last_command, first.points[3])


def test_nothing_to_publish_without_a_plan():
    ex = build()
    at_tick(ex, 0)
    assert ex.on_chunk(0, 0, 0, ramp()) == [] and ex.counters.trajectories_sent == 0
