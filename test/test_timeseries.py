"""Resampling onto the control grid, checked against analytic cases (exact)."""

from __future__ import annotations

import numpy as np
import pytest

from flow_policy_ros.data.timeseries import TimeSeriesError, control_grid, resample_linear, sample_hold

EPOCH = 1_700_000_000_000_000_000  # realistic ns stamps: precision must survive them


def test_control_grid_is_inclusive_and_drift_free() -> None:
    grid = control_grid(EPOCH, EPOCH + 100_000_000, 0.02)
    np.testing.assert_array_equal(grid, EPOCH + 20_000_000 * np.arange(6))
    assert grid.dtype == np.int64
    assert len(control_grid(EPOCH, EPOCH + 99_999_999, 0.02)) == 5
    assert len(control_grid(EPOCH, EPOCH - 1, 0.02)) == 0
    # 1/3 s rounds to 333_333_333 ns once; tick 3000 is exactly 3000 rounded periods later.
    assert control_grid(0, 1000 * 10**9, 1 / 3)[-1] == 3000 * 333_333_333


def test_resample_linear_is_exact_on_a_ramp() -> None:
    times = EPOCH + np.array([0, 10, 30, 60], dtype=np.int64) * 1_000_000
    values = np.stack([times - EPOCH, -2 * (times - EPOCH)], axis=1).astype(np.float64) / 1e6  # ms, -2 ms
    grid = EPOCH + np.array([0, 5, 10, 20, 45, 60], dtype=np.int64) * 1_000_000
    out = resample_linear(times, values, grid)
    expected = np.stack([[0, 5, 10, 20, 45, 60], [0, -10, -20, -40, -90, -120]], axis=1).astype(np.float64)
    np.testing.assert_array_equal(out, expected)


def test_resample_linear_returns_samples_exactly_at_their_times() -> None:
    rng = np.random.default_rng(0)
    times = EPOCH + np.cumsum(rng.integers(1, 10**7, size=50))
    values = rng.normal(size=(50, 7))
    np.testing.assert_array_equal(resample_linear(times, values, times), values)


def test_resample_linear_refuses_to_extrapolate() -> None:
    times = np.array([10, 20], dtype=np.int64)
    values = np.zeros((2, 1))
    with pytest.raises(TimeSeriesError, match="leaves the covered range"):
        resample_linear(times, values, np.array([9]))
    with pytest.raises(TimeSeriesError, match="leaves the covered range"):
        resample_linear(times, values, np.array([21]))
    with pytest.raises(TimeSeriesError, match="strictly increasing"):
        resample_linear(np.array([10, 10]), values, np.array([10]))


def test_sample_hold_takes_last_value_at_or_before() -> None:
    times = np.array([0, 10, 10, 30], dtype=np.int64)
    values = np.array([[1.0], [2.0], [3.0], [4.0]])
    out = sample_hold(times, values, np.array([0, 9, 10, 29, 30, 1000]))
    np.testing.assert_array_equal(out[:, 0], [1.0, 1.0, 3.0, 3.0, 4.0, 4.0])
    with pytest.raises(TimeSeriesError, match="precedes the first sample"):
        sample_hold(times, values, np.array([-1]))


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(TimeSeriesError, match="one row per time"):
        sample_hold(np.array([0, 1]), np.zeros((3, 2)), np.array([0]))
