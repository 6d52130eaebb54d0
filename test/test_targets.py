"""TargetSeries: JointTrajectory commands spliced as a JointTrajectoryController executes them, and
sampled controller references; exact answers on the grid, analytic ones off it, every bad input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flow_policy_ros.data.targets import sampled_targets, spliced_trajectories
from flow_policy_ros.errors import TimeSeriesError

DT = 20_000_000  # ns
EPOCH = 1_700_000_000_000_000_000
ONE = ["j"]


def chunk(values: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """A policy-style chunk: point i at (i+1)·dt, one joint."""
    return DT * np.arange(1, len(values) + 1), np.array(values, float)[:, None]


def spliced(starts: list[int], chunks: list[tuple[np.ndarray, np.ndarray]], names: list[str] = ONE):
    return spliced_trajectories(names, starts, [c[0] for c in chunks], [c[1] for c in chunks])


def test_a_later_chunk_replaces_the_earlier_from_its_start() -> None:
    series = spliced([EPOCH, EPOCH + 2 * DT], [chunk([1, 2, 3]), chunk([10, 20, 30])])
    # the target of tick k is the series at t_{k+1}: point i of a chunk stamped s is tick s + i·dt
    ticks = EPOCH + DT * np.arange(5)
    assert series.sample(ticks + DT)[:, 0].tolist() == [1.0, 2.0, 10.0, 20.0, 30.0]
    assert series.start_ns == EPOCH + DT and series.end_ns == EPOCH + 5 * DT


def test_between_points_and_before_the_first_point_the_target_is_linear_in_time() -> None:
    # A: 0 rad at s+0.1 s, 1 rad at s+0.3 s. B arrives at s+0.2 s (A is at 0.5 rad there), its first point 3 rad at +0.1 s.
    s, ms = EPOCH, 1_000_000
    series = spliced_trajectories(ONE, [s, s + 200 * ms], [np.array([100, 300]) * ms, np.array([100]) * ms],
                                  [np.array([[0.0], [1.0]]), np.array([[3.0]])])
    times = s + np.array([100, 150, 200, 250, 300, 900]) * ms
    np.testing.assert_allclose(series.sample(times)[:, 0], [0.0, 0.25, 0.5, 1.75, 3.0, 3.0], rtol=0, atol=1e-12)
    with pytest.raises(TimeSeriesError, match="precedes the first defined target"):
        series.sample(np.array([s + 99 * ms]))


def test_an_empty_trajectory_holds_where_the_target_is() -> None:
    series = spliced_trajectories(ONE, [EPOCH, EPOCH + 2 * DT], [DT * np.array([1, 3]), np.zeros(0, np.int64)],
                                  [np.array([[0.0], [2.0]]), np.zeros((0, 1))])
    assert series.sample(EPOCH + DT * np.array([1, 2, 3, 10]))[:, 0].tolist() == [0.0, 1.0, 1.0, 1.0]
    assert series.end_ns == EPOCH + 2 * DT


def test_equal_starts_the_later_wins_and_a_point_at_the_start_is_jumped_to() -> None:
    series = spliced_trajectories(ONE, [EPOCH, EPOCH + DT, EPOCH + DT],
                                  [DT * np.array([1, 2]), DT * np.array([1]), np.array([0, DT])],
                                  [np.array([[0.0], [1.0]]), np.array([[9.0]]), np.array([[5.0], [6.0]])])
    assert series.sample(EPOCH + DT * np.array([1, 2, 3]))[:, 0].tolist() == [5.0, 6.0, 6.0]


def test_a_trajectory_received_later_but_starting_earlier_replaces_the_earlier_one() -> None:
    """A stop (empty, zero stamp: its receipt time) that arrives 4 ms before the stamp of the chunk sent just
    before it: that chunk never becomes active, the target holds where the one before it was then."""
    ms = 1_000_000
    series = spliced_trajectories(ONE, [EPOCH, EPOCH + 2 * DT, EPOCH + 2 * DT - 4 * ms],
                                  [DT * np.array([1, 2, 3]), DT * np.array([1]), np.zeros(0, np.int64)],
                                  [np.array([[0.0], [1.0], [2.0]]), np.array([[9.0]]), np.zeros((0, 1))])
    np.testing.assert_allclose(series.sample(EPOCH + DT * np.array([1, 2, 3, 4]))[:, 0], [0.0, 0.8, 0.8, 0.8],
                               rtol=0, atol=1e-12)


def test_sampled_targets_are_linear_between_samples() -> None:
    series = sampled_targets(["a", "b"], EPOCH + np.array([0, 10, 30]), np.array([[0.0, 1.0], [1.0, 1.0], [3.0, 0.0]]))
    np.testing.assert_allclose(series.sample(EPOCH + np.array([0, 5, 20, 30, 40])),
                               [[0, 1], [0.5, 1], [2, 0.5], [3, 0], [3, 0]], rtol=0, atol=1e-12)
    assert series.renamed(["x", "y"]).joint_names == ("x", "y")


@pytest.mark.parametrize(("build", "fragment"), [
    (lambda: spliced([EPOCH, EPOCH - 2 * 10**9], [chunk([1]), chunk([2])]),
     r"message #1 starts at \d+ ns, 2 s before message #0 at \d+ ns \(stamps on another clock\?\)"),
    (lambda: spliced_trajectories(ONE, [EPOCH], [np.array([DT, DT])], [np.ones((2, 1))]), "strictly increasing"),
    (lambda: spliced_trajectories(ONE, [EPOCH], [np.array([-1])], [np.ones((1, 1))]), ">= 0"),
    (lambda: spliced_trajectories(ONE, [EPOCH], [np.zeros(0, np.int64)], [np.zeros((0, 1))]), "no trajectory with points"),
    (lambda: spliced_trajectories(ONE, [EPOCH], [np.array([DT])], [np.ones((1, 2))]), "2 positions per point, expected 1"),
    (lambda: sampled_targets(ONE, np.array([EPOCH, EPOCH]), np.ones((2, 1))), "message #1 is stamped .* not after"),
    (lambda: sampled_targets(ONE, np.zeros(0, np.int64), np.zeros((0, 1))), "no target samples"),
])
def test_bad_streams_are_one_line_errors(build, fragment: str) -> None:
    with pytest.raises(TimeSeriesError, match=fragment) as info:
        build()
    assert "\n" not in str(info.value)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(-3, 6), st.integers(1, 8)), min_size=1, max_size=12), st.integers(0, 2**31))
def test_on_grid_chunks_give_the_commands_a_controller_executes(gaps_lengths: list[tuple[int, int]], seed: int) -> None:
    """Any stream of policy chunks on the tick grid, in receipt order, some starting before the one received
    just before (a negative gap): the target of tick k is point k − s of the last chunk received among those
    started at s <= k (its last point once it has run out), exactly."""
    rng = np.random.default_rng(seed)
    starts, chunks, tick = [], [], 10
    for gap, length in gaps_lengths:
        tick = max(0, tick + gap)
        starts.append(tick)
        chunks.append(rng.normal(size=(length, 2)))
    series = spliced_trajectories(["a", "b"], [EPOCH + s * DT for s in starts],
                                  [DT * np.arange(1, len(c) + 1) for c in chunks], chunks)
    last = starts[-1] + len(chunks[-1]) - 1
    ticks = np.arange(min(starts), last + 1)
    expected = []
    for k in ticks:
        c = max(i for i, s in enumerate(starts) if s <= k)
        expected.append(chunks[c][min(k - starts[c], len(chunks[c]) - 1)])
    np.testing.assert_array_equal(series.sample(EPOCH + (ticks + 1) * DT), np.array(expected))
    assert series.start_ns == EPOCH + (min(starts) + 1) * DT and series.end_ns == EPOCH + (last + 1) * DT
