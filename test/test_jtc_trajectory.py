"""JtcTrajectory: the one model of a JointTrajectoryController (replace from start, linear, hold, stop)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from flow_policy_ros.runtime.jtc_trajectory import JtcTrajectory, Segment, sample_segments


def col(*values: float) -> np.ndarray:
    return np.array(values, float)[:, None]


def test_linear_between_points_exact_at_them_held_after_and_before():
    model = JtcTrajectory(1, hold=np.zeros(1))
    model.replace(100, np.array([110, 130]), col(1.0, 3.0))
    assert model.setpoint(99)[0] == 0.0  # before the start: the hold
    assert model.setpoint(105)[0] == 0.5  # from the setpoint at the start towards point 0
    assert model.setpoint(110)[0] == 1.0 and model.setpoint(130)[0] == 3.0
    assert model.setpoint(120)[0] == 2.0 and model.setpoint(10_000)[0] == 3.0
    segment = model.segment_at(120)
    assert segment.velocity(120, 1e-3)[0] == 2.0 / (20 * 1e-3) and segment.velocity(131, 1e-3)[0] == 0.0


def test_without_a_hold_nothing_is_defined_before_the_first_trajectory_and_its_first_point_holds_back():
    model = JtcTrajectory(1)
    assert model.setpoint(0) is None and model.stop(0) is None and model.segments == ()
    model.replace(100, np.array([110, 120]), col(1.0, 2.0))
    assert model.segment_at(100).times.tolist() == [110, 120]  # no lead-in knot: nothing to start from
    assert model.setpoint(100)[0] == 1.0
    assert np.isnan(model.sample(np.array([50]))[0, 0])


def test_a_new_trajectory_replaces_from_its_start_and_queued_later_ones_are_dropped():
    model = JtcTrajectory(1, hold=np.zeros(1))
    model.replace(0, np.array([100]), col(10.0))
    model.replace(300, np.array([400]), col(-5.0))  # queued
    model.replace(200, np.array([250]), col(7.0))  # starts before the queued one: drops it
    assert [s.start for s in model.segments] == [0, 200]
    assert model.setpoint(150)[0] == 10.0  # the old one still runs before 200
    assert model.setpoint(225)[0] == 8.5 and model.setpoint(1000)[0] == 7.0


def test_a_queued_trajectory_starting_earlier_survives_a_later_one():
    model = JtcTrajectory(1, hold=np.zeros(1))
    model.replace(0, np.arange(0, 10), col(*range(10)))
    model.replace(5, np.arange(5, 15), col(*range(50, 60)))
    model.replace(8, np.arange(8, 18), col(*range(80, 90)))
    assert [model.setpoint(t)[0] for t in (4, 5, 7, 8, 9)] == [4.0, 50.0, 52.0, 80.0, 81.0]


def test_a_point_at_the_start_is_jumped_to_and_passed_points_are_skipped():
    model = JtcTrajectory(1, hold=np.zeros(1))
    segment = model.replace(100, np.array([100, 110]), col(5.0, 6.0))
    assert segment.times.tolist() == [100, 110] and model.setpoint(100)[0] == 5.0
    late = model.replace(200, np.array([150, 190, 220]), col(1.0, 2.0, 4.0))
    assert late.times.tolist() == [200, 220] and late.values[0, 0] == 6.0 and model.setpoint(210)[0] == 5.0


def test_an_empty_trajectory_holds_the_setpoint_of_its_start_or_a_given_one():
    model = JtcTrajectory(1, hold=np.zeros(1))
    model.replace(0, np.array([100]), col(4.0))
    model.replace(200, np.array([300]), col(9.0))  # queued: dropped by the stop
    stop = model.stop(25)
    assert stop.is_stop and model.setpoint(25)[0] == 1.0 and model.setpoint(10_000)[0] == 1.0
    assert model.stop(40, hold=np.array([3.0])).values[0, 0] == 3.0


def test_a_trajectory_replaced_at_its_own_start_never_ran():
    model = JtcTrajectory(1, hold=np.zeros(1))
    model.replace(0, np.array([100]), col(10.0))
    model.replace(50, np.array([50, 60]), col(100.0, 100.0))  # jumps at 50 ...
    replacing = model.replace(50, np.array([70]), col(0.0))  # ... but is replaced at 50: join the first one there
    assert replacing.values[0, 0] == 5.0


def test_prune_keeps_what_the_present_and_the_future_need():
    model = JtcTrajectory(1, hold=np.zeros(1))
    for k in range(5):
        model.replace(100 * k, np.array([100 * k + 50]), col(float(k)))
    model.prune(300)
    assert [s.start for s in model.segments] == [200, 300, 400]  # 200: a trajectory starting at 300 joins it
    assert model.setpoint(300)[0] == 2.0 and model.setpoint(399)[0] == 3.0


def test_sample_segments_is_the_scalar_setpoint_vectorized():
    segments = [Segment(0, np.array([10, 20]), col(0.0, 1.0)), Segment(15, np.array([15, 30]), col(0.5, -1.0))]
    times = np.array([30, 0, 12, 15, 16, 25, 40])
    model = JtcTrajectory(1)
    model.replace(0, np.array([10, 20]), col(0.0, 1.0))
    model.replace(15, np.array([30]), col(-1.0))
    np.testing.assert_array_equal(sample_segments(segments, times, 1), model.sample(times))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(-20, 60), st.integers(0, 5)), min_size=1, max_size=10), st.integers(0, 2**31))
def test_vectorized_and_scalar_sampling_agree_exactly(messages: list[tuple[int, int]], seed: int) -> None:
    rng = np.random.default_rng(seed)
    model = JtcTrajectory(2, hold=np.zeros(2))
    for start, n in messages:
        offsets = np.cumsum(rng.integers(1, 7, n))
        model.replace(start, start + offsets, rng.normal(size=(n, 2)))
    times = np.arange(-25, 120)
    expected = np.array([model.setpoint(int(t)) for t in times])
    np.testing.assert_array_equal(model.sample(times), expected)
    knots = [(int(t), v) for s in model.segments for t, v in zip(s.times, s.values) if model.segment_at(int(t)) is s]
    for t, v in knots:  # exact at every knot of the segment active there
        np.testing.assert_array_equal(model.setpoint(t), v)
