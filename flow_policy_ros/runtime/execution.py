"""How chunks reach the robot: one interface, two executions (stream here, trajectory in its own module).

* stream (:class:`StreamExecution`): one :class:`~flow_policy_ros.runtime.decisions.Command`
  per tick, for a forward position controller. When a chunk is due the tick's command waits
  for the new chunk (it comes with the chunk's result), or, if the observation for it came
  more than 3/4 of a period late, the old chunk's command goes out first.
* trajectory (:class:`~flow_policy_ros.runtime.trajectory_execution.TrajectoryExecution`): one
  :class:`~flow_policy_ros.runtime.decisions.Trajectory` per chunk, executed by a
  JointTrajectoryController; a :class:`~flow_policy_ros.runtime.decisions.Stop` on leaving
  ``running``.

Deadline fallback: when the executing chunk ends and no new chunk is usable, stream mode holds
the last command (a forward position controller keeps it) and trajectory mode's trajectories end
at rest (their last :data:`REST_TAIL_TICKS` points slow down to a standstill, so a JTC that runs
out of points stops smoothly); each such end is counted in ``deadline_fallbacks`` and
:attr:`Execution.deadline_hold` says one is in progress (a WARN on ``/diagnostics``).

Both run every command through the controller's
:class:`~flow_policy_ros.runtime.safety.CommandLimiter` (see
:mod:`flow_policy_ros.runtime.tracking`: it never restarts while a controller lives). The controller
calls the same :class:`Execution` methods in the same tick order whatever the mode. Units: rad.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from flow_policy_ros.runtime.chunking import ChunkScheduler
from flow_policy_ros.runtime.controller_config import ControllerConfig, ControllerCounters
from flow_policy_ros.runtime.decisions import Command, Decision
from flow_policy_ros.runtime.prefix_committer import CommittedCommands
from flow_policy_ros.runtime.safety import CommandLimiter, SafetyLimits
from flow_policy_ros.runtime.tick_clock import TickClock
from flow_policy_ros.runtime.tracking import TRACKING_TOLERANCE_RAD, ArmTracking

#: Trajectory mode: the last points of each published trajectory slow down to rest over this many ticks.
REST_TAIL_TICKS = 6


def unchanged(limited: np.ndarray, target: np.ndarray) -> bool:
    """The limiter left ``target`` as it was (within 1e-9 rad; NaN counts as changed). Same answer
    as ``np.allclose(limited, target, rtol=0, atol=1e-9)`` for finite values, a fraction of its
    cost: it runs at every tick."""
    return bool((np.abs(limited - target) <= 1e-9).all())


def plan_from(scheduler: ChunkScheduler, tick: int, current_tick: int | None) -> np.ndarray:
    """(K, A) what the newest chunk says for ticks ``tick`` on (K may be 0)."""
    chunk = getattr(scheduler, "current", None)
    if chunk is not None and chunk.covers(tick):
        return chunk.actions[tick - chunk.start_tick:].copy()
    return scheduler.plan(tick) if tick == current_tick else np.empty((0, 0))


class Execution(ABC):
    """The part of the controller that depends on the execution mode.

    Args:
        config: the controller's settings.
        limits: limits of the action joints (model order).
        scheduler: the chunk scheduler (shared with the controller, which adds chunks and resets it).
        limiter: the command limiter (the last command actually sent).
        clock: the controller's tick clock.
        tracking: the measured arm position.
        counters: the controller's counters.
    """

    def __init__(self, config: ControllerConfig, limits: SafetyLimits, scheduler: ChunkScheduler,
                 limiter: CommandLimiter, clock: TickClock, tracking: ArmTracking, counters: ControllerCounters) -> None:
        self.config = config
        self.limits = limits
        self.scheduler = scheduler
        self.limiter = limiter
        self.clock = clock
        self.tracking = tracking
        self.counters = counters
        #: the stamp (ns) of the observation of a chunk whose first command has not gone out yet
        self.pending_stamp_ns: int | None = None
        #: the executing chunk ended with no usable new one (deadline fallback in progress)
        self.deadline_hold = False

    def hold_position(self) -> np.ndarray | None:
        """(A,) rad where the arm is held: the last command sent, else the measured position (in limits);
        None when the arm is not tracking the last command (a simulator reset or a driver restart moved
        it): no hold prefix then, the first command ramps from the arm as without real-time chunking."""
        last = self.limiter.last_command
        if last is None:
            return np.clip(self.tracking.measured, self.limits.lower, self.limits.upper)
        if np.max(np.abs(self.tracking.measured - last)) > TRACKING_TOLERANCE_RAD:
            return None
        return last

    def take_pending_stamp(self) -> int | None:
        stamp, self.pending_stamp_ns = self.pending_stamp_ns, None
        return stamp

    def drop_plan(self) -> None:
        """Forget what was planned for the ticks to come (a goal change or a hold)."""
        self.drop_committed()
        self.pending_stamp_ns = None
        self.deadline_hold = False

    @abstractmethod
    def drop_committed(self) -> None:
        """Forget commands committed for later ticks."""

    @abstractmethod
    def begin_tick(self, tick: int) -> None:
        """A new tick starts (before any check): the robot moves on along what it executes."""

    @abstractmethod
    def on_running_tick(self, tick: int, due: bool) -> list[Decision]:
        """The decisions of a tick in state running (``due``: a new chunk was just requested)."""

    @abstractmethod
    def late_command(self, now_ns: int, running: bool) -> list[Decision]:
        """A joint state at ``now_ns`` is about to trigger inference: what must go out before it."""

    @abstractmethod
    def on_chunk(self, tick: int, request_tick: int, prefix_length: int, actions: np.ndarray) -> list[Decision]:
        """A new chunk (H, A) rad, requested at ``request_tick``, was scheduled at tick ``tick``."""

    @abstractmethod
    def stop(self, reason: str) -> list[Decision]:
        """The controller leaves running for a hold: what the robot must be told."""

    @abstractmethod
    def commit_prefix(self, tick: int, d: int, hold: np.ndarray | None = None) -> np.ndarray:
        """(d', A) the commands of ticks tick .. tick+d'-1, fixed now (d' <= d). Without a chunk to
        continue: ``hold`` (A,) repeated d times (the arm holds there), or none (d' = 0) without it."""

    @abstractmethod
    def late_apply(self, tick: int) -> tuple[int, np.ndarray | None]:
        """A chunk arriving at tick ``tick`` applies from (the tick returned) on; the command executed at
        the tick before that (A,) rad, or None if none."""


class StreamExecution(Execution):
    """One command per tick; see the module docstring."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.committed = CommittedCommands(self.limits, self.config.period_s)  # rtc: tick -> command fixed for it
        self._owed_tick: int | None = None  # this tick's command waits for the chunk in flight
        self._last_sent: tuple[int, np.ndarray] | None = None  # (tick, command)
        self._executing = False  # the last command came from a chunk (its end without a new one: deadline)

    def drop_committed(self) -> None:
        self.committed.clear()

    def drop_plan(self) -> None:
        super().drop_plan()
        self._owed_tick = None
        self._executing = False

    def begin_tick(self, tick: int) -> None:
        if self._owed_tick is not None:  # the previous tick's command never came: counted, not replayed
            self.counters.late_first_commands += 1
            self._owed_tick = None

    def on_running_tick(self, tick: int, due: bool) -> list[Decision]:
        if due and not self.config.rtc and tick not in self.committed:
            self._owed_tick = tick  # sent when the new chunk arrives (or late, from the old chunk)
            return []
        return self.command(tick)  # rtc: this tick's command is sent now (none: held) and is the prefix's first row

    def late_command(self, now_ns: int, running: bool) -> list[Decision]:
        owed = self._owed_tick
        if owed is None or now_ns < self.clock.tick_ns(owed) + 3 * self.config.period_ns // 4:
            return []
        # no joint state for most of the tick: the old chunk's command, now
        self._owed_tick = None
        self.counters.late_first_commands += 1
        if owed == self.clock.current_tick and running:
            return self.command(owed)
        return []

    def on_chunk(self, tick: int, request_tick: int, prefix_length: int, actions: np.ndarray) -> list[Decision]:
        if self._owed_tick == tick:
            self._owed_tick = None
            return self.command(tick)
        return []

    def stop(self, reason: str) -> list[Decision]:
        return []  # a forward position controller holds the last command by itself

    def commit_prefix(self, tick: int, d: int, hold: np.ndarray | None = None) -> np.ndarray:
        sent = self._last_sent is not None and self._last_sent[0] == tick
        if d == 0 or (not sent and hold is None):
            return np.empty((0, self.limits.size))
        if not sent:  # nothing was commanded at this tick: the arm holds; so does the prefix
            return self.committed.commit(tick, d, np.asarray(hold, dtype=np.float64), np.empty((0, 0)),
                                         self.tracking.measured)
        return self.committed.commit(tick, d, self._last_sent[1], self.scheduler.plan(tick), self.tracking.measured)

    def late_apply(self, tick: int) -> tuple[int, np.ndarray | None]:
        return tick + 1, self.limiter.last_command  # this tick's command went out before the chunk came

    def command(self, tick: int) -> list[Decision]:
        """The command of ``tick``: committed (rtc) or the scheduler's action, limited; none without one."""
        action = self.scheduler.action_at(tick)
        committed = self.committed.take(tick)
        if committed is not None:  # rtc: fixed at commit time, sent exactly (it is the model's prefix) ...
            last = self.limiter.last_command
            command = committed
            if last is not None:  # ... unless a missed tick put it beyond one step from the last command sent
                step = self.limits.velocity * self.config.period_s
                command = np.clip(committed, last - step, last + step)
                self.counters.rtc_prefix_broken += int(not np.array_equal(command, committed))
            self.limiter.advance(command)
        elif action is None:  # no chunk covers this tick: hold (deadline fallback if one was executing)
            self.counters.deadline_fallbacks += int(self._executing)
            self.deadline_hold = self.deadline_hold or self._executing
            self._executing = False
            return []
        else:
            self._executing, self.deadline_hold = True, False
            command = self.limiter.limit(action, self.tracking.measured)
            self.counters.limiter_clipped += int(not unchanged(command, action))
        self.counters.commands_sent += 1
        self._last_sent = (tick, command)
        return [Command(tick, command, self.take_pending_stamp())]
