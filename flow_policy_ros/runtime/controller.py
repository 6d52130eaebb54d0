"""The policy's tick state machine, pure: events in, decisions out (no ROS, no threads, no clock).

``policy_node`` (over DDS, inference in a worker thread) and the in-process closed loop of
``flow-policy eval-sim`` (synchronous inference) drive the same :class:`PolicyController`, so
there is one tick order in the codebase. The caller passes time in as integer nanoseconds of
one clock (the node's ROS clock, or the simulation's time) and carries out the decisions.

Events and what they may return:

* :meth:`~PolicyController.on_tick` (the control timer): a :class:`Command` (stream mode), a
  :class:`Stop` (trajectory mode, on entering a hold), or nothing. When a chunk is due the
  controller waits for the next joint state (the freshest observation) instead of using the
  one it has, which may be most of a period old.
* :meth:`~PolicyController.on_joint_state`: an :class:`InferenceRequest` when a chunk is due
  (and, if that joint state came more than 3/4 of a period late, first the old chunk's
  :class:`Command` for the tick that waited for it).
* :meth:`~PolicyController.on_inference_result`: the new chunk's first :class:`Command`
  (stream) or the whole :class:`Trajectory` (trajectory mode), or a :class:`Stop` when the
  result is an error or an invalid chunk (wrong shape, NaN/inf): the robot holds.
* :meth:`~PolicyController.on_goal`: a new goal drops the chunk being executed and any
  inference in flight for the old goal (their results are counted as discarded). A goal in
  another frame than ``goal_frame``, non-finite, or outside the training goal range plus
  ``ood_margin`` is rejected (counted in ``rejected_goals``, the reason in
  :attr:`~PolicyController.goal_rejection`): the previous goal stays, or the controller keeps
  waiting.

States: ``waiting`` (no complete fresh data yet), ``running``, ``stale`` (joint states older
than the timeout: no new commands until fresh data returns), ``error`` (inference failed or
returned an invalid chunk: no new commands, retried every ``replan_every`` ticks) and
``hold`` (the input is untrusted: a measured position beyond the joint limits, or an
observation further outside the training range than ``ood_margin``; held until it is back
inside). In trajectory mode, leaving ``running`` for ``stale``, ``error`` or ``hold``
publishes one empty JointTrajectory (:class:`Stop`): a JointTrajectoryController then holds
its current setpoint instead of finishing a chunk computed from data no longer trusted.

The velocity limit holds against the previous command actually sent, across every event:
the :class:`~flow_policy_ros.runtime.safety.CommandLimiter` is never reset by a goal change,
a hold, an error or a resume. In trajectory mode it follows the published trajectory tick by
tick (that is what the controller executes until it is replaced or stopped), and a new
trajectory's first point, which replaces the old one's point of the same tick, is limited
against the setpoint of the tick before. Where a
hold ends far from the arm, the command walks from the previous command towards the arm at
the velocity limit, then follows the policy (see ``safety.clamp_command``). One exception: when
the arm is more than ``TRACKING_TOLERANCE_RAD`` from the last command, the robot's controller is
not holding that command any more (a driver restart, a simulator reset, a hand-guided move):
continuing from it would make the arm jump back towards it, so once the arm has stood still
there for ``STEADY_READINGS`` joint states the limiter restarts from the measured position
(counted in ``limiter_rebased``). A glitching or hostile joint-state stream never stands still,
so it never moves the reference: commands then walk towards the arm at the limit.

Out-of-distribution guard (:mod:`flow_policy_ros.runtime.ood`): with the model's training
range (``ControllerConfig.observation_range``), every tick and every inference request measures
the observation against it; beyond ``ood_margin`` range widths the controller holds naming the
field, beyond half of it :attr:`~PolicyController.warning` says so while it keeps running.
Without a range the guard is off (:attr:`~PolicyController.ood_guard` says why).

Real-time chunking (``chunking='rtc'``, a model trained with a committed prefix): at each
replan (observation at tick k) the controller commits the commands of the ticks that will pass
before the new chunk can apply, d = (the longest recent inference delay in ticks) + a margin,
clipped to the model's d_max, and passes them as the prefix; the model returns them exactly
and continues them. The prefix is what is actually commanded: in stream mode the command sent
at tick k and the next d - 1 commands of the executing chunk run through the limiter at
commit time and are then sent exactly as committed (after a missed tick one may be
re-limited to one step from the last command sent: counted in ``rtc_prefix_broken``); in trajectory mode the published
trajectory's points for those ticks (what the JointTrajectoryController executes). The new
chunk takes over at tick k + d: stream mode switches there, trajectory mode stamps the new
trajectory at tick k + d (a JTC splices it in at the prefix boundary). A chunk that arrives
after k + d is counted in ``rtc_late_chunks`` and applies from its arrival. If the required d
exceeds ``replan_every`` the controller refuses (state ``error``, reason naming both numbers):
the next replan would start before this one's chunk applies.

Time: ticks are integers, tick k nominally at ``t0 + k * period`` where t0 is the time of the
first tick event; a tick event that finds ticks skipped counts them as deadline misses.
Units: rad, rad/s, ns.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from flow_policy_ros.contract import ObservationSpec
from flow_policy_ros.errors import SafetyError
from flow_policy_ros.runtime.chunking import ActionChunk, make_scheduler
from flow_policy_ros.runtime.observation import build_observation
from flow_policy_ros.runtime.ood import DEFAULT_OOD_MARGIN, ObservationRange, OodScore, classify, ood_score, validate_margin
from flow_policy_ros.runtime.safety import CommandLimiter, SafetyLimits, clamp_command, validate_guidance_scale

EXECUTION_MODES: tuple[str, ...] = ("stream", "trajectory")
STATES: tuple[str, ...] = ("waiting", "running", "stale", "error", "hold")
#: A measured position further than this beyond a joint limit (rad) is an alarm, not a target.
MEASURED_LIMIT_TOLERANCE_RAD = 0.05
#: An arm further than this (rad, any joint) from the last command is not tracking it (a driver
#: restart, a reset or a hand-guided move): the next command ramps from where the arm is.
#: A position controller under a 1.5 rad/s command stream lags by a few ticks (< 0.1 rad).
TRACKING_TOLERANCE_RAD = 0.25
#: ... and only once the arm has stood still (every joint within STEADY_TOLERANCE_RAD over the last
#: STEADY_READINGS joint states): a driver holding a new position, not a glitch or a noisy stream.
STEADY_READINGS = 5
STEADY_TOLERANCE_RAD = 0.005


# --------------------------------------------------------------------------- decisions


def _unchanged(limited: np.ndarray, target: np.ndarray) -> bool:
    """The limiter left ``target`` as it was (within 1e-9 rad; NaN counts as changed). Same answer
    as ``np.allclose(limited, target, rtol=0, atol=1e-9)`` for finite values, a fraction of its
    cost: it runs at every tick."""
    return bool((np.abs(limited - target) <= 1e-9).all())


@dataclass(frozen=True)
class Command:
    """Stream mode: publish ``positions`` (A,) rad, the command of tick ``tick``.

    ``obs_stamp_ns`` is set on the first command of a new chunk: the stamp of the observation
    it was computed from (for the obs→command latency), else None.
    """

    tick: int
    positions: np.ndarray
    obs_stamp_ns: int | None = None


@dataclass(frozen=True)
class Trajectory:
    """Trajectory mode: publish ``points`` (K, A) rad; point i applies at tick ``tick + i``.

    ``stamp_ns`` is when point 0 applies (the header stamp), on the caller's clock.
    """

    tick: int
    stamp_ns: int
    points: np.ndarray
    obs_stamp_ns: int | None = None


@dataclass(frozen=True)
class Stop:
    """Trajectory mode: publish an empty JointTrajectory (a JointTrajectoryController stops)."""

    reason: str


@dataclass(frozen=True)
class InferenceRequest:
    """Run the policy on ``observation`` (obs_dim,) float32 and hand the result back.

    ``tick``, ``received_ns``, ``stamp_ns`` and ``generation`` must come back unchanged in the
    :class:`InferenceResult`.
    """

    observation: np.ndarray
    tick: int
    received_ns: int
    stamp_ns: int
    generation: int
    guidance_scale: float | None
    prefix_actions: np.ndarray | None = None  # (H, A) rad, rows >= prefix_length unused (rtc)
    prefix_length: int = 0


Decision = Command | Trajectory | Stop | InferenceRequest


@dataclass(frozen=True)
class InferenceResult:
    """One finished inference for the request of the same ``tick``/``generation``.

    Attributes:
        tick: the request's tick (the chunk's first action applies at it).
        received_ns: receipt time of the observation (caller's clock).
        latency_s: wall time of the inference call (s).
        actions: (H, A) joint targets (rad), or None when ``error`` is set.
        error: one line describing why inference failed, else None.
        stamp_ns: the observation's header stamp (0 = unknown: ``received_ns`` is used).
        generation: the request's goal generation.
        invalid_output: ``error`` is the model's output failing validation (counted as an
            invalid output, not an inference error).
    """

    tick: int
    received_ns: int
    latency_s: float
    actions: np.ndarray | None = None
    error: str | None = None
    stamp_ns: int = 0
    generation: int = 0
    prefix_length: int = 0
    invalid_output: bool = False

    @classmethod
    def for_request(cls, request: InferenceRequest, latency_s: float, actions: np.ndarray | None = None,
                    error: str | None = None, invalid_output: bool = False) -> InferenceResult:
        return cls(request.tick, request.received_ns, latency_s, actions, error, request.stamp_ns, request.generation,
                   request.prefix_length, invalid_output)


# --------------------------------------------------------------------------- configuration and counters


@dataclass(frozen=True)
class ControllerConfig:
    """How the controller runs (the node's parameters of the same names).

    Attributes:
        observation: the model's observation spec (which fields, joint order).
        horizon: H, actions per chunk.
        period_s: control period (s).
        execution: 'stream' (one command per tick) or 'trajectory' (one trajectory per chunk).
        chunking: a mode of :data:`~flow_policy_ros.runtime.chunking.CHUNKING_MODES`.
        replan_every: actions executed from a chunk before the next is due (1..H).
        ensemble_decay: m of temporal ensembling.
        stale_timeout_s: joint states older than this (s, by receipt time) stop new commands.
        guidance_scale: CFG weight w; None = the model's default.
        observation_range: the model's training range (metadata), None = no OOD guard.
        ood_margin: range widths beyond the training range before the controller holds (warns
            beyond half of it); goals beyond it are rejected.
        goal_frame: the frame_id a goal must carry (when the caller passes one).
        rtc_max_delay: the model's d_max (metadata ``rtc``); required > 0 for chunking 'rtc'.
        rtc_margin_ticks: ticks added to the measured inference delay to size the prefix.
    """

    observation: ObservationSpec
    horizon: int
    period_s: float
    execution: str = "stream"
    chunking: str = "receding_horizon"
    replan_every: int = 4
    ensemble_decay: float = 0.01
    stale_timeout_s: float = 0.1
    guidance_scale: float | None = None
    observation_range: ObservationRange | None = None
    ood_margin: float = DEFAULT_OOD_MARGIN
    goal_frame: str = "world"
    rtc_max_delay: int = 0
    rtc_margin_ticks: int = 1

    def __post_init__(self) -> None:
        validate_margin(self.ood_margin)
        if self.observation_range is not None and len(self.observation_range.labels) != self.observation.obs_dim:
            raise SafetyError(f"observation_range covers {len(self.observation_range.labels)} values, "
                              f"the observation has {self.observation.obs_dim}")
        if self.execution not in EXECUTION_MODES:
            raise SafetyError(f"execution must be one of {EXECUTION_MODES}, got {self.execution!r}")
        if not self.period_s > 0:
            raise SafetyError(f"control period must be > 0 s, got {self.period_s}")
        if not self.stale_timeout_s > 0:
            raise SafetyError(f"stale_timeout_s must be > 0, got {self.stale_timeout_s}")
        if self.guidance_scale is not None:
            validate_guidance_scale(self.guidance_scale)
        make_scheduler(self.chunking, self.horizon, self.replan_every, self.ensemble_decay)  # validates
        if self.chunking == "rtc" and self.rtc_max_delay <= 0:
            raise SafetyError("chunking 'rtc' needs a real-time chunking model (metadata rtc); this model has none: "
                              "use receding_horizon or export a model trained with rtc_max_delay > 0")
        if self.rtc_margin_ticks < 0:
            raise SafetyError(f"rtc_margin_ticks must be >= 0, got {self.rtc_margin_ticks}")

    @property
    def rtc(self) -> bool:
        return self.chunking == "rtc"

    @property
    def period_ns(self) -> int:
        return round(self.period_s * 1e9)


@dataclass
class ControllerCounters:
    """What happened so far (for /diagnostics and evaluation reports)."""

    ticks: int = 0
    deadline_misses: int = 0
    rejected_messages: int = 0
    inference_requests: int = 0
    chunks_received: int = 0
    chunks_discarded: int = 0
    inference_errors: int = 0
    invalid_outputs: int = 0
    commands_sent: int = 0
    trajectories_sent: int = 0
    stops_sent: int = 0
    late_first_commands: int = 0
    limiter_clipped: int = 0
    limiter_rebased: int = 0  # the arm was not tracking the last command: ramped from where it is
    ood_holds: int = 0
    ood_warnings: int = 0
    rejected_goals: int = 0
    rtc_prefix_ticks: int = 0  # sum of the prefix lengths requested
    rtc_late_chunks: int = 0  # chunks that arrived after their prefix ran out
    rtc_prefix_clipped: int = 0  # requests whose needed prefix exceeded the model's d_max
    rtc_prefix_broken: int = 0  # committed commands re-limited after a missed tick (sent != prefix)
    inference_s: deque = field(default_factory=lambda: deque(maxlen=1000))
    jitter_s: deque = field(default_factory=lambda: deque(maxlen=3000))

    def as_dict(self) -> dict[str, int]:
        return {k: v for k, v in vars(self).items() if isinstance(v, int)}


# --------------------------------------------------------------------------- the controller


class PolicyController:
    """The tick state machine; see the module docstring.

    Args:
        config: execution settings.
        limits: position and velocity limits of the action joints (model order).
    """

    def __init__(self, config: ControllerConfig, limits: SafetyLimits) -> None:
        self.config = config
        self.limits = limits
        self.scheduler = make_scheduler(config.chunking, config.horizon, config.replan_every, config.ensemble_decay)
        self.limiter = CommandLimiter(limits, config.period_s)
        self.guidance_scale = config.guidance_scale
        self.counters = ControllerCounters()
        self.state = "waiting"
        self.reason = ""  # why the controller is not running (one line)
        self._needs_goal = "goal" in config.observation.fields
        #: last reason a goal was rejected ("" = none so far)
        self.goal_rejection = ""
        #: running but close to the training range's edge (beyond half the margin): why, else ""
        self.warning = ""
        #: the latest observation's distance from the training range (None: guard off or no data yet)
        self.ood: OodScore | None = None
        rng = config.observation_range
        self._goal_range = rng.field(config.observation, "goal") if rng is not None and self._needs_goal else None
        # latest data
        self._positions: np.ndarray | None = None
        self._velocities: np.ndarray | None = None
        self._measured: np.ndarray | None = None
        self._received_ns: int | None = None
        self._stamp_ns = 0
        self._goal: np.ndarray | None = None
        # tick clock
        self._t0_ns: int | None = None
        self._last_tick: int | None = None
        self._last_tick_ns = 0
        # chunk bookkeeping
        self._generation = 0
        self._in_flight = False
        self._await_obs_after_ns: int | None = None  # a chunk is due: infer on the first joint state after this
        self._owed_tick: int | None = None  # stream: this tick's command waits for the chunk in flight
        self._retry_tick = 0
        self._trajectory: tuple[int, np.ndarray] | None = None  # what the robot executes: (start tick, points)
        self._pending_stamp_ns: int | None = None
        self._setpoint_before_tick: np.ndarray | None = None  # trajectory mode: the setpoint of the previous tick
        # real-time chunking
        self._committed: dict[int, np.ndarray] = {}  # stream: tick -> command fixed for it
        self._next_trajectory: tuple[int, np.ndarray] | None = None  # trajectory: stamped for a later tick
        self._delays: deque = deque(maxlen=16)  # ticks from request to result
        self._recent_measured: deque = deque(maxlen=STEADY_READINGS)
        self._requested_prefix: np.ndarray | None = None  # (d, A) of the request in flight
        self._last_sent: tuple[int, np.ndarray] | None = None  # stream: (tick, command)

    # -- read-only views ------------------------------------------------------------------
    @property
    def last_command(self) -> np.ndarray | None:
        """The last command the robot was sent (rad), or None before the first."""
        return self.limiter.last_command

    @property
    def ood_guard(self) -> str:
        """'on (margin M range widths)' or 'off: <why>'."""
        if self.config.observation_range is None:
            return "off: no training range in metadata"
        return f"on (margin {self.config.ood_margin:g} range widths)"

    @property
    def generation(self) -> int:
        return self._generation

    @property
    def in_flight(self) -> bool:
        return self._in_flight

    @property
    def current_tick(self) -> int | None:
        return self._last_tick

    def tick_ns(self, tick: int) -> int:
        """Nominal time (ns) of control tick ``tick`` (after the first tick event)."""
        if self._t0_ns is None:
            raise SafetyError("no tick has happened yet")
        return self._t0_ns + tick * self.config.period_ns

    # -- events ---------------------------------------------------------------------------
    def reject(self) -> None:
        """Count a message the caller refused (missing joints, NaN, malformed)."""
        self.counters.rejected_messages += 1

    def on_joint_state(self, now_ns: int, positions: np.ndarray, velocities: np.ndarray | None,
                       measured: np.ndarray, stamp_ns: int = 0) -> list[Decision]:
        """Fresh joint data, already matched by name and checked finite by the caller.

        Args:
            now_ns: receipt time.
            positions: (J,) observed joint positions (rad), observation joint order.
            velocities: (J,) observed joint velocities (rad/s), or None if not observed.
            measured: (A,) measured positions of the action joints (rad).
            stamp_ns: the message's header stamp (0 = unknown).
        """
        self._positions, self._velocities = positions, velocities
        self._measured = np.asarray(measured, dtype=np.float64)
        self._recent_measured.append(self._measured)
        self._received_ns, self._stamp_ns = now_ns, stamp_ns or now_ns
        decisions: list[Decision] = []
        if self._await_obs_after_ns is not None and now_ns >= self._await_obs_after_ns:
            if self._owed_tick is not None and now_ns >= self.tick_ns(self._owed_tick) + 3 * self.config.period_ns // 4:
                decisions += self._serve_owed_late()  # no joint state for most of the tick: the old chunk's command, now
            decisions += self._request()
        return decisions

    def on_goal(self, goal: np.ndarray, frame_id: str | None = None) -> list[Decision]:
        """A goal (3,) m in ``frame_id`` (None: the caller vouches for the frame).

        A changed goal drops the chunks of the old one. A goal in another frame than
        ``config.goal_frame``, non-finite, or outside the training goal range plus the margin is
        rejected (see the module docstring).
        """
        goal = np.asarray(goal, dtype=np.float64).reshape(-1)
        problem = self._goal_problem(goal, frame_id)
        if problem:
            self.counters.rejected_goals += 1
            self.goal_rejection = problem
            return []
        if self._goal is not None and not np.array_equal(goal, self._goal):
            # a new task (episode): chunks planned for the old goal are worthless; replan at once.
            # The limiter keeps the last command sent, and in trajectory mode the robot keeps
            # executing the old trajectory until the new one replaces it.
            self._generation += 1
            self.scheduler.reset()
            self._committed.clear()
            self._pending_stamp_ns = self._await_obs_after_ns = self._owed_tick = None
        self._goal = goal
        return []

    def on_tick(self, now_ns: int) -> list[Decision]:
        """The control timer fired at ``now_ns``."""
        tick = self._tick_number(now_ns)
        if tick is None:
            return []
        decisions: list[Decision] = []
        if self.config.execution == "trajectory":
            self._follow_trajectory(tick)
        if self._owed_tick is not None:  # the previous tick's command never came: counted, not replayed
            self.counters.late_first_commands += 1
            self._owed_tick = None
        if self._measured is None or (self._needs_goal and self._goal is None):
            reason = "no joint states and goal yet" if self._measured is None else "no goal yet"
            if self.goal_rejection and self._goal is None:
                reason += f" (last goal rejected: {self.goal_rejection})"
            return self._hold("waiting", reason)
        if now_ns - self._received_ns > self.config.stale_timeout_s * 1e9:
            return self._hold("stale", f"joint states older than {self.config.stale_timeout_s} s")
        beyond = self._measured_beyond_limits() or self._out_of_distribution(self._observation())
        if beyond:
            return self._hold("hold", beyond)
        if self.state == "error" and tick < self._retry_tick:
            return []
        if self.state in ("waiting", "stale", "hold"):
            self._set_state("running")
        due = self.scheduler.due(tick) and not self._in_flight and self._await_obs_after_ns is None
        if due:
            self._await_obs_after_ns = now_ns  # on_joint_state requests inference on the next joint state
        if self.state == "error" or self.config.execution == "trajectory":
            return decisions
        covered = tick in self._committed or (self.config.rtc and self.scheduler.action_at(tick) is not None)
        if due and not covered:
            self._owed_tick = tick  # sent when the new chunk arrives (or late, from the old chunk)
        else:  # rtc: this tick's command is sent now and becomes the first row of the prefix
            decisions += self._stream(tick)
        return decisions

    def on_inference_result(self, result: InferenceResult) -> list[Decision]:
        """A result for an earlier :class:`InferenceRequest`; the chunk applies from the current tick
        (rtc: from the end of its prefix)."""
        self._in_flight = False
        if self._last_tick is None:
            return []
        self._delays.append(self._last_tick - result.tick)
        if result.generation != self._generation:
            self.counters.chunks_discarded += 1
            return []
        self.counters.inference_s.append(result.latency_s)
        tick = self._last_tick
        if result.error is not None and result.invalid_output:
            self.counters.invalid_outputs += 1
            return self._fail(tick, f"invalid model output: {result.error}")
        if result.error is not None:
            self.counters.inference_errors += 1
            return self._fail(tick, f"inference failed: {result.error}")
        actions = None if result.actions is None else np.asarray(result.actions, dtype=np.float64)
        expected = (self.config.horizon, self.limits.size)
        if actions is None or actions.shape != expected:
            self.counters.invalid_outputs += 1
            shape = None if actions is None else actions.shape
            return self._fail(tick, f"invalid model output: shape {shape}, expected {expected}")
        if not np.all(np.isfinite(actions)):
            self.counters.invalid_outputs += 1
            return self._fail(tick, f"invalid model output: {int(np.sum(~np.isfinite(actions)))} NaN/inf values")
        d = result.prefix_length
        if d and (self._requested_prefix is None or not np.allclose(actions[:d], self._requested_prefix, rtol=0, atol=1e-5)):
            self.counters.invalid_outputs += 1
            return self._fail(tick, f"invalid model output: the chunk does not reproduce its {d}-action committed prefix")
        if self.state == "error":
            self._set_state("running")
        if self.state != "running":
            return []  # data went stale (or a hold began) while this chunk was computed
        if not self.scheduler.add_chunk(ActionChunk(actions, result.tick), tick):
            return []
        self.counters.chunks_received += 1
        self._pending_stamp_ns = result.stamp_ns or result.received_ns
        if d and tick >= result.tick + d:
            self.counters.rtc_late_chunks += 1
        if self.config.execution == "stream":
            if self._owed_tick == tick:
                self._owed_tick = None
                return self._stream(tick)
            return []
        if d and tick < result.tick + d:  # splice at the prefix boundary: stamped for a later tick
            return self._publish_trajectory(result.tick + d, previous=actions[d - 1])
        return self._publish_trajectory(tick)

    # -- internals ------------------------------------------------------------------------
    def _tick_number(self, now_ns: int) -> int | None:
        period_ns = self.config.period_ns
        if self._t0_ns is None:
            self._t0_ns = now_ns
        tick = round((now_ns - self._t0_ns) / period_ns)
        if self._last_tick is not None:
            if tick <= self._last_tick:
                return None  # an early timer callback; this tick was served
            self.counters.deadline_misses += tick - self._last_tick - 1
            self.counters.jitter_s.append(abs(now_ns - self._last_tick_ns - period_ns * (tick - self._last_tick)) * 1e-9)
        self._last_tick, self._last_tick_ns = tick, now_ns
        self.counters.ticks += 1
        return tick

    def _measured_beyond_limits(self) -> str:
        lower = self.limits.lower - MEASURED_LIMIT_TOLERANCE_RAD
        upper = self.limits.upper + MEASURED_LIMIT_TOLERANCE_RAD
        bad = np.flatnonzero((self._measured < lower) | (self._measured > upper))
        if len(bad) == 0:
            return ""
        i = int(bad[0])
        return (f"measured position of action joint {i} is {self._measured[i]:.3f} rad, beyond its limits "
                f"[{self.limits.lower[i]:.3f}, {self.limits.upper[i]:.3f}]")

    def _goal_problem(self, goal: np.ndarray, frame_id: str | None) -> str:
        if frame_id is not None and frame_id != self.config.goal_frame:
            return f"goal in frame {frame_id!r}, expected {self.config.goal_frame!r}"
        if goal.shape != (3,) or not np.all(np.isfinite(goal)):
            return f"goal must be 3 finite values (m), got {goal.tolist()}"
        if self._goal_range is not None:
            score = ood_score(goal, self._goal_range)
            if score.value > self.config.ood_margin:
                return f"{score.describe()} (margin {self.config.ood_margin:g})"
        return ""

    def _observation(self) -> np.ndarray:
        return build_observation(self.config.observation, self._positions, self._velocities, self._goal)

    def _out_of_distribution(self, observation: np.ndarray) -> str:
        """Measure ``observation`` against the training range: the hold reason beyond the margin, else ''."""
        rng = self.config.observation_range
        if rng is None:
            return ""
        self.ood = score = ood_score(observation, rng)
        level = classify(score.value, self.config.ood_margin)
        warning = "" if level == "ok" else f"near the edge of the training range: {score.describe()}"
        was_warning = bool(self.warning)
        self.warning = warning if level == "warn" else ""
        if self.warning and not was_warning:
            self.counters.ood_warnings += 1
        if level != "ood":
            return ""
        if self.state != "hold":
            self.counters.ood_holds += 1
        return f"out of distribution: {score.describe()} (margin {self.config.ood_margin:g})"

    def _set_state(self, state: str, reason: str = "") -> None:
        self.state = state
        self.reason = "" if state == "running" else reason

    def _hold(self, state: str, reason: str) -> list[Decision]:
        decisions: list[Decision] = []
        if self.config.execution == "trajectory" and self.state == "running" and state in ("stale", "error", "hold"):
            decisions.append(Stop(reason))
            self.counters.stops_sent += 1
            self._trajectory = self._next_trajectory = None  # the JTC holds the setpoint it has now: the last command
        self._committed.clear()
        self._set_state(state, reason)
        self.scheduler.reset()
        self._pending_stamp_ns = self._await_obs_after_ns = self._owed_tick = None
        return decisions

    def _fail(self, tick: int, reason: str) -> list[Decision]:
        decisions = self._hold("error", reason)
        self._retry_tick = tick + self.config.replan_every
        return decisions

    def _request(self) -> list[Decision]:
        """An inference request on the latest joint state, for the current tick."""
        self._await_obs_after_ns = None
        if self.state not in ("running", "error") or (self._needs_goal and self._goal is None):
            return []
        observation = self._observation()
        beyond = self._out_of_distribution(observation)
        if beyond:  # this joint state left the training range: no chunk from it
            return self._hold("hold", beyond)
        tick = self._last_tick
        prefix, d = None, 0
        if self.config.rtc:
            d = self._prefix_length()
            if d > self.config.replan_every:
                return self._fail(tick, f"rtc: the prefix needs {d} ticks (inference took up to {max(self._delays)} ticks, "
                                        f"margin {self.config.rtc_margin_ticks}) but replan_every is {self.config.replan_every}: "
                                        f"set replan_every >= {d}")
            d = min(d, self.config.rtc_max_delay)
            rows = self._commit_prefix(tick, d)
            d = len(rows)
            if d:
                prefix = np.zeros((self.config.horizon, self.limits.size))
                prefix[:d] = rows
            self._requested_prefix = prefix[:d].copy() if d else None
            self.counters.rtc_prefix_ticks += d
        self._in_flight = True
        self.counters.inference_requests += 1
        return [InferenceRequest(observation, tick, self._received_ns, self._stamp_ns, self._generation,
                                 self.guidance_scale, prefix, d)]

    def _prefix_length(self) -> int:
        """Ticks that will pass before a chunk requested now can apply, plus the margin."""
        needed = (max(self._delays) if self._delays else 0) + self.config.rtc_margin_ticks
        if needed > self.config.rtc_max_delay:
            self.counters.rtc_prefix_clipped += 1
        return needed

    def _commit_prefix(self, tick: int, d: int) -> np.ndarray:
        """(d', A) the commands of ticks tick .. tick+d'-1, fixed now (d' <= d; 0 without a chunk to continue)."""
        if d == 0:
            return np.empty((0, self.limits.size))
        if self.config.execution == "trajectory":
            if self._trajectory is None:
                return np.empty((0, self.limits.size))
            rows = []
            for t in range(tick, tick + d):  # what the JTC will execute at each tick (a pending splice included)
                start, points = self._next_trajectory if self._next_trajectory and t >= self._next_trajectory[0] \
                    else self._trajectory
                rows.append(points[min(max(t - start, 0), len(points) - 1)])
            return np.stack(rows)
        if self._last_sent is None or self._last_sent[0] != tick:
            return np.empty((0, self.limits.size))  # nothing was commanded at this tick: no prefix
        rows = [self._last_sent[1]]
        plan = self.scheduler.plan(tick)
        for i in range(1, d):
            target = plan[min(i, len(plan) - 1)] if len(plan) else rows[-1]
            command = self._committed.get(tick + i)
            if command is None:
                command = clamp_command(target, rows[-1], self._measured, self.limits, self.config.period_s, measured_steps=i)
                self._committed[tick + i] = command
            rows.append(command)
        return np.stack(rows)

    def _serve_owed_late(self) -> list[Decision]:
        """The observation for the new chunk came 3/4 of a period late: this tick's command from the old chunk."""
        tick, self._owed_tick = self._owed_tick, None
        self.counters.late_first_commands += 1
        if tick == self._last_tick and self.state == "running":
            return self._stream(tick)
        return []

    def _take_pending_stamp(self) -> int | None:
        stamp, self._pending_stamp_ns = self._pending_stamp_ns, None
        return stamp

    def _stream(self, tick: int) -> list[Decision]:
        for old in [t for t in self._committed if t < tick]:
            del self._committed[old]
        action = self.scheduler.action_at(tick)
        committed = self._committed.pop(tick, None)
        if committed is not None:  # rtc: fixed at commit time, sent exactly (it is the model's prefix) ...
            last = self.limiter.last_command
            command = committed
            if last is not None:  # ... unless a missed tick put it beyond one step from the last command sent
                step = self.limits.velocity * self.config.period_s
                command = np.clip(committed, last - step, last + step)
                self.counters.rtc_prefix_broken += int(not np.array_equal(command, committed))
            self.limiter.advance(command)
        elif action is None:
            return []  # no chunk covers this tick yet: hold
        else:
            self._rebase_if_not_tracking()
            command = self.limiter.limit(action, self._measured)
            self.counters.limiter_clipped += int(not _unchanged(command, action))
        self.counters.commands_sent += 1
        self._last_sent = (tick, command)
        return [Command(tick, command, self._take_pending_stamp())]

    def _publish_trajectory(self, tick: int, previous: np.ndarray | None = None) -> list[Decision]:
        """The plan from ``tick`` on as one trajectory whose point 0 applies at tick ``tick``.

        ``tick`` may lie ahead (rtc: the end of the committed prefix, whose last action is
        ``previous``); the robot keeps executing the current trajectory until then.
        """
        plan = self.current_plan(tick)
        if len(plan) == 0:
            return []
        later = tick > self._last_tick
        if not later and self._rebase_if_not_tracking():
            self._setpoint_before_tick = None  # ramp from the arm (the JTC does not hold the old setpoint)
        last = self.limiter.last_command
        # point 0 replaces what the robot would do at that tick: limit it against the setpoint of the tick before
        points = self.limiter.limit_trajectory(plan, self._measured, previous=previous if later else self._setpoint_before_tick)
        self.counters.limiter_clipped += int(not _unchanged(points, plan))
        if later:
            self._next_trajectory = (tick, points)
            if last is not None:
                self.limiter.advance(last)  # the robot is still on the current trajectory
        else:
            self._trajectory, self._next_trajectory = (tick, points), None
        self.counters.trajectories_sent += 1
        return [Trajectory(tick, self.tick_ns(tick), points, self._take_pending_stamp())]

    def _rebase_if_not_tracking(self) -> bool:
        """Restart the limiter from the measured position if the arm is far from the last command."""
        last = self.limiter.last_command
        if last is None or np.max(np.abs(self._measured - last)) <= TRACKING_TOLERANCE_RAD:
            return False
        recent = self._recent_measured
        if len(recent) < STEADY_READINGS or np.max(np.abs(np.stack(recent) - self._measured)) > STEADY_TOLERANCE_RAD:
            return False  # not (yet) standing still: keep the reference, walk towards the arm
        self.limiter.reset()  # the next command is limited relative to the measured position
        self._committed.clear()
        self.counters.limiter_rebased += 1
        return True

    def current_plan(self, tick: int) -> np.ndarray:
        """(K, A) what the newest chunk says for ticks ``tick`` on (K may be 0)."""
        chunk = getattr(self.scheduler, "current", None)
        if chunk is not None and chunk.covers(tick):
            return chunk.actions[tick - chunk.start_tick:].copy()
        return self.scheduler.plan(tick) if tick == self._last_tick else np.empty((0, 0))

    def _follow_trajectory(self, tick: int) -> None:
        """Trajectory mode: the robot moves along the published trajectory; so does the last command."""
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
