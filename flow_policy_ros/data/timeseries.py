"""Resampling of irregularly stamped time series onto a regular control grid (pure numpy).

Times are integer nanoseconds (int64) on one clock. Interpolation weights are computed from
int64 differences, so 1e18-ns epoch stamps lose no precision, and a grid time that equals a
sample time returns that sample exactly.

- :func:`control_grid`: the tick times ``start + k·period`` up to ``stop`` (inclusive).
- :func:`resample_linear`: linear interpolation (joint positions, velocities); refuses to
  extrapolate.
- :func:`sample_hold`: zero-order hold, the last value at or before each grid time (goals,
  commands: what a controller would have been holding then).
"""

from __future__ import annotations

import numpy as np

from flow_policy_ros.errors import TimeSeriesError

#: Longest control grid built (ticks; 2.3 days at 50 Hz). A longer one comes from a corrupt stamp,
#: and allocating it would exhaust memory instead of failing.
MAX_GRID_TICKS = 10_000_000


def period_ns(period_s: float) -> int:
    """Period in s → integer ns (rounded to the nearest ns)."""
    if not period_s > 0:
        raise TimeSeriesError(f"period must be > 0 s, got {period_s}")
    return round(period_s * 1e9)


def control_grid(start_ns: int, stop_ns: int, period_s: float) -> np.ndarray:
    """Tick times (K,) int64: ``start_ns + k·period`` for every k ≥ 0 with a time ≤ ``stop_ns``.

    ``period_s`` is rounded to whole ns first, so ticks never drift. ``stop_ns < start_ns``
    gives an empty grid; more than :data:`MAX_GRID_TICKS` ticks is a TimeSeriesError.
    """
    step = period_ns(period_s)
    if stop_ns < start_ns:
        return np.zeros(0, np.int64)
    count = (int(stop_ns) - int(start_ns)) // step + 1
    if count > MAX_GRID_TICKS:
        raise TimeSeriesError(f"the recording spans {(int(stop_ns) - int(start_ns)) * 1e-9:.3g} s "
                              f"({count} ticks > {MAX_GRID_TICKS}): a stamp is probably corrupt")
    return int(start_ns) + step * np.arange(count, dtype=np.int64)


def _check_series(times_ns: np.ndarray, values: np.ndarray, strict: bool) -> tuple[np.ndarray, np.ndarray]:
    times = np.asarray(times_ns, dtype=np.int64)
    vals = np.asarray(values)
    if times.ndim != 1 or len(times) == 0:
        raise TimeSeriesError(f"times must be a non-empty 1-D array, got shape {times.shape}")
    if vals.shape[:1] != times.shape:
        raise TimeSeriesError(f"values {vals.shape} must have one row per time ({len(times)})")
    steps = np.diff(times)
    if strict and np.any(steps <= 0):
        raise TimeSeriesError("times must be strictly increasing for interpolation")
    if np.any(steps < 0):
        raise TimeSeriesError("times must be non-decreasing")
    return times, vals


def resample_linear(times_ns: np.ndarray, values: np.ndarray, grid_ns: np.ndarray) -> np.ndarray:
    """Linear interpolation of ``values`` (T, ...) at ``times_ns`` (T,) onto ``grid_ns`` (K,) → (K, ...) float64.

    Raises TimeSeriesError if a grid time lies outside ``[times_ns[0], times_ns[-1]]`` or the
    times are not strictly increasing.
    """
    times, vals = _check_series(times_ns, values, strict=True)
    vals = vals.astype(np.float64, copy=False)
    grid = np.asarray(grid_ns, dtype=np.int64)
    if len(grid) == 0:
        return np.zeros((0,) + vals.shape[1:], np.float64)
    if grid.min() < times[0] or grid.max() > times[-1]:
        raise TimeSeriesError(
            f"grid [{grid.min()}, {grid.max()}] ns leaves the covered range [{times[0]}, {times[-1]}] ns"
        )
    if len(times) == 1:
        return np.repeat(vals[:1], len(grid), axis=0)
    lo = np.clip(np.searchsorted(times, grid, side="right") - 1, 0, len(times) - 2)
    span = (times[lo + 1] - times[lo]).astype(np.float64)
    w = ((grid - times[lo]).astype(np.float64) / span).reshape((-1,) + (1,) * (vals.ndim - 1))
    # (1 - w)·a + w·b is exact at both ends (w = 0 gives a, w = 1 gives b).
    return (1.0 - w) * vals[lo] + w * vals[lo + 1]


def sample_hold(times_ns: np.ndarray, values: np.ndarray, grid_ns: np.ndarray) -> np.ndarray:
    """Zero-order hold: for each grid time (K,), the last of ``values`` (T, ...) stamped at or before it → (K, ...).

    Of several samples with the same stamp the last one wins. Raises TimeSeriesError if a grid
    time precedes the first sample. Values keep their dtype.
    """
    times, vals = _check_series(times_ns, values, strict=False)
    grid = np.asarray(grid_ns, dtype=np.int64)
    if len(grid) == 0:
        return vals[:0].copy()
    if grid.min() < times[0]:
        raise TimeSeriesError(f"grid time {grid.min()} ns precedes the first sample at {times[0]} ns")
    return vals[np.searchsorted(times, grid, side="right") - 1]
