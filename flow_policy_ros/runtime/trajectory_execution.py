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
trusted. Each published trajectory ends at rest (its last ``REST_TAIL_TICKS`` steps shrink to zero,
:func:`end_at_rest`): when no new trajectory replaces it in time (the deadline fallback, counted in
``deadline_fallbacks``) the JTC comes to a smooth stop instead of halting at full speed. Units: rad, ticks.
"""

from __future__ import annotations

import numpy as np

from flow_policy_ros.runtime.decisions import Decision, Stop, Trajectory
from flow_policy_ros.runtime.execution import REST_TAIL_TICKS, Execution, plan_from, unchanged
from flow_policy_ros.runtime.jtc_trajectory import JtcTrajectory, Segment


def end_at_rest(points: np.ndarray, tail: int = REST_TAIL_TICKS) -> np.ndarray:
    """(K, A) ``points`` whose last ``tail`` steps are scaled down linearly to zero: the trajectory
    slows along its own path and ends at rest (each step no longer than before: limits kept)."""
    k = min(tail, len(points) - 1)
    if k <= 0:
        return points
    out = points.copy()
    steps = np.diff(points[-k - 1:], axis=0) * (np.arange(k, 0, -1) - 1)[:, None] / k
    out[-k:] = points[-k - 1] + np.cumsum(steps, axis=0)
    return out


class TrajectoryExecution(Execution):
    """One trajectory per chunk; see the module docstring."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        #: what the JTC executes, time in ticks: point i of a trajectory published for tick k is the
        #: setpoint of tick k + i (no hold: nothing is executed before the first trajectory)
        self.jtc = JtcTrajectory(self.limits.size)
        self._setpoint_before_tick: np.ndarray | None = None  # the setpoint of the previous tick
        self._ended: int | None = None  # start of the last trajectory whose end was counted as a deadline

    def begin_tick(self, tick: int) -> None:
        """The robot moves along the published trajectory (a spliced one takes over at its tick; past
        the end the JTC holds the last point); so does the last command."""
        self._setpoint_before_tick = self.limiter.last_command
        self.scheduler.action_at(tick)  # advances the scheduler's clock, drops passed chunks
        self.jtc.prune(tick)
        segment = self.jtc.segment_at(tick)
        if segment is None:
            return
        if tick > segment.start:  # where the robot was one tick ago (skipped ticks too)
            self._setpoint_before_tick = segment.at(tick - 1)
        self.limiter.advance(segment.at(tick))
        if not segment.is_stop and tick > segment.end and self._ended != segment.start:
            self._ended, self.deadline_hold = segment.start, True  # ran out of points: ended at rest
            self.counters.deadline_fallbacks += 1

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
        last = self.limiter.last_command
        if last is not None:  # the JTC holds the setpoint it has now: the last command
            self.jtc.stop(self.clock.current_tick, hold=last)
        return [Stop(reason)]

    def commit_prefix(self, tick: int, d: int, hold: np.ndarray | None = None) -> np.ndarray:
        if d == 0 or (self.executing() is None and hold is None):
            return np.empty((0, self.limits.size))
        # what the JTC will execute at each tick (a trajectory queued or spliced in on the way included;
        # after a stop its hold; before the first trajectory ``hold``)
        setpoints = [self.jtc.setpoint(t) for t in range(tick, tick + d)]
        return np.stack([np.asarray(hold, dtype=np.float64) if p is None else p for p in setpoints])

    def late_apply(self, tick: int) -> tuple[int, np.ndarray | None]:
        return tick, self._setpoint_before_tick  # published at this tick, its point 0 replaces this tick's

    def executing(self) -> Segment | None:
        """The trajectory the robot executes now (its ``values`` are the points (K, A) rad from tick
        ``start`` on), or None (none yet, or stopped)."""
        segment = self.jtc.segment_at(self.clock.current_tick)
        return None if segment is None or segment.is_stop else segment

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
        last = self.limiter.last_command
        # point 0 replaces what the robot would do at that tick: limit it against the setpoint of the tick before
        plan = end_at_rest(plan)
        points = self.limiter.limit_trajectory(plan, self.tracking.measured,
                                               previous=previous if later else self._setpoint_before_tick)
        self.counters.limiter_clipped += int(not unchanged(points, plan))
        self.jtc.replace(tick, tick + np.arange(len(points)), points)  # a JTC splices it in at its tick
        if later and last is not None:
            self.limiter.advance(last)  # the robot is still on the current trajectory
        self.counters.trajectories_sent += 1
        self.deadline_hold = False
        return [Trajectory(tick, self.clock.tick_ns(tick), points, self.take_pending_stamp())]
