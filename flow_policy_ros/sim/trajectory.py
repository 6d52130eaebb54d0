"""Time-interpolated execution of joint trajectories, as a JointTrajectoryController does (pure, no ROS).

A thin adapter of :mod:`flow_policy_ros.runtime.jtc_trajectory` (the one model of a JTC) for the
simulated robot of ``sim_node``. Time is absolute integer nanoseconds (the same clock as the
messages' ``header.stamp``). A :class:`TrajectoryFollower` answers one question: what is the
joint setpoint (positions in rad, feed-forward velocities in rad/s) at time ``t``? It is fed
three kinds of input:

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

from collections.abc import Sequence

import numpy as np

from flow_policy_ros.errors import TrajectoryError
from flow_policy_ros.runtime.jtc_trajectory import JtcTrajectory, Segment

#: One trajectory as executed (times in ns): the JTC model's segment.
Plan = Segment

__all__ = ["Plan", "TrajectoryError", "TrajectoryFollower"]


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
        self._model = JtcTrajectory(q.size, q)

    @property
    def dof(self) -> int:
        return self._model.dof

    @property
    def plans(self) -> tuple[Plan, ...]:
        """The plans in start order (the last one whose start has passed is active)."""
        return self._model.segments

    def sample(self, t_ns: int) -> tuple[np.ndarray, np.ndarray]:
        """Setpoint (J,) rad and feed-forward velocity (J,) rad/s at time ``t_ns``."""
        plan = self._model.segment_at(t_ns)
        if plan is None:
            return self._model.hold.copy(), np.zeros(self.dof)
        return plan.at(t_ns), plan.velocity(t_ns, 1e-9)

    def prune(self, t_ns: int) -> None:
        """Forget plans that can no longer be active at or after ``t_ns`` (keeps memory bounded)."""
        self._model.prune(t_ns)

    def set_trajectory(self, stamp_ns: int, offsets_s: Sequence[float], positions: np.ndarray, now_ns: int) -> None:
        """Execute a trajectory: point i (positions[i], (J,) rad) reached at ``stamp_ns + offsets_s[i]``.

        ``stamp_ns == 0`` means now; no points means stop (hold the setpoint at ``max(stamp, now)``).
        Raises :class:`TrajectoryError` on bad input (the current plan is then unchanged).
        """
        dof = self.dof
        start_ns = now_ns if stamp_ns == 0 else max(int(stamp_ns), int(now_ns))
        base_ns = now_ns if stamp_ns == 0 else int(stamp_ns)
        offsets = np.asarray(offsets_s, dtype=np.float64).reshape(-1)
        points = np.asarray(positions, dtype=np.float64).reshape(len(offsets), -1) if len(offsets) else np.empty((0, dof))
        if points.shape[1] != dof:
            raise TrajectoryError(f"trajectory points have {points.shape[1]} joints, expected {dof}")
        if not np.all(np.isfinite(points)) or not np.all(np.isfinite(offsets)):
            raise TrajectoryError("trajectory has NaN/inf positions or times")
        times = base_ns + np.round(offsets * 1e9).astype(np.int64)
        if np.any(np.diff(times) <= 0) or (len(times) and offsets[0] < 0):
            raise TrajectoryError(f"time_from_start must be >= 0 and strictly increasing, got {offsets.tolist()}")
        if len(times) and times[-1] <= start_ns:
            raise TrajectoryError(f"trajectory ended {(start_ns - times[-1]) * 1e-9:.3f} s ago; ignored (as a JTC does)")
        self._model.replace(start_ns, times, points)  # points already passed (late trajectory) are skipped

    def command(self, positions: Sequence[float], now_ns: int, period_s: float) -> None:
        """A stream command received at ``now_ns``: reach ``positions`` (J,) rad one period (s) later."""
        self.set_trajectory(now_ns, [period_s], np.asarray(positions, dtype=np.float64)[None, :], now_ns)
