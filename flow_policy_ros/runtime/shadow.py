"""Shadow mode: what the policy would command next to what the robot actually does (pure numpy).

In shadow mode ``policy_node`` runs live on the robot's joint states (and cameras) but publishes
its commands only to preview topics that no controller listens to. Two things differ from a
live run, both here:

* :func:`follow_robot`: the limiter follows the ROBOT, not the node's own previews. Live, the
  velocity limiter's reference is the last command sent, which the arm tracks. In shadow mode
  nothing executes the previews: a limiter that took its own previews as the reference would
  limit each preview against a position the arm never had, and in trajectory mode the node's
  model of what the JointTrajectoryController executes would run along the previews, so each
  new trajectory would start where the previews went, not where the arm is
  (``test/test_shadow.py`` shows the drift). So after each preview the reference is dropped:
  the next preview is limited against the measured position, as a live node's first command
  after activation is. Every preview is within the joint limits and within one step (velocity
  limit x period; k + 1 steps for point k of a trajectory) of the measured position it was
  computed for. The price: consecutive previews may differ by what the arm itself moved plus
  two steps, so a preview stream is not one a controller could execute as is (none does).
* :class:`ShadowComparison`: at each control tick t, the measured position against the preview
  setpoint of tick t - 1 (what a controller would have been tracking during the last period:
  stream mode the last command, held after it; trajectory mode the trajectory's point, as a JTC
  executes it). Per tick the largest |difference| over the joints (rad); over the activation the
  worst tick, the worst per joint, and p50/p95 of the per-tick figure over the last
  :data:`WINDOW_TICKS` ticks. Only ticks in state ``running`` count (a stale or held node has no
  command the arm should follow).

Units: rad, ticks.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import numpy as np

from flow_policy_ros.runtime.controller import PolicyController
from flow_policy_ros.runtime.decisions import Command, Decision, Stop, Trajectory
from flow_policy_ros.runtime.jtc_trajectory import JtcTrajectory
from flow_policy_ros.runtime.trajectory_execution import TrajectoryExecution

#: Ticks in the running p50/p95 (20 s at 50 Hz).
WINDOW_TICKS = 1000


def follow_robot(controller: PolicyController) -> None:
    """After a preview went out: forget it as the limiter's reference, so the next preview is
    limited against the measured arm (and, trajectory mode, nothing is being executed)."""
    controller.limiter.reset()
    execution = controller.execution
    if isinstance(execution, TrajectoryExecution):
        execution.jtc = JtcTrajectory(controller.limits.size)


class ShadowComparison:
    """The previews' setpoints per tick, compared with the measured arm; see the module docstring.

    Args:
        joint_names: the action joints (model order), for the per-joint figures.
        window: ticks in the running percentiles.
    """

    def __init__(self, joint_names: Sequence[str], window: int = WINDOW_TICKS) -> None:
        self.joint_names = tuple(joint_names)
        self._previews = JtcTrajectory(len(self.joint_names))
        self._recent: deque = deque(maxlen=window)
        self.ticks_compared = 0
        self.last_max_abs_rad = float("nan")
        self.worst_max_abs_rad = float("nan")
        self.worst_per_joint_rad = np.full(len(self.joint_names), np.nan)

    def on_decision(self, decision: Decision, current_tick: int | None) -> None:
        """A preview that went out (Command, Trajectory or Stop; others are ignored)."""
        if isinstance(decision, Command):
            self._previews.replace(decision.tick, np.array([decision.tick]), decision.positions[None, :])
        elif isinstance(decision, Trajectory):
            ticks = decision.tick + np.arange(len(decision.points))
            self._previews.replace(decision.tick, ticks, decision.points)
        elif isinstance(decision, Stop) and current_tick is not None:
            self._previews.stop(current_tick)

    def setpoint(self, tick: int) -> np.ndarray | None:
        """(A,) rad the previews ask for at ``tick`` (None before the first preview)."""
        return self._previews.setpoint(tick)

    def on_tick(self, tick: int | None, measured: np.ndarray | None, running: bool) -> np.ndarray | None:
        """Control tick ``tick``: compare ``measured`` (A,) rad with the setpoint of tick - 1.

        Returns the signed difference measured - setpoint (A,) rad, or None when nothing was
        compared (not running, no data, no preview yet).
        """
        if tick is None or measured is None or not running:
            return None
        self._previews.prune(tick - 1)
        setpoint = self._previews.setpoint(tick - 1)
        if setpoint is None:
            return None
        difference = np.asarray(measured, dtype=np.float64) - setpoint
        magnitude = np.abs(difference)
        self.ticks_compared += 1
        self.last_max_abs_rad = float(magnitude.max())
        self._recent.append(self.last_max_abs_rad)
        self.worst_max_abs_rad = float(np.nanmax([self.worst_max_abs_rad, self.last_max_abs_rad]))
        self.worst_per_joint_rad = np.fmax(self.worst_per_joint_rad, magnitude)
        return difference

    def percentile_rad(self, q: float) -> float:
        """The q-th percentile of the per-tick max |difference| over the recent window (NaN if empty)."""
        return float(np.percentile(np.fromiter(self._recent, np.float64), q)) if self._recent else float("nan")

    @property
    def worst_joint(self) -> str:
        """The joint with the largest difference so far ('' before the first comparison)."""
        if not np.any(np.isfinite(self.worst_per_joint_rad)):
            return ""
        return self.joint_names[int(np.nanargmax(self.worst_per_joint_rad))]
