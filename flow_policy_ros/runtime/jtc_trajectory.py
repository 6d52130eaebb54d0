"""Joint trajectories spliced and sampled the way a JointTrajectoryController executes them (pure numpy).

One model for every place that needs to know what a JTC commands: the controller's trajectory
execution (time in control ticks), the simulated robot of ``sim_node`` (time in ns) and the
position targets read back from bags (:mod:`flow_policy_ros.data.targets`, ns). Time is an
integer of one clock, in whatever unit the caller uses.

Semantics (ros_controllers' JTC with position-only points, as ros2_controllers' for the usual
stamps):

* A trajectory starts at its start time and REPLACES what was received before it from then on:
  before its start the older trajectories still run; any trajectory starting at or after its
  start is dropped (a trajectory stamped ahead is queued until its start).
* Between its start and its first point the setpoint moves linearly from where the
  trajectories started before it are at its start (no jump; one replaced at its very start
  never ran); a point exactly at the start is jumped to. Points before the start (a late
  trajectory) are skipped.
* Between points the setpoint is linear in time (velocities and accelerations in the points are
  not used); it is exact at each point; after the last point it holds it.
* An empty trajectory is a stop: hold the setpoint of its start time (that of the trajectories
  started before it).

Before the first trajectory the setpoint is ``hold`` (a JTC holding its state), or undefined
(None) when no hold is given. Units: rad, and rad per time unit for velocities.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Segment:
    """One trajectory as executed: active from ``start`` until the next segment's start.

    Attributes:
        start: when it takes over (time units).
        times: (n,) int64 strictly increasing knot times, n >= 1 (the first is >= ``start`` unless
            it is the lead-in knot at ``start``).
        values: (n, J) float64 setpoints at the knots (rad).
        is_stop: an empty trajectory: holds ``values[0]`` from ``start`` on.
    """

    start: int
    times: np.ndarray
    values: np.ndarray
    is_stop: bool = False

    @property
    def end(self) -> int:
        """Time of the last knot (held after it)."""
        return int(self.times[-1])

    def at(self, t: int) -> np.ndarray:
        """Setpoint (J,) rad at time ``t``: linear between knots, exact at them, held outside them."""
        times, values = self.times, self.values
        if t >= times[-1]:
            return values[-1].copy()
        if t <= times[0]:
            return values[0].copy()
        i = bisect_right(times.tolist(), t) - 1
        if times[i] == t:
            return values[i].copy()
        w = float(t - times[i]) / float(times[i + 1] - times[i])
        return (1.0 - w) * values[i] + w * values[i + 1]

    def velocity(self, t: int, time_unit_s: float) -> np.ndarray:
        """Velocity (J,) rad/s at ``t`` (the slope of the segment it lies on; 0 outside the knots)."""
        times, values = self.times, self.values
        if t >= times[-1] or t < times[0]:
            return np.zeros(values.shape[1])
        i = bisect_right(times.tolist(), t) - 1
        return (values[i + 1] - values[i]) / (float(times[i + 1] - times[i]) * time_unit_s)

    def sample(self, times: np.ndarray) -> np.ndarray:
        """Setpoints (K, J) at ``times`` (K,) int64; the same values as :meth:`at`, vectorized."""
        knots, values = self.times, self.values
        times = np.asarray(times, np.int64)
        if len(knots) == 1:
            return np.repeat(values[:1], len(times), axis=0)
        lo = np.clip(np.searchsorted(knots, times, side="right") - 1, 0, len(knots) - 2)
        # int64 differences first: 1e18-ns epoch stamps keep their precision.
        w = np.clip((times - knots[lo]).astype(np.float64) / (knots[lo + 1] - knots[lo]).astype(np.float64), 0.0, 1.0)
        out = (1.0 - w)[:, None] * values[lo] + w[:, None] * values[lo + 1]
        at_knot = w == 0.0
        out[at_knot] = values[lo[at_knot]]  # exact at the knots (also the sign of a zero)
        past = w == 1.0
        out[past] = values[lo[past] + 1]
        return out


class JtcTrajectory:
    """Trajectories as a JTC executes them; see the module docstring.

    Args:
        dof: J, joints per point.
        hold: (J,) setpoint before the first trajectory (rad), or None (undefined there).
    """

    def __init__(self, dof: int, hold: np.ndarray | None = None) -> None:
        self.dof = dof
        self.hold = None if hold is None else np.asarray(hold, dtype=np.float64).reshape(dof).copy()
        self._segments: list[Segment] = []

    @property
    def segments(self) -> tuple[Segment, ...]:
        """The segments in start order (the last one whose start has passed is active)."""
        return tuple(self._segments)

    def segment_at(self, t: int) -> Segment | None:
        """The segment active at ``t`` (the last one started at or before it), None before the first."""
        i = bisect_right([s.start for s in self._segments], t) - 1
        return self._segments[i] if i >= 0 else None

    def setpoint(self, t: int) -> np.ndarray | None:
        """Setpoint (J,) rad at ``t``; before the first segment the hold (None without one)."""
        segment = self.segment_at(t)
        if segment is None:
            return None if self.hold is None else self.hold.copy()
        return segment.at(t)

    def sample(self, times: np.ndarray) -> np.ndarray:
        """Setpoints (K, J) at ``times`` (K,) int64, each from the segment active then (vectorized).

        Times before the first segment get the hold (NaN without one).
        """
        return sample_segments(self._segments, times, self.dof, self.hold)

    def replace(self, start: int, times: np.ndarray, values: np.ndarray, hold: np.ndarray | None = None) -> Segment | None:
        """Execute a trajectory from ``start`` on: point i (``values[i]``, (J,) rad) reached at ``times[i]``.

        ``times`` (n,) int64 strictly increasing (the caller checks). No points (or none at or
        after ``start``) is a stop. ``hold`` (J,) rad: the setpoint at ``start`` to move from (or
        hold), if the caller knows it better (default: that of the trajectories started before).
        Returns the new segment, or None when there is nothing to execute or hold.
        """
        times = np.asarray(times, np.int64).reshape(-1)
        values = np.asarray(values, np.float64).reshape(len(times), self.dof)
        keep = times >= start  # points already passed (a late trajectory) are skipped
        times, values = times[keep], values[keep]
        is_stop = len(times) == 0
        self._segments = [s for s in self._segments if s.start < start]  # replaced at their start: never ran
        before = self.setpoint(start) if hold is None else np.asarray(hold, np.float64).reshape(self.dof)
        if before is not None and (is_stop or times[0] > start):
            times = np.concatenate([[start], times]).astype(np.int64)
            values = np.concatenate([before[None, :], values])
        if len(times) == 0:
            return None
        segment = Segment(int(start), times, values, is_stop=is_stop)
        self._segments.append(segment)
        return segment

    def stop(self, start: int, hold: np.ndarray | None = None) -> Segment | None:
        """An empty trajectory: hold the setpoint of ``start`` (or ``hold``, (J,) rad) from then on
        (None: nothing to hold)."""
        return self.replace(start, np.empty(0, np.int64), np.empty((0, self.dof)), hold)

    def prune(self, t: int) -> None:
        """Forget segments that can no longer be active at or after ``t`` nor be the one a trajectory
        starting at or after ``t`` joins (keeps memory bounded); the last one forgotten leaves its
        final setpoint as the hold."""
        while len(self._segments) >= 2 and self._segments[1].start < t:
            self.hold = self._segments[0].values[-1].copy()
            self._segments.pop(0)


def sample_segments(segments: Sequence[Segment], times: np.ndarray, dof: int, hold: np.ndarray | None = None) -> np.ndarray:
    """Setpoints (K, J) at ``times`` (K,) int64 of ``segments`` (in start order), each from the segment
    active then; times before the first segment get ``hold`` (J,) (NaN without one)."""
    times = np.asarray(times, np.int64)
    out = np.full((len(times), dof), np.nan)
    if len(times) == 0:
        return out
    starts = np.array([s.start for s in segments], np.int64)
    order = np.argsort(times, kind="stable")
    ordered = times[order]
    active = np.searchsorted(starts, ordered, side="right") - 1
    # in time order the active segment only advances: one contiguous run of times per segment
    bounds = np.flatnonzero(np.diff(active)) + 1
    for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(ordered)]):
        if active[lo] >= 0:
            out[order[lo:hi]] = segments[active[lo]].sample(ordered[lo:hi])
        elif hold is not None:
            out[order[lo:hi]] = hold
    return out
