"""Trajectory execution: one JointTrajectory per chunk, executed by a JointTrajectoryController (pure).

The controller publishes the newest chunk's plan as a
:class:`~flow_policy_ros.runtime.decisions.Trajectory` whose point i applies at tick
``tick + i`` and follows it tick by tick the way the JTC executes it: the limiter's last
command is the trajectory's point of the current tick (past the end, its last point). A new
trajectory's first point, which replaces the old one's point of the same tick, is limited
against the setpoint of the tick before. With real-time chunking the trajectory is stamped at
the end of the committed prefix (a tick ahead): the robot keeps executing the current one until
then, and the JTC splices the new one in there. Leaving ``running`` for ``stale``, ``error`` or
``hold`` publishes one empty JointTrajectory (:class:`~flow_policy_ros.runtime.decisions.Stop`):
a JTC then holds its current setpoint instead of finishing a chunk computed from data no longer
trusted. Units: rad, ticks.
"""

from __future__ import annotations

import numpy as np

from flow_policy_ros.runtime.decisions import Decision, Stop, Trajectory
from flow_policy_ros.runtime.execution import Execution, plan_from, unchanged


class TrajectoryExecution(Execution):
    """One trajectory per chunk; see the module docstring."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._trajectory: tuple[int, np.ndarray] | None = None  # what the robot executes: (start tick, points)
        self._next_trajectory: tuple[int, np.ndarray] | None = None  # stamped for a later tick (rtc)
        self._setpoint_before_tick: np.ndarray | None = None  # the setpoint of the previous tick

    def begin_tick(self, tick: int) -> None:
        """The robot moves along the published trajectory; so does the last command."""
        self._setpoint_before_tick = self.limiter.last_command
        self.scheduler.action_at(tick)  # advances the scheduler's clock, drops passed chunks
        if self._next_trajectory is not None and tick >= self._next_trajectory[0]:
            start, points = self._next_trajectory  # the spliced trajectory takes over
            self._trajectory, self._next_trajectory = self._next_trajectory, None
            self.limiter.advance(points[min(tick - start, len(points) - 1)])
            if tick > start:
                self._setpoint_before_tick = points[min(tick - 1 - start, len(points) - 1)].copy()
            return
        if self._trajectory is not None:
            start, points = self._trajectory  # past its end the JTC holds the last point
            if tick - 1 - start >= 0:  # where the robot was one tick ago (skipped ticks too)
                self._setpoint_before_tick = points[min(tick - 1 - start, len(points) - 1)].copy()
            if tick - start > 0:
                self.limiter.advance(points[min(tick - start, len(points) - 1)])

    def drop_committed(self) -> None:
        """Nothing to drop: the published trajectory is what is committed, the JTC executes it."""

    def on_running_tick(self, tick: int, due: bool) -> list[Decision]:
        return []  # the JTC executes the published trajectory by itself

    def late_command(self, now_ns: int, running: bool) -> list[Decision]:
        return []

    def on_chunk(self, tick: int, request_tick: int, prefix_length: int, actions: np.ndarray) -> list[Decision]:
        d = prefix_length
        if d and tick < request_tick + d:  # splice at the prefix boundary: stamped for a later tick
            return self.publish(request_tick + d, previous=actions[d - 1])
        return self.publish(tick)

    def stop(self, reason: str) -> list[Decision]:
        self.counters.stops_sent += 1
        self._trajectory = self._next_trajectory = None  # the JTC holds the setpoint it has now: the last command
        return [Stop(reason)]

    def commit_prefix(self, tick: int, d: int) -> np.ndarray:
        if d == 0 or self._trajectory is None:
            return np.empty((0, self.limits.size))
        rows = []
        for t in range(tick, tick + d):  # what the JTC will execute at each tick (a pending splice included)
            start, points = self._next_trajectory if self._next_trajectory and t >= self._next_trajectory[0] \
                else self._trajectory
            rows.append(points[min(max(t - start, 0), len(points) - 1)])
        return np.stack(rows)

    def executing(self) -> tuple[int, np.ndarray] | None:
        """(start tick, points (K, A) rad) of the trajectory the robot executes now, or None."""
        return self._trajectory

    def publish(self, tick: int, previous: np.ndarray | None = None) -> list[Decision]:
        """The plan from ``tick`` on as one trajectory whose point 0 applies at tick ``tick``.

        ``tick`` may lie ahead (rtc: the end of the committed prefix, whose last action is
        ``previous``); the robot keeps executing the current trajectory until then.
        """
        current_tick = self.clock.current_tick
        plan = plan_from(self.scheduler, tick, current_tick)
        if len(plan) == 0:
            return []
        later = tick > current_tick
        if not later and self.rebase_if_not_tracking():
            self._setpoint_before_tick = None  # ramp from the arm (the JTC does not hold the old setpoint)
        last = self.limiter.last_command
        # point 0 replaces what the robot would do at that tick: limit it against the setpoint of the tick before
        points = self.limiter.limit_trajectory(plan, self.tracking.measured,
                                               previous=previous if later else self._setpoint_before_tick)
        self.counters.limiter_clipped += int(not unchanged(points, plan))
        if later:
            self._next_trajectory = (tick, points)
            if last is not None:
                self.limiter.advance(last)  # the robot is still on the current trajectory
        else:
            self._trajectory, self._next_trajectory = (tick, points), None
        self.counters.trajectories_sent += 1
        return [Trajectory(tick, self.clock.tick_ns(tick), points, self.take_pending_stamp())]
