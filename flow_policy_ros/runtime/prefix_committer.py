"""Real-time chunking: the committed prefix, the execution horizon, late chunks (pure).

With ``chunking='rtc'`` (a model trained with a committed prefix), at each replan (observation
at tick k) the controller commits the commands of the next d ticks and passes them as the
prefix; the model returns them exactly and continues them. The new chunk takes over at k + d.

* Prefix length: d = (the longest of the last 16 inference delays, in ticks) + ``rtc_margin_ticks``,
  at least ``rtc_min_prefix`` (a prefix of several actions carries the executing chunk's velocity,
  so the seam continues velocity as well as position), clipped to the model's d_max.
* Execution horizon: the next request goes out s = max(``replan_every``, d) ticks after this one,
  so that it commits from the chunk that has taken over (s >= d, the RTC paper's condition); a
  steady delay therefore never produces a late chunk.
* What is committed: stream mode, the command sent at tick k and the next d - 1 commands of the
  executing chunk, limited at commit time and then sent exactly (:class:`CommittedCommands`; after
  a missed tick one may be re-limited to one step from the last command sent: counted in
  ``rtc_prefix_broken``); trajectory mode, the published trajectory's points for those ticks.
  Without a chunk to continue (activation, an episode start, after a hold) the prefix is the hold
  position (the last command, else the measured position) repeated: the first chunk starts at
  rest where the arm is, no step.
  If the arm is not where the last command is (a simulator reset, a driver restart: see
  ``runtime.tracking``) there is no prefix (d = 0, plain sampling) and the first command ramps
  from the arm.
* A late chunk (it can only apply L > 0 ticks after k + d): if the arm still stands where the
  prefix ended (it was holding), the chunk is shifted in time by L (its prefix becomes the hold
  actually executed); if the arm moved on and L <= d_max, the chunk is offset onto the command
  executed before it applies, the offset fading out over :data:`LATE_BLEND_TICKS`; otherwise it is
  discarded. ``rtc_late_used`` / ``rtc_late_discarded`` count both (``rtc_late_chunks`` their sum).
* A delay the model cannot absorb (d + margin > d_max: chunks arrive late; or longer than the
  chunk lasts past the next request: the arm finishes the chunk, then holds) is a warning with
  the figures (:meth:`PrefixCommitter.timing_warning`, on ``/diagnostics``), never a silent stall.

Units: rad, ticks.
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
#: A late chunk offset onto the command executed meanwhile returns to its own plan over this many ticks.
LATE_BLEND_TICKS = 8


class PrefixSource(Protocol):
    """What an execution commits: the commands of ticks ``tick .. tick + d' - 1`` (d' <= d), (d', A) rad."""

    def commit_prefix(self, tick: int, d: int, hold: np.ndarray | None = None) -> np.ndarray: ...


class PrefixCommitter:
    """Sizes the prefix and the execution horizon from measured delays, commits the prefix, checks
    that the chunk reproduces it and fits late chunks.

    Args:
        config: the controller's settings (``rtc_max_delay``, ``rtc_margin_ticks``, ``rtc_min_prefix``,
            ``replan_every``, H).
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

    @property
    def delay_ticks(self) -> int:
        """The longest recent inference delay (ticks; 0 before the first result)."""
        return max(self._delays) if self._delays else 0

    def needed_length(self) -> int:
        """Ticks that will pass before a chunk requested now can apply, plus the margin (not clipped)."""
        return self.delay_ticks + self.config.rtc_margin_ticks

    def prefix_length(self, count: bool = False) -> int:
        """d for a request now: the needed length, at least ``rtc_min_prefix``, at most d_max
        (``count``: a clipped one is counted in ``rtc_prefix_clipped``)."""
        needed = self.needed_length()
        if count and needed > self.config.rtc_max_delay:
            self.counters.rtc_prefix_clipped += 1
        return min(max(needed, self.config.rtc_min_prefix), self.config.rtc_max_delay)

    def execution_horizon(self) -> int:
        """s: ticks from one request to the next, >= the prefix (the chunk has taken over), < H."""
        return min(max(self.config.replan_every, self.prefix_length()), self.config.horizon - 1)

    def timing_warning(self, rtc: bool = True, deadline_hold: bool = False) -> tuple[str, str]:
        """('', '') while the measured delay fits the model (``rtc``) and no deadline hold is in
        progress, else (level 'WARN'/'ERROR', one line with the figures)."""
        level, text = self._delay_warning() if rtc else ("", "")
        if deadline_hold:
            hold = "deadline: no usable chunk when the executing one ended: holding"
            return level or "WARN", f"{text}; {hold}" if text else hold
        return level, text

    def _delay_warning(self) -> tuple[str, str]:
        cfg = self.config
        delay, needed = self.delay_ticks, self.needed_length()
        if needed <= cfg.rtc_max_delay:
            return "", ""
        ms = delay * cfg.period_s * 1e3
        figures = (f"rtc: inference delay {delay} ticks ({ms:.0f} ms) + margin {cfg.rtc_margin_ticks} exceeds the "
                   f"model's d_max {cfg.rtc_max_delay} ticks ({cfg.rtc_max_delay * cfg.period_s * 1e3:.0f} ms)")
        if max(self.execution_horizon(), delay + 1) + delay + 1 > cfg.horizon:  # next request, then its delay
            return "ERROR", (f"{figures} and the chunk ({cfg.horizon} ticks) ends before the next arrives: the arm "
                             "finishes each chunk, then holds until the next")
        return "WARN", f"{figures}: prefix clipped to {cfg.rtc_max_delay}, chunks arrive late and are shifted"

    def commit(self, tick: int, d: int, source: PrefixSource, hold: np.ndarray | None) -> tuple[np.ndarray | None, int]:
        """Commit ``d`` (<= d_max) commands from tick ``tick`` on; ``hold`` (A,) rad: the position held
        when no chunk is executing (the prefix is then ``hold`` repeated; None: no prefix then).

        Returns (prefix (H, A) rad with rows >= d zero, None for d = 0; d, the prefix length).
        """
        rows = source.commit_prefix(tick, d, hold)
        d = len(rows)
        prefix = np.zeros((self.config.horizon, self.action_dim))
        prefix[:d] = rows
        self._requested = prefix[:d].copy()
        if d == 0:
            return None, 0
        self.counters.rtc_prefix_ticks += d
        return prefix, d

    def reproduces(self, actions: np.ndarray, d: int) -> bool:
        """The chunk (H, A) rad starts with the ``d`` committed actions of the request in flight."""
        return self._requested is not None and len(self._requested) == d and bool(
            np.allclose(actions[:d], self._requested, rtol=0, atol=PREFIX_TOLERANCE_RAD))

    def fit(self, actions: np.ndarray, request_tick: int, d: int, apply_tick: int, executed: np.ndarray | None,
            old_plan: np.ndarray, hold: np.ndarray) -> tuple[np.ndarray, int] | None:
        """The chunk (H, A) of a request at ``request_tick`` with a ``d``-row prefix, arriving so that it
        can apply from ``apply_tick`` on (``executed`` (A,): the command of the tick before, None if
        none), as it is scheduled: (actions, start tick), or None if too late (counted).

        A late chunk is shifted (module docstring); then the first ``rtc_blend_ticks`` rows after the
        takeover are blended from ``old_plan`` ((K, A), what the executing chunk says from 2 ticks
        before the takeover on, :meth:`blend`) into the new chunk: the soft-masked region of RTC,
        so the seam continues velocity as well as position.
        """
        late = apply_tick - (request_tick + d)
        start = request_tick
        if d and late > 0:
            self.counters.rtc_late_chunks += 1
            if executed is None or np.allclose(executed, actions[d - 1], rtol=0, atol=PREFIX_TOLERANCE_RAD):
                start = request_tick + late  # the arm held where the prefix ends: shift the chunk in time
            elif late > self.config.rtc_max_delay or apply_tick - request_tick >= self.config.horizon:
                self.counters.rtc_late_discarded += 1
                return None
            else:  # offset onto the command executed before it applies, fading out
                row = apply_tick - 1 - request_tick
                fade = np.clip(1.0 - np.arange(self.config.horizon - row) / LATE_BLEND_TICKS, 0.0, 1.0)
                actions = actions.copy()
                actions[row:] += fade[:, None] * (executed - actions[row])
            self.counters.rtc_late_used += 1
        return self.blend(actions, apply_tick - start if late > 0 else d, old_plan, hold), start

    def blend(self, actions: np.ndarray, row: int, old_plan: np.ndarray, hold: np.ndarray) -> np.ndarray:
        """``actions`` (H, A) with rows ``row`` .. ``row + B - 1`` mixed from the old plan into the chunk:
        weight of the old plan 1 - smoothstep((i + 1) / (B + 1)) at row + i.

        ``old_plan`` (K, A): what the executing chunk says from 2 ticks before the takeover on; where it
        ends it is continued at its last velocity (the arm was moving: no stop inside the blend); with
        fewer than 2 rows the arm holds ``hold``.
        """
        n = min(self.config.rtc_blend_ticks, len(actions) - row)
        if n <= 0 or row <= 0:
            return actions
        if len(old_plan) >= 2:
            last, velocity = old_plan[-1], old_plan[-1] - old_plan[-2]
            beyond = last + np.arange(1, n + 3)[:, None] * velocity  # continued at its last velocity
            old = np.concatenate([old_plan, beyond])[2:2 + n]
        else:
            old = np.tile(np.asarray(hold, dtype=np.float64), (n, 1))
        x = (np.arange(n) + 1.0) / (n + 1)
        w = (1.0 - x * x * (3.0 - 2.0 * x))[:, None]  # smoothstep: no kink in velocity where it starts and ends
        out = actions.copy()
        out[row:row + n] = w * old + (1.0 - w) * actions[row:row + n]
        return out


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
