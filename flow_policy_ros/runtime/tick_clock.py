"""The controller's tick clock and run state (pure: the caller passes time in).

Time: ticks are integers, tick k nominally at ``t0 + k * period`` where t0 is the time of the
first tick event (integer ns of one clock: the node's ROS clock, or the simulation's time). A
tick event that finds ticks skipped counts them as deadline misses; an early timer callback
(a tick already served) is ignored. The jitter of each tick event is how far it came from its
nominal time relative to the previous one.

States (:class:`RunState`): ``waiting`` (no complete fresh data yet), ``running``, ``stale``
(joint states older than the timeout: no new commands until fresh data returns), ``error``
(inference failed or returned an invalid chunk: no new commands, retried every
``replan_every`` ticks) and ``hold`` (the input is untrusted: a measured position beyond the
joint limits, or an observation further outside the training range than ``ood_margin``; held
until it is back inside). Every state but ``running`` carries a one-line reason.
"""

from __future__ import annotations

from collections import deque

from flow_policy_ros.errors import SafetyError

STATES: tuple[str, ...] = ("waiting", "running", "stale", "error", "hold")
#: States in which a controller that was running stops its robot (trajectory mode: a Stop).
HOLDING_STATES: tuple[str, ...] = ("stale", "error", "hold")


class TickClock:
    """Integer control ticks from event times (ns).

    Args:
        period_ns: control period (ns, > 0).
        jitter_s: where the jitter of each tick event (s) is appended.
    """

    def __init__(self, period_ns: int, jitter_s: deque | None = None) -> None:
        if period_ns <= 0:
            raise SafetyError(f"control period must be > 0 ns, got {period_ns}")
        self.period_ns = period_ns
        self.jitter_s = deque(maxlen=3000) if jitter_s is None else jitter_s
        self._t0_ns: int | None = None
        self._last_tick: int | None = None
        self._last_tick_ns = 0

    @property
    def current_tick(self) -> int | None:
        """The last tick served (None before the first tick event)."""
        return self._last_tick

    def tick_ns(self, tick: int) -> int:
        """Nominal time (ns) of control tick ``tick`` (after the first tick event)."""
        if self._t0_ns is None:
            raise SafetyError("no tick has happened yet")
        return self._t0_ns + tick * self.period_ns

    def advance(self, now_ns: int) -> tuple[int | None, int]:
        """A tick event at ``now_ns``: (the tick it serves or None if already served, ticks skipped
        since the previous tick served: deadline misses)."""
        period_ns = self.period_ns
        if self._t0_ns is None:
            self._t0_ns = now_ns
        tick = round((now_ns - self._t0_ns) / period_ns)
        skipped = 0
        if self._last_tick is not None:
            if tick <= self._last_tick:
                return None, 0  # an early timer callback; this tick was served
            skipped = tick - self._last_tick - 1
            self.jitter_s.append(abs(now_ns - self._last_tick_ns - period_ns * (tick - self._last_tick)) * 1e-9)
        self._last_tick, self._last_tick_ns = tick, now_ns
        return tick, skipped


class RunState:
    """The controller's state (one of :data:`STATES`) and why it is not running."""

    def __init__(self) -> None:
        self.state = "waiting"
        self.reason = ""  # why the controller is not running (one line)
        self.retry_tick = 0  # state 'error': the first tick at which inference is retried

    def set(self, state: str, reason: str = "") -> None:
        """Enter ``state``; ``running`` clears the reason."""
        if state not in STATES:
            raise SafetyError(f"state must be one of {STATES}, got {state!r}")
        self.state = state
        self.reason = "" if state == "running" else reason

    def stops_robot(self, state: str) -> bool:
        """Entering ``state`` now takes a running robot out of running (trajectory mode sends a Stop)."""
        return self.state == "running" and state in HOLDING_STATES

    def waiting_for_retry(self, tick: int) -> bool:
        """In ``error`` and the retry tick has not come yet."""
        return self.state == "error" and tick < self.retry_tick
