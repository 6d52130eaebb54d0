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
* :meth:`~PolicyController.on_feature`: a vector feature's value (e.g. the goal; see
  :mod:`~flow_policy_ros.runtime.vector_inputs`). A new value of a task feature drops the chunk
  being executed and any inference in flight for the old one (their results are counted as
  discarded). A rejected value (:mod:`~flow_policy_ros.runtime.input_guard`) is counted in
  ``rejected_goals``, the reason in :attr:`~PolicyController.goal_rejection`.
* :meth:`~PolicyController.on_image`: a camera frame; see :mod:`~flow_policy_ros.runtime.image_inputs`.

The controller is the composition of one part per job, each in its own module:

``tick_clock`` (ticks, deadline misses, jitter, states and reasons); ``input_guard`` (limits,
range and density guards, vector checks); ``vector_inputs`` / ``image_inputs`` (latest features);
``execution`` / ``trajectory_execution`` (stream or trajectory output behind one interface);
``tracking`` (an arm not tracking the last command is a hold; the limiter restarts from the arm
only on re-activation, :meth:`~PolicyController.continue_from`); ``prefix_committer`` (real-time
chunking); ``output_check`` (results). Decisions, settings and counters (``decisions``,
``controller_config``) are importable from here. Units: rad, rad/s, ns.
"""

from __future__ import annotations

import numpy as np

from flow_policy_ros.runtime.chunking import ActionChunk, make_scheduler
from flow_policy_ros.runtime.controller_config import EXECUTION_MODES, ControllerConfig, ControllerCounters
from flow_policy_ros.runtime.decisions import Command, Decision, InferenceRequest, InferenceResult, Stop, Trajectory
from flow_policy_ros.runtime.execution import Execution, StreamExecution, plan_from
from flow_policy_ros.runtime.image_inputs import ImageInputs
from flow_policy_ros.runtime.input_guard import MEASURED_LIMIT_TOLERANCE_RAD, InputGuard
from flow_policy_ros.runtime.metadata import output_guard_status
from flow_policy_ros.runtime.observation import observation_vector
from flow_policy_ros.runtime.ood import OodScore
from flow_policy_ros.runtime.output_check import result_problem
from flow_policy_ros.runtime.prefix_committer import PrefixCommitter
from flow_policy_ros.runtime.safety import CommandLimiter, SafetyLimits
from flow_policy_ros.runtime.tick_clock import STATES, RunState, TickClock
from flow_policy_ros.runtime.tracking import TRACKING_TOLERANCE_RAD, ArmTracking
from flow_policy_ros.runtime.trajectory_execution import TrajectoryExecution
from flow_policy_ros.runtime.vector_inputs import VectorInputs

__all__ = [
    "EXECUTION_MODES", "MEASURED_LIMIT_TOLERANCE_RAD", "STATES", "TRACKING_TOLERANCE_RAD", "Command", "ControllerConfig",
    "ControllerCounters", "Decision", "InferenceRequest", "InferenceResult", "PolicyController", "Stop", "Trajectory",
]

_EXECUTIONS: dict[str, type[Execution]] = {"stream": StreamExecution, "trajectory": TrajectoryExecution}


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
        self.clock = TickClock(config.period_ns, self.counters.jitter_s)
        self.run_state = RunState()
        self.guard = InputGuard(config, limits, self.counters)
        self.tracking = ArmTracking(config.action_joint_names)
        self.execution: Execution = _EXECUTIONS[config.execution](
            config, limits, self.scheduler, self.limiter, self.clock, self.tracking, self.counters)
        self.prefix = PrefixCommitter(config, limits.size, self.counters)
        self.vectors = VectorInputs(config.observation)
        self.images = ImageInputs(config.observation)
        # latest data
        self._positions: np.ndarray | None = None
        self._velocities: np.ndarray | None = None
        self._received_ns: int | None = None
        self._stamp_ns = 0
        # chunk bookkeeping
        self._generation = 0
        self._in_flight = False
        self._await_obs_after_ns: int | None = None  # a chunk is due: infer on the first joint state after this

    # -- read-only views ------------------------------------------------------------------
    @property
    def state(self) -> str:
        """One of :data:`STATES`."""
        return self.run_state.state

    @property
    def reason(self) -> str:
        """Why the controller is not running (one line; '' while running)."""
        return self.run_state.reason

    @property
    def warning(self) -> str:
        """Running but close to the training range's edge (beyond half the margin): why, else ''."""
        return self.guard.warning

    @property
    def ood(self) -> OodScore | None:
        """The latest observation's distance from the training range (None: guard off or no data yet)."""
        return self.guard.ood

    @property
    def last_command(self) -> np.ndarray | None:
        """The last command the robot was sent (rad), or None before the first."""
        return self.limiter.last_command

    @property
    def timing_warning(self) -> tuple[str, str]:
        """('', '') or (level, why): the delay exceeds what the rtc model absorbs, or a deadline hold."""
        return self.prefix.timing_warning(self.config.rtc, self.execution.deadline_hold and self.state == "running")

    @property
    def ood_guard(self) -> str:
        """'on (margin M range widths)' or 'off: <why>'."""
        return self.guard.status

    @property
    def output_guard(self) -> str:  # 'on (margin M range widths)' or 'off: no action range in metadata'
        return output_guard_status(self.config.action_range, self.config.output_margin)

    def continue_from(self, held: np.ndarray) -> None:
        """Re-activation (the explicit restart event): the robot holds ``held`` (rad); see ArmTracking.continue_from."""
        self.tracking.continue_from(self.limiter, held)

    @property
    def generation(self) -> int:
        return self._generation

    @property
    def in_flight(self) -> bool:
        return self._in_flight

    @property
    def current_tick(self) -> int | None:
        return self.clock.current_tick

    def tick_ns(self, tick: int) -> int:
        """Nominal time (ns) of control tick ``tick`` (after the first tick event)."""
        return self.clock.tick_ns(tick)

    def current_plan(self, tick: int) -> np.ndarray:
        """(K, A) what the newest chunk says for ticks ``tick`` on (K may be 0)."""
        return plan_from(self.scheduler, tick, self.clock.current_tick)

    # -- events ---------------------------------------------------------------------------
    @property
    def goal_rejection(self) -> str:
        """Why the last rejected vector feature value (e.g. a goal) was rejected ("" = none so far)."""
        return self.vectors.last_rejection

    def reject(self, reason: str = "", feature: str = "") -> None:
        """Count a message the caller refused (missing joints, NaN, malformed); ``feature``: the
        vector feature it was for (its rejection reason shows in :attr:`goal_rejection`)."""
        self.counters.rejected_messages += 1
        if feature:
            (self.images if feature in self.images.features else self.vectors).reject(feature, reason)

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
        self.tracking.observe(measured)
        self._received_ns, self._stamp_ns = now_ns, stamp_ns or now_ns
        self.images.observe_joint_state(now_ns, self._stamp_ns)
        decisions: list[Decision] = []
        if self._await_obs_after_ns is not None and now_ns >= self._await_obs_after_ns:
            decisions += self.execution.late_command(now_ns, self.state == "running")
            decisions += self._request()
        return decisions

    def on_feature(self, name: str, values: np.ndarray, frame_id: str | None = None, stamp_ns: int = 0) -> list[Decision]:
        """A value (size,) of vector feature ``name`` in ``frame_id`` (None: the caller vouches for
        the frame), stamped ``stamp_ns`` (0 = unknown). A changed task feature (the goal) drops the
        chunks of the old task; a rejected value is counted and leaves the previous one in place."""
        feature = self.vectors.feature(name)
        values = np.asarray(values, dtype=np.float64).reshape(-1)
        problem = self.guard.vector_problem(feature, values, frame_id)
        if problem:
            self.counters.rejected_goals += 1
            self.vectors.reject(name, problem)
            return []
        if self.vectors.update(name, values, stamp_ns or self._stamp_ns):
            # a new task (episode): chunks planned for the old one are worthless; replan at once.
            # The limiter keeps the last command sent, and in trajectory mode the robot keeps
            # executing the old trajectory until the new one replaces it.
            self._generation += 1
            self.scheduler.reset()
            self.execution.drop_plan()
            self._await_obs_after_ns = None
        return []

    def on_image(self, name: str, frame: np.ndarray, stamp_ns: int, now_ns: int | None = None) -> list[Decision]:
        """A decoded frame (H, W, 3) uint8 RGB of image feature ``name`` stamped ``stamp_ns``, received at ``now_ns``
        (None: events come in time order); one from the future is rejected and counted (see ImageInputs.offer)."""
        problem = self.images.offer(name, frame, stamp_ns, now_ns)
        if problem:
            self.reject(problem, name)
        return []

    def on_goal(self, goal: np.ndarray, frame_id: str | None = None) -> list[Decision]:
        """:meth:`on_feature` for the default spec's goal point (3,) m."""
        return self.on_feature("goal", goal, frame_id)

    def on_tick(self, now_ns: int) -> list[Decision]:
        """The control timer fired at ``now_ns``."""
        tick, skipped = self.clock.advance(now_ns)
        if tick is None:
            return []
        self.counters.deadline_misses += skipped
        self.counters.ticks += 1
        self.counters.limiter_restarts += self.tracking.restart_if_pending(self.limiter)  # before the tick's setpoint
        self.execution.begin_tick(tick)
        measured = self.tracking.measured
        if measured is None or self.vectors.missing() or self.images.missing():
            return self._hold("waiting", self.vectors.waiting_reason(measured is not None, self.images.missing()))
        if now_ns - self._received_ns > self.config.stale_timeout_s * 1e9:
            return self._hold("stale", f"joint states older than {self.config.stale_timeout_s} s")
        stale = self.vectors.stale(self._stamp_ns) or self.images.stale(self._stamp_ns)
        if stale:
            return self._hold("stale", stale)
        beyond = (self.guard.measured_beyond_limits(measured) or self._out_of_distribution()
                  or self.tracking.not_tracking(self.limiter.last_command) or self.guard.density.reason)
        if beyond:
            decisions = self._hold("hold", beyond)
            if beyond == self.guard.density.reason and not self._in_flight:
                self._await_obs_after_ns = now_ns  # density hold: keep scoring the live observation (input_guard)
            return decisions
        if self.run_state.waiting_for_retry(tick):
            return []
        if self.state in ("waiting", "stale", "hold"):
            self.run_state.set("running")
        due = self.scheduler.due(tick) and not self._in_flight and self._await_obs_after_ns is None
        if due:
            self._await_obs_after_ns = now_ns  # on_joint_state requests inference on the next joint state
        if self.state == "error":
            return []
        return self.execution.on_running_tick(tick, due)

    def on_inference_result(self, result: InferenceResult) -> list[Decision]:
        """A result for an earlier :class:`InferenceRequest`; the chunk applies from the current tick
        (rtc: from the end of its prefix)."""
        self._in_flight = False
        tick = self.clock.current_tick
        if tick is None:
            return []
        self.prefix.record_delay(tick - result.tick)
        if result.generation != self._generation:
            self.counters.chunks_discarded += 1
            return []
        self.counters.inference_s.append(result.latency_s)
        actions = None if result.actions is None else np.asarray(result.actions, dtype=np.float64)
        problem = result_problem(result, actions, self.config, self.limits.size, self.prefix, self.counters)
        if problem:
            return self._fail(tick, problem)
        density = self.guard.density.observe(result.log_likelihood)
        if density:
            return self._hold("hold", density)
        if self.state == "error":
            self.run_state.set("running")
        if self.state != "running":
            return []  # data went stale (or a hold began) while this chunk was computed
        start, d = result.tick, result.prefix_length
        if self.config.rtc:  # shifted if late (or dropped), blended from the executing chunk at the seam
            apply, executed = self.execution.late_apply(tick)
            fitted = self.prefix.fit(actions, start, d, apply, executed, self.current_plan(max(start + d, apply) - 2),
                                     self.execution.hold_position())
            if fitted is None:
                return []
            actions, start = fitted
        if not self.scheduler.add_chunk(ActionChunk(actions, start), tick):
            return []
        self.counters.chunks_received += 1
        self.execution.pending_stamp_ns = result.stamp_ns or result.received_ns
        if self.config.rtc:  # the next request once this chunk has taken over (s >= d)
            self.scheduler.set_replan_every(self.prefix.execution_horizon())
        return self.execution.on_chunk(tick, start, d, actions)

    # -- internals ------------------------------------------------------------------------
    def _observation(self) -> np.ndarray:
        features = {"joint_positions": self._positions, "joint_velocities": self._velocities, **self.vectors.values}
        return observation_vector(self.config.observation, {k: v for k, v in features.items() if v is not None})

    def _out_of_distribution(self) -> str:
        return self.guard.out_of_distribution(self._observation(), holding=self.state == "hold")

    def _hold(self, state: str, reason: str) -> list[Decision]:
        decisions: list[Decision] = []
        if self.run_state.stops_robot(state):
            decisions += self.execution.stop(reason)
        self.execution.drop_plan()
        self.run_state.set(state, reason)
        self.scheduler.reset()
        self._await_obs_after_ns = None
        return decisions

    def _fail(self, tick: int, reason: str) -> list[Decision]:
        decisions = self._hold("error", reason)
        self.run_state.retry_tick = tick + self.config.replan_every
        return decisions

    def _request(self) -> list[Decision]:
        """An inference request on the latest joint state, for the current tick."""
        self._await_obs_after_ns = None
        if (self.state not in ("running", "error") and not self.guard.density.holding) or self.vectors.missing():
            return []
        images, stale = self.images.pair(self._stamp_ns)
        if stale:  # this joint state has no frame within a camera's max age: no chunk from it
            return self._hold("stale", stale)
        observation = self._observation()
        beyond = self.guard.out_of_distribution(observation, holding=self.state == "hold")
        if beyond:  # this joint state left the training range: no chunk from it
            return self._hold("hold", beyond)
        tick = self.clock.current_tick
        prefix, d = None, 0
        if self.config.rtc and not self.guard.density.holding:  # a density probe is a plain call
            d = self.prefix.prefix_length(count=True)
            prefix, d = self.prefix.commit(tick, d, self.execution, self.execution.hold_position())
        self._in_flight = True
        self.counters.inference_requests += 1
        return [InferenceRequest(observation, tick, self._received_ns, self._stamp_ns, self._generation,
                                 self.guidance_scale, prefix, d, images or None)]
