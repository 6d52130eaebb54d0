"""Real-time chunking: which commands to commit as the next chunk's prefix, and the check of its answer (pure).

With ``chunking='rtc'`` (a model trained with a committed prefix), at each replan (observation
at tick k) the controller commits the commands of the ticks that will pass before the new chunk
can apply, d = (the longest recent inference delay in ticks) + a margin, clipped to the model's
d_max, and passes them as the prefix; the model returns them exactly and continues them. The
prefix is what is actually commanded: in stream mode the command sent at tick k and the next
d - 1 commands of the executing chunk run through the limiter at commit time and are then sent
exactly as committed (:class:`CommittedCommands`; after a missed tick one may be re-limited to
one step from the last command sent: counted in ``rtc_prefix_broken``); in trajectory mode the
published trajectory's points for those ticks (what the JointTrajectoryController executes).
Each execution says which rows it commits (``Execution.commit_prefix``).

The new chunk takes over at tick k + d: stream mode switches there, trajectory mode stamps the
new trajectory at tick k + d (a JTC splices it in at the prefix boundary). A chunk that arrives
after k + d is counted in ``rtc_late_chunks`` and applies from its arrival. If the required d
exceeds ``replan_every`` the controller refuses (state ``error``, reason naming both numbers):
the next replan would start before this one's chunk applies. Units: rad, ticks.
"""

from __future__ import annotations

from collections import deque
from typing import Protocol

import numpy as np

from flow_policy_ros.runtime.controller_config import ControllerConfig, ControllerCounters
from flow_policy_ros.runtime.safety import SafetyLimits, clamp_command

#: Inference delays (ticks) remembered to size the prefix.
DELAY_HISTORY = 16
#: How closely a chunk must reproduce its committed prefix (rad).
PREFIX_TOLERANCE_RAD = 1e-5


class PrefixSource(Protocol):
    """What an execution commits: the commands of ticks ``tick .. tick + d' - 1`` (d' <= d), (d', A) rad."""

    def commit_prefix(self, tick: int, d: int) -> np.ndarray: ...


class PrefixCommitter:
    """Sizes the prefix from measured delays, commits it, and checks that the chunk reproduces it.

    Args:
        config: the controller's settings (``rtc_max_delay``, ``rtc_margin_ticks``, ``replan_every``, H).
        action_dim: A, joints per action.
        counters: where prefix ticks, clipped prefixes and late chunks are counted.
    """

    def __init__(self, config: ControllerConfig, action_dim: int, counters: ControllerCounters) -> None:
        self.config = config
        self.action_dim = action_dim
        self.counters = counters
        self._delays: deque = deque(maxlen=DELAY_HISTORY)  # ticks from request to result
        self._requested: np.ndarray | None = None  # (d, A) of the request in flight

    def record_delay(self, ticks: int) -> None:
        """A result came ``ticks`` ticks after its request's tick."""
        self._delays.append(ticks)

    def needed_length(self) -> int:
        """Ticks that will pass before a chunk requested now can apply, plus the margin (not clipped)."""
        needed = (max(self._delays) if self._delays else 0) + self.config.rtc_margin_ticks
        if needed > self.config.rtc_max_delay:
            self.counters.rtc_prefix_clipped += 1
        return needed

    def refusal(self, needed: int) -> str:
        """Why a prefix of ``needed`` ticks cannot be run ('' if it fits in ``replan_every``)."""
        if needed <= self.config.replan_every:
            return ""
        return (f"rtc: the prefix needs {needed} ticks (inference took up to {max(self._delays)} ticks, "
                f"margin {self.config.rtc_margin_ticks}) but replan_every is {self.config.replan_every}: "
                f"set replan_every >= {needed}")

    def commit(self, tick: int, needed: int, source: PrefixSource) -> tuple[np.ndarray | None, int]:
        """Commit up to ``needed`` (clipped to d_max) commands from tick ``tick`` on.

        Returns (prefix (H, A) rad with rows >= d zero, or None; d, the prefix length).
        """
        rows = source.commit_prefix(tick, min(needed, self.config.rtc_max_delay))
        d = len(rows)
        prefix = None
        if d:
            prefix = np.zeros((self.config.horizon, self.action_dim))
            prefix[:d] = rows
        self._requested = prefix[:d].copy() if d else None
        self.counters.rtc_prefix_ticks += d
        return prefix, d

    def reproduces(self, actions: np.ndarray, d: int) -> bool:
        """The chunk (H, A) rad starts with the ``d`` committed actions of the request in flight."""
        return self._requested is not None and bool(
            np.allclose(actions[:d], self._requested, rtol=0, atol=PREFIX_TOLERANCE_RAD))

    def count_if_late(self, tick: int, request_tick: int, d: int) -> None:
        """A chunk with a ``d``-action prefix requested at ``request_tick`` arrived at ``tick``."""
        if d and tick >= request_tick + d:
            self.counters.rtc_late_chunks += 1


class CommittedCommands:
    """Stream mode: commands fixed at commit time for ticks to come (tick -> (A,) rad)."""

    def __init__(self, limits: SafetyLimits, period_s: float) -> None:
        self.limits = limits
        self.period_s = period_s
        self._by_tick: dict[int, np.ndarray] = {}

    def __contains__(self, tick: int) -> bool:
        return tick in self._by_tick

    def clear(self) -> None:
        self._by_tick.clear()

    def take(self, tick: int) -> np.ndarray | None:
        """The command committed for ``tick`` (removed), forgetting those of earlier ticks; None if none."""
        for old in [t for t in self._by_tick if t < tick]:
            del self._by_tick[old]
        return self._by_tick.pop(tick, None)

    def commit(self, tick: int, d: int, sent: np.ndarray, plan: np.ndarray, measured: np.ndarray) -> np.ndarray:
        """(d, A): ``sent`` (the command of tick ``tick``), then the plan's next d - 1 commands limited
        one step apart and fixed (a tick committed before keeps its command).

        Args:
            plan: (K, A) what the executing chunk says from ``tick`` on (K may be 0: hold ``sent``).
            measured: (A,) measured positions (rad), for the limiter's position bound.
        """
        rows = [sent]
        for i in range(1, d):
            target = plan[min(i, len(plan) - 1)] if len(plan) else rows[-1]
            command = self._by_tick.get(tick + i)
            if command is None:
                command = clamp_command(target, rows[-1], measured, self.limits, self.period_s, measured_steps=i)
                self._by_tick[tick + i] = command
            rows.append(command)
        return np.stack(rows)
