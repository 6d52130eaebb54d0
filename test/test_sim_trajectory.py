"""Pure tests of sim/trajectory.py: JTC-like interpolation and replacement semantics, exact where exact."""

from __future__ import annotations

import numpy as np
import pytest

from flow_policy_ros.sim.trajectory import TrajectoryError, TrajectoryFollower

S = 1_000_000_000  # ns per s
T0 = 100 * S


def test_interpolation_exact_at_points_and_linear_between():
    follower = TrajectoryFollower(np.zeros(2))
    points = np.array([[1.0, -1.0], [3.0, -3.0]])
    follower.set_trajectory(T0, [0.5, 1.0], points, now_ns=T0 - S)
    q, v = follower.sample(T0 - 1)  # before the stamp: the old setpoint (hold)
    assert np.array_equal(q, [0.0, 0.0]) and np.array_equal(v, [0.0, 0.0])
    q, v = follower.sample(T0)
    assert np.array_equal(q, [0.0, 0.0]) and np.allclose(v, [2.0, -2.0])
    assert np.array_equal(follower.sample(T0 + S // 2)[0], points[0])
    assert np.array_equal(follower.sample(T0 + S)[0], points[1])
    q, v = follower.sample(T0 + 3 * S // 4)
    np.testing.assert_allclose(q, [2.0, -2.0], atol=1e-12)
    np.testing.assert_allclose(v, [4.0, -4.0], atol=1e-9)
    q, v = follower.sample(T0 + 5 * S)  # after the end: hold the last point, zero velocity
    assert np.array_equal(q, points[1]) and np.array_equal(v, [0.0, 0.0])


def test_replacement_takes_over_from_its_stamp_and_joins_without_jump():
    follower = TrajectoryFollower(np.zeros(1))
    follower.set_trajectory(T0, [1.0], np.array([[10.0]]), now_ns=T0)
    follower.set_trajectory(T0 + S // 2, [0.5], np.array([[-1.0]]), now_ns=T0 + S // 10)  # queued for later
    assert follower.sample(T0 + S // 4)[0][0] == pytest.approx(2.5)  # old plan still runs before the stamp
    assert follower.sample(T0 + S // 2)[0][0] == pytest.approx(5.0)  # new plan starts where the old one was
    assert follower.sample(T0 + 3 * S // 4)[0][0] == pytest.approx(2.0)
    assert follower.sample(T0 + S)[0][0] == -1.0
    assert follower.sample(T0 + 2 * S)[0][0] == -1.0


def test_new_trajectory_drops_queued_later_ones():
    follower = TrajectoryFollower(np.zeros(1))
    follower.set_trajectory(T0 + 2 * S, [1.0], np.array([[5.0]]), now_ns=T0)
    follower.set_trajectory(T0 + S, [1.0], np.array([[1.0]]), now_ns=T0)
    assert len(follower.plans) == 1
    assert follower.sample(T0 + 5 * S)[0][0] == 1.0


def test_zero_stamp_means_now_and_late_trajectory_skips_passed_points():
    follower = TrajectoryFollower(np.zeros(1))
    follower.set_trajectory(0, [1.0], np.array([[2.0]]), now_ns=T0)
    assert follower.plans[0].start == T0
    assert follower.sample(T0 + S // 2)[0][0] == pytest.approx(1.0)
    late = TrajectoryFollower(np.zeros(1))
    late.set_trajectory(T0, [0.1, 0.2, 1.0], np.array([[7.0], [8.0], [9.0]]), now_ns=T0 + S // 2)
    plan = late.plans[0]
    assert plan.start == T0 + S // 2 and plan.times.tolist() == [T0 + S // 2, T0 + S]
    assert late.sample(T0 + S)[0][0] == 9.0
    with pytest.raises(TrajectoryError, match="ago"):
        late.set_trajectory(T0, [0.1], np.array([[1.0]]), now_ns=T0 + S)


def test_empty_trajectory_stops_at_the_current_setpoint():
    follower = TrajectoryFollower(np.zeros(1))
    follower.set_trajectory(T0, [1.0], np.array([[4.0]]), now_ns=T0)
    follower.set_trajectory(0, [], np.empty((0, 1)), now_ns=T0 + S // 4)
    assert follower.sample(T0 + S // 4)[0][0] == pytest.approx(1.0)
    assert follower.sample(T0 + 10 * S)[0][0] == pytest.approx(1.0)


def test_stream_command_reached_one_period_later_then_held():
    follower = TrajectoryFollower(np.zeros(1))
    follower.command([0.2], now_ns=T0, period_s=0.02)
    assert follower.sample(T0 + S // 100)[0][0] == pytest.approx(0.1)
    assert follower.sample(T0 + S // 50)[0][0] == 0.2
    assert follower.sample(T0 + S)[0][0] == 0.2


@pytest.mark.parametrize("offsets,points,match", [
    ([0.2, 0.1], [[1.0], [2.0]], "increasing"),
    ([0.1], [[float("nan")]], "NaN"),
    ([0.1], [[1.0, 2.0]], "joints"),
])
def test_bad_trajectories_rejected_and_plan_unchanged(offsets, points, match):
    follower = TrajectoryFollower(np.zeros(1))
    with pytest.raises(TrajectoryError, match=match):
        follower.set_trajectory(T0, offsets, np.array(points), now_ns=T0)
    assert follower.plans == ()


def test_prune_keeps_the_active_plan():
    follower = TrajectoryFollower(np.zeros(1))
    for k in range(5):
        follower.set_trajectory(T0 + k * S, [0.5], np.array([[float(k)]]), now_ns=T0 + k * S)
    follower.prune(T0 + 3 * S + 1)
    assert [p.start for p in follower.plans] == [T0 + 3 * S, T0 + 4 * S]
    assert follower.sample(T0 + 4 * S)[0][0] == 3.0
