"""Time-interpolated execution of joint trajectories, as a JointTrajectoryController does (pure, no ROS).

Time is absolute integer nanoseconds (the same clock as the messages' ``header.stamp``).
A :class:`TrajectoryFollower` answers one question: what is the joint setpoint (positions in
rad, feed-forward velocities in rad/s) at time ``t``? It is fed three kinds of input:

* :meth:`TrajectoryFollower.set_trajectory`: a JointTrajectory as (stamp, offsets, positions).
  Point i is reached at ``stamp + offsets[i]``; between points the setpoint moves linearly.
  The segment before point 0 starts at ``stamp`` from whatever the previous plan commanded at
  that instant, so consecutive chunks join without a jump in the setpoint. A new trajectory
  REPLACES the old one from its start time: before ``stamp`` the old plan still runs, from
  ``stamp`` on only the new one counts (a trajectory stamped in the future is queued; any
  queued trajectory starting at or after the new one's start is dropped). A stamp of 0 means
  "now". A trajectory that starts in the past starts now instead (points already passed are
  skipped), like ros2_control's JTC does for late trajectories.
* An empty trajectory: stop, i.e. hold the setpoint of this instant (JTC semantics).
* :meth:`TrajectoryFollower.command`: a stream command (a forward position controller at
  control rate): the target is reached one control period after it is received, the
  project-wide convention "the command issued at t_k is the target for t_{k+1}".

After the last point the setpoint holds (zero velocity): with no new input the arm holds its
last target and never drifts.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from flow_policy_ros.errors import TrajectoryError


@dataclass(frozen=True)
class Plan:
    """One trajectory as executed: piecewise linear through (times_ns, positions).

    Attributes:
        times_ns: (K + 1,) strictly increasing absolute times (ns); [0] is the start.
        positions: (K + 1, J) setpoints (rad); [0] is the setpoint the plan starts from.
    """

    times_ns: np.ndarray
    positions: np.ndarray

    @property
    def start_ns(self) -> int:
        return int(self.times_ns[0])

    @property
    def end_ns(self) -> int:
        return int(self.times_ns[-1])

    def sample(self, t_ns: int) -> tuple[np.ndarray, np.ndarray]:
        """Setpoint (J,) rad and velocity (J,) rad/s at ``t_ns`` (held before start and after the end)."""
        times, positions = self.times_ns, self.positions
        if t_ns >= times[-1]:
            return positions[-1].copy(), np.zeros(positions.shape[1])
        if t_ns < times[0]:
            return positions[0].copy(), np.zeros(positions.shape[1])
        i = bisect_right(times.tolist(), t_ns) - 1
        span = float(times[i + 1] - times[i])
        velocity = (positions[i + 1] - positions[i]) / (span * 1e-9)
        alpha = (t_ns - times[i]) / span
        return positions[i] + alpha * (positions[i + 1] - positions[i]), velocity



class TrajectoryFollower:
    """The setpoint generator of a JointTrajectoryController; see the module docstring.

    Args:
        initial: (J,) setpoint to hold until the first input (rad).
    """

    def __init__(self, initial: Sequence[float]) -> None:
        self.reset(initial)

    def reset(self, hold: Sequence[float]) -> None:
        """Drop every plan and hold ``hold`` (J,) rad (e.g. at an episode reset)."""
        q = np.asarray(hold, dtype=np.float64).reshape(-1)
        self._dof = q.size
        self._hold = q.copy()
        self._plans: list[Plan] = []

    @property
    def dof(self) -> int:
        return self._dof

    @property
    def plans(self) -> tuple[Plan, ...]:
        """The plans in start order (the last one whose start has passed is active)."""
        return tuple(self._plans)

    def sample(self, t_ns: int) -> tuple[np.ndarray, np.ndarray]:
        """Setpoint (J,) rad and feed-forward velocity (J,) rad/s at time ``t_ns``."""
        starts = [p.start_ns for p in self._plans]
        i = bisect_right(starts, t_ns) - 1
        if i < 0:
            return self._hold.copy(), np.zeros(self._dof)
        return self._plans[i].sample(t_ns)

    def prune(self, t_ns: int) -> None:
        """Forget plans that can no longer be active at or after ``t_ns`` (keeps memory bounded)."""
        while len(self._plans) >= 2 and self._plans[1].start_ns <= t_ns:
            self._hold = self._plans[0].positions[-1].copy()
            self._plans.pop(0)

    def set_trajectory(self, stamp_ns: int, offsets_s: Sequence[float], positions: np.ndarray, now_ns: int) -> None:
        """Execute a trajectory: point i (positions[i], (J,) rad) reached at ``stamp_ns + offsets_s[i]``.

        ``stamp_ns == 0`` means now; no points means stop (hold the setpoint at ``max(stamp, now)``).
        Raises :class:`TrajectoryError` on bad input (the current plan is then unchanged).
        """
        start_ns = now_ns if stamp_ns == 0 else max(int(stamp_ns), int(now_ns))
        base_ns = now_ns if stamp_ns == 0 else int(stamp_ns)
        offsets = np.asarray(offsets_s, dtype=np.float64).reshape(-1)
        points = np.asarray(positions, dtype=np.float64).reshape(len(offsets), -1) if len(offsets) else np.empty((0, self._dof))
        if points.shape[1] != self._dof:
            raise TrajectoryError(f"trajectory points have {points.shape[1]} joints, expected {self._dof}")
        if not np.all(np.isfinite(points)) or not np.all(np.isfinite(offsets)):
            raise TrajectoryError("trajectory has NaN/inf positions or times")
        times = base_ns + np.round(offsets * 1e9).astype(np.int64)
        if np.any(np.diff(times) <= 0) or (len(times) and offsets[0] < 0):
            raise TrajectoryError(f"time_from_start must be >= 0 and strictly increasing, got {offsets.tolist()}")
        start_q, _ = self.sample(start_ns)
        keep = times > start_ns  # points already passed (late trajectory) are skipped
        if len(times) and not np.any(keep):
            raise TrajectoryError(f"trajectory ended {(start_ns - times[-1]) * 1e-9:.3f} s ago; ignored (as a JTC does)")
        points, times = points[keep], times[keep]
        plan = Plan(np.concatenate([[start_ns], times]).astype(np.int64), np.vstack([start_q[None, :], points]))
        self._plans = [p for p in self._plans if p.start_ns < start_ns] + [plan]

    def command(self, positions: Sequence[float], now_ns: int, period_s: float) -> None:
        """A stream command received at ``now_ns``: reach ``positions`` (J,) rad one period (s) later."""
        self.set_trajectory(now_ns, [period_s], np.asarray(positions, dtype=np.float64)[None, :], now_ns)
