"""``policy_node``: runs an exported flow policy (ONNX) at control rate over ROS 2.

Thin rclpy glue around the pure modules: ``messages`` (joint states by name → observation),
``chunking`` (chunks → per-tick commands), ``safety`` (staleness, limits) and ``runtime``
(``OnnxPolicy``). Inference runs in a dedicated thread (ONNX Runtime releases the GIL) on the
observation, so the control tick never waits for it; a chunk that arrives late is aligned to
the current tick.

Event-driven first command (obs→command latency). When a chunk is due at tick k, inference runs
on the first joint state received at/after tick k (not on one that may be a tick old), and
when it returns (a guard condition wakes the executor) the chunk's first command is published
at once: in stream mode the command of tick k was held back for it (if no joint state came in
the first 3/4 of the tick, the previous chunk's command for tick k is sent instead; if
inference runs past the next tick, tick k gets no command and is counted in
``late_first_commands``), in
trajectory mode the JointTrajectory (stamped at tick k, the current tick if inference ran
past it). Every other command keeps the regular tick schedule. Latency is measured from the
observation's ``header.stamp`` (the driver's sample time; receipt time if the stamp is 0) to
that publish. A new goal (e.g. a new episode) drops the current chunk and any inference in
flight for the old goal, so the next tick replans.

Topics (all remappable): in ``joint_states`` (sensor_msgs/JointState, best effort), ``goal``
(geometry_msgs/PointStamped, reliable + transient local); out ``commands``
(std_msgs/Float64MultiArray, one action per tick, model joint order) when
``execution:=stream``, ``joint_trajectory`` (trajectory_msgs/JointTrajectory, one per new
chunk) when ``execution:=trajectory``, and ``/diagnostics`` at 1 Hz.

States: ``waiting`` (no complete fresh data yet), ``running``, ``stale`` (joint states older
than ``stale_timeout_s``: no new commands until fresh data returns), ``error`` (inference
failed: no new commands, retried every ``replan_every`` ticks). In trajectory mode, entering
``stale`` or ``error`` from ``running`` publishes one empty JointTrajectory: a
JointTrajectoryController stops (holds its current setpoint) on it, instead of finishing a
chunk computed from data that is no longer trusted.

Diagnostics (``/diagnostics``, 1 Hz, status ``<node>: policy``): state, provider and the
provider fallback reason, model name and hash, tick jitter p50/p99, obs→command p50/p99,
inference p50/p99 (ms), deadline misses, rejected messages, counters.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PointStamped
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray
from trajectory_msgs.msg import JointTrajectory

from flow_policy_ros import paths
from flow_policy_ros.chunking import CHUNKING_MODES, DEFAULT_ENSEMBLE_DECAY, DEFAULT_REPLAN_EVERY, ActionChunk, make_scheduler
from flow_policy_ros.errors import FlowPolicyError, ObservationError
from flow_policy_ros.messages import (
    action_to_multiarray_msg,
    build_observation,
    chunk_to_trajectory_msg,
    joint_state_arrays,
    point_array,
    values_by_name,
)
from flow_policy_ros.node_runner import spin_node
from flow_policy_ros.realtime import set_thread_priority
from flow_policy_ros.runtime import OnnxPolicy
from flow_policy_ros.safety import (
    GUIDANCE_SCALE_BOUNDS,
    CommandLimiter,
    SafetyError,
    SafetyLimits,
    is_stale,
    validate_guidance_scale,
)

NODE_NAME = "flow_policy_node"
EXECUTION_MODES = ("stream", "trajectory")


@dataclass(frozen=True)
class PolicyNodeParams:
    """The node's parameters after declaration (see ``_PARAMETERS`` for descriptions)."""

    model_path: str
    control_rate_hz: float
    replan_every: int
    execution: str
    chunking: str
    ensemble_decay: float
    guidance_scale: float
    providers: tuple[str, ...]
    intra_op_threads: int
    warmup: int
    seed: int
    stale_timeout_s: float
    max_velocity_scale: float
    lower_limits: tuple[float, ...]
    upper_limits: tuple[float, ...]
    velocity_limits: tuple[float, ...]
    thread_priority: int = 0

    def __post_init__(self) -> None:
        if self.execution not in EXECUTION_MODES:
            raise SafetyError(f"parameter execution must be one of {EXECUTION_MODES}, got {self.execution!r}")
        if self.chunking not in CHUNKING_MODES:
            raise SafetyError(f"parameter chunking must be one of {CHUNKING_MODES}, got {self.chunking!r}")
        validate_guidance_scale(self.guidance_scale)

    @property
    def period_s(self) -> float:
        return 1.0 / self.control_rate_hz


def _float_range(low: float, high: float) -> list[FloatingPointRange]:
    return [FloatingPointRange(from_value=low, to_value=high, step=0.0)]


def _int_range(low: int, high: int) -> list[IntegerRange]:
    return [IntegerRange(from_value=low, to_value=high, step=1)]


# name -> (default or Parameter.Type for "unset", ParameterType, description, read_only, ranges)
_PARAMETERS: dict[str, tuple] = {
    "model_path": ("", ParameterType.PARAMETER_STRING,
                   "ONNX policy file; empty = the packaged default model (share/flow_policy_ros/models)", True, None),
    "control_rate_hz": (50.0, ParameterType.PARAMETER_DOUBLE, "control tick rate (Hz)", True, _float_range(1.0, 1000.0)),
    "replan_every": (DEFAULT_REPLAN_EVERY, ParameterType.PARAMETER_INTEGER,
                     "actions executed from a chunk before the next chunk is due (ticks, <= horizon H)", True,
                     _int_range(1, 1000)),
    "execution": ("stream", ParameterType.PARAMETER_STRING,
                  "'stream': one Float64MultiArray per tick on commands; "
                  "'trajectory': one JointTrajectory per chunk on joint_trajectory", True, None),
    "chunking": ("receding_horizon", ParameterType.PARAMETER_STRING,
                 "'receding_horizon' (open loop, default) or 'temporal_ensemble' (ACT-style averaging)", True, None),
    "ensemble_decay": (DEFAULT_ENSEMBLE_DECAY, ParameterType.PARAMETER_DOUBLE,
                       "temporal ensembling m in w = exp(-m * chunk start tick); > 0 favours older chunks", True,
                       _float_range(-1.0, 1.0)),
    "guidance_scale": (1.0, ParameterType.PARAMETER_DOUBLE,
                       "classifier-free guidance weight w (1 = conditional); may change at run time", False,
                       _float_range(*GUIDANCE_SCALE_BOUNDS)),
    "providers": (["CUDAExecutionProvider", "CPUExecutionProvider"], ParameterType.PARAMETER_STRING_ARRAY,
                  "ONNX Runtime execution providers in order of preference (CPU is always the fallback)", True, None),
    "intra_op_threads": (1, ParameterType.PARAMETER_INTEGER, "ONNX Runtime intra-op threads", True, _int_range(1, 64)),
    "warmup": (3, ParameterType.PARAMETER_INTEGER, "inference calls at start-up before running", True, _int_range(0, 100)),
    "seed": (0, ParameterType.PARAMETER_INTEGER, "seed of the sampler's noise stream", True, _int_range(0, 2**31 - 1)),
    "stale_timeout_s": (0.1, ParameterType.PARAMETER_DOUBLE,
                        "joint states older than this (s, by receipt time) stop new commands", True,
                        _float_range(0.001, 10.0)),
    "max_velocity_scale": (1.0, ParameterType.PARAMETER_DOUBLE,
                           "factor (0, 1] on the model's joint velocity limits (rad/s)", True, _float_range(0.01, 1.0)),
    "lower_limits": (Parameter.Type.DOUBLE_ARRAY, ParameterType.PARAMETER_DOUBLE_ARRAY,
                     "per-joint lower position limits (rad), may only tighten the model's; unset = model", True, None),
    "upper_limits": (Parameter.Type.DOUBLE_ARRAY, ParameterType.PARAMETER_DOUBLE_ARRAY,
                     "per-joint upper position limits (rad), may only tighten the model's; unset = model", True, None),
    "velocity_limits": (Parameter.Type.DOUBLE_ARRAY, ParameterType.PARAMETER_DOUBLE_ARRAY,
                        "per-joint velocity limits (rad/s), may only tighten the model's; unset = model", True, None),
    "thread_priority": (0, ParameterType.PARAMETER_INTEGER,
                        "SCHED_FIFO priority of the control (executor) thread, 0 = normal scheduling; "
                        "falls back with a warning when not permitted (as ros2_control's controller_manager)", True,
                        _int_range(0, 99)),
}


def declare_parameters(node: Node) -> PolicyNodeParams:
    """Declare every parameter with its descriptor, once, and freeze the values."""
    values = {}
    for name, (default, ptype, description, read_only, ranges) in _PARAMETERS.items():
        descriptor = ParameterDescriptor(name=name, type=ptype, description=description, read_only=read_only)
        if ranges is not None:
            if ptype == ParameterType.PARAMETER_DOUBLE:
                descriptor.floating_point_range = ranges
            else:
                descriptor.integer_range = ranges
        value = node.declare_parameter(name, default, descriptor).value
        values[name] = tuple(value) if isinstance(value, (list, tuple)) else ([] if value is None else value)
    for name in ("lower_limits", "upper_limits", "velocity_limits"):
        values[name] = tuple(values[name])
    return PolicyNodeParams(**values)


@dataclass(frozen=True)
class InferenceResult:
    """One finished inference: the chunk (or the error), for the observation taken at ``tick``."""

    tick: int
    obs_received_ns: int
    latency_s: float
    actions: np.ndarray | None = None
    error: str | None = None
    obs_stamp_ns: int = 0
    generation: int = 0


class InferenceWorker:
    """Runs ``predict(observation, guidance_scale) -> (H, A)`` in its own thread, one request at a time.

    ``on_done`` (optional) is called from the worker thread after each result is ready (the node
    triggers a guard condition with it, which is thread-safe).
    """

    def __init__(self, predict: Callable[[np.ndarray, float], np.ndarray],
                 on_done: Callable[[], None] | None = None) -> None:
        self._predict = predict
        self._on_done = on_done
        self._cv = threading.Condition()
        self._request: tuple[np.ndarray, int, int, float, int, int] | None = None
        self._result: InferenceResult | None = None
        self._busy = False
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="inference", daemon=True)
        self._thread.start()

    @property
    def busy(self) -> bool:
        with self._cv:
            return self._busy

    def submit(self, observation: np.ndarray, tick: int, obs_received_ns: int, guidance_scale: float,
               obs_stamp_ns: int = 0, generation: int = 0) -> bool:
        """Queue a request; False (ignored) while the previous one is still running.

        ``obs_stamp_ns`` (the joint state's header stamp) and ``generation`` (the node's goal
        generation) are handed back in the result unchanged.
        """
        with self._cv:
            if self._busy or self._stopped:
                return False
            self._busy = True
            self._request = (observation, tick, obs_received_ns, guidance_scale, obs_stamp_ns, generation)
            self._cv.notify()
            return True

    def poll(self) -> InferenceResult | None:
        """The finished result, once (None if nothing new)."""
        with self._cv:
            result, self._result = self._result, None
            return result

    def stop(self) -> None:
        with self._cv:
            self._stopped = True
            self._cv.notify()
        self._thread.join(timeout=5.0)

    def _run(self) -> None:
        while True:
            with self._cv:
                while self._request is None and not self._stopped:
                    self._cv.wait()
                if self._stopped:
                    return
                observation, tick, obs_ns, guidance, stamp_ns, generation = self._request
                self._request = None
            start = time.perf_counter()
            try:
                actions, error = np.asarray(self._predict(observation, guidance), dtype=np.float64), None
            except Exception as exc:  # noqa: BLE001 - any inference failure must hold the robot, not kill the node
                actions, error = None, f"{type(exc).__name__}: {exc}"
            result = InferenceResult(tick, obs_ns, time.perf_counter() - start, actions, error, stamp_ns, generation)
            with self._cv:
                self._result = result
                self._busy = False
            if self._on_done is not None:
                self._on_done()


def _percentile(samples: deque, q: float) -> float:
    return float(np.percentile(np.fromiter(samples, dtype=np.float64), q)) if samples else float("nan")


class PolicyNode(Node):
    """The policy at control rate; see the module docstring."""

    def __init__(self) -> None:
        super().__init__(NODE_NAME)
        self.params = p = declare_parameters(self)
        model_path = p.model_path or str(paths.default_model_path())
        self.policy = OnnxPolicy(model_path, providers=p.providers, intra_op_num_threads=p.intra_op_threads,
                                 seed=p.seed, warmup=p.warmup)
        self.meta = meta = self.policy.metadata
        if abs(meta.control_period_s - p.period_s) > 1e-3 * meta.control_period_s:
            self.get_logger().warning(
                f"control_rate_hz {p.control_rate_hz} differs from the model's 1/{meta.control_period_s} s; "
                "actions are executed one per tick")
        self.limits = SafetyLimits.from_joint_limits(meta.limits, p.max_velocity_scale, p.lower_limits,
                                                     p.upper_limits, p.velocity_limits)
        self.scheduler = make_scheduler(p.chunking, meta.horizon, p.replan_every, p.ensemble_decay)
        self.limiter = CommandLimiter(self.limits, p.period_s)
        self.guidance_scale = p.guidance_scale
        self.add_post_set_parameters_callback(self._on_parameters_set)
        self._needs_velocity = "joint_velocities" in meta.observation.fields
        self._needs_goal = "goal" in meta.observation.fields

        # latest data (touched only by executor callbacks: single-threaded executor)
        self._obs_positions: np.ndarray | None = None
        self._obs_velocities: np.ndarray | None = None
        self._measured: np.ndarray | None = None  # action joints (rad)
        self._joint_state_ns: int | None = None  # receipt time (staleness)
        self._joint_state_stamp_ns = 0  # header stamp (latency), receipt time when the stamp is 0
        self._goal: np.ndarray | None = None
        self.state = "waiting"
        self._t0_ns: int | None = None
        self._last_tick: int | None = None
        self._last_tick_ns = 0
        self._retry_tick = 0
        self._trajectory: tuple[int, np.ndarray] | None = None
        self._pending_obs_ns: int | None = None
        self._await_obs_after_ns: int | None = None  # a chunk is due: infer on the first joint state after this
        self._owed_tick: int | None = None  # stream: this tick's command waits for the chunk in flight
        self._generation = 0  # bumped on a new goal; results of older generations are dropped
        self.late_first_commands = 0
        self.scheduling = "SCHED_OTHER"
        self.chunks_discarded = 0
        self.last_error = ""
        self.rejected = 0
        self.deadline_misses = 0
        self.chunks_received = 0
        self.commands_sent = 0
        self._inference_s: deque = deque(maxlen=1000)
        self._jitter_s: deque = deque(maxlen=3000)
        self._obs_to_cmd_s: deque = deque(maxlen=1000)

        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.create_subscription(JointState, "joint_states", self._on_joint_state, qos_profile_sensor_data)
        self.create_subscription(PointStamped, "goal", self._on_goal, latched)
        if p.execution == "stream":
            self._publisher = self.create_publisher(Float64MultiArray, "commands", reliable)
        else:
            self._publisher = self.create_publisher(JointTrajectory, "joint_trajectory", reliable)
        self._diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._inference_done = self.create_guard_condition(self._on_inference_done)
        self.worker = InferenceWorker(self._predict, on_done=self._inference_done.trigger)
        self.create_timer(p.period_s, self._on_tick)
        self.create_timer(1.0, self._publish_diagnostics)
        self.get_logger().info(
            f"model {meta.name} ({meta.model_hash[:12]}) on {self.policy.active_provider}; "
            f"H={meta.horizon} A={meta.action_dim}; {p.control_rate_hz} Hz, {p.execution}, {p.chunking}, "
            f"replan_every={p.replan_every}")

    # -- callbacks ------------------------------------------------------------------------
    def _on_parameters_set(self, parameters: list[Parameter]) -> None:
        for param in parameters:
            if param.name == "guidance_scale":
                self.guidance_scale = validate_guidance_scale(param.value)

    def _reject(self, reason: str) -> None:
        self.rejected += 1
        self.get_logger().warning(f"rejected message ({self.rejected} so far): {reason}", throttle_duration_sec=1.0)

    def _on_joint_state(self, msg: JointState) -> None:
        try:
            positions, velocities = joint_state_arrays(msg, self.meta.observation.joint_names, self._needs_velocity)
            measured = values_by_name(msg.name, msg.position, self.meta.action_joint_names, "position")
        except ObservationError as exc:
            self._reject(str(exc))
            return
        self._obs_positions, self._obs_velocities, self._measured = positions, velocities, measured
        now_ns = self.get_clock().now().nanoseconds
        stamp_ns = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        self._joint_state_ns, self._joint_state_stamp_ns = now_ns, stamp_ns or now_ns
        if self._await_obs_after_ns is not None and now_ns >= self._await_obs_after_ns:
            if self._owed_tick is not None and now_ns >= self._tick_ns(self._owed_tick) + 3 * self._period_ns // 4:
                self._serve_owed_late()  # no joint state for most of the tick: the old chunk's command, now
            self._submit()

    def _on_goal(self, msg: PointStamped) -> None:
        try:
            goal = point_array(msg)
        except ObservationError as exc:
            self._reject(str(exc))
            return
        if self._goal is not None and not np.array_equal(goal, self._goal):
            # a new task (episode): chunks planned for the old goal are worthless; replan at once
            self._generation += 1
            self.scheduler.reset()
            self.limiter.reset()
            self._trajectory = None
            self._pending_obs_ns = self._await_obs_after_ns = self._owed_tick = None
        self._goal = goal

    def _predict(self, observation: np.ndarray, guidance_scale: float) -> np.ndarray:
        return self.policy.predict(observation, guidance_scale=guidance_scale)

    # -- control tick -----------------------------------------------------------------------
    @property
    def _period_ns(self) -> int:
        return round(self.params.period_s * 1e9)

    def _tick_ns(self, tick: int) -> int:
        """Nominal time (ns) of control tick ``tick``."""
        return self._t0_ns + tick * self._period_ns

    def _tick_number(self, now_ns: int) -> int | None:
        period_ns = self._period_ns
        if self._t0_ns is None:
            self._t0_ns = now_ns
        tick = round((now_ns - self._t0_ns) / period_ns)
        if self._last_tick is not None:
            if tick <= self._last_tick:
                return None  # an early timer callback; this tick was served
            self.deadline_misses += tick - self._last_tick - 1
            self._jitter_s.append(abs(now_ns - self._last_tick_ns - period_ns * (tick - self._last_tick)) * 1e-9)
        self._last_tick, self._last_tick_ns = tick, now_ns
        return tick

    def _set_state(self, state: str) -> None:
        if state == self.state:
            return
        log = self.get_logger()
        if state == "stale":
            log.warning(f"joint states older than {self.params.stale_timeout_s} s: holding (no new commands)")
        elif state == "running":
            log.info(f"{self.state} -> running")
        self.state = state

    def _hold(self, state: str) -> None:
        if (self.params.execution == "trajectory" and self.state == "running" and state in ("stale", "error")):
            stop = JointTrajectory(joint_names=list(self.meta.action_joint_names))  # no points: a JTC stops
            self._publisher.publish(stop)
        self._set_state(state)
        self.scheduler.reset()
        self.limiter.reset()
        self._trajectory = None
        self._await_obs_after_ns = self._owed_tick = None

    def _on_tick(self) -> None:
        now_ns = self.get_clock().now().nanoseconds
        tick = self._tick_number(now_ns)
        if tick is None:
            return
        self._on_inference_done()  # normally handled at once via the guard condition
        if self._owed_tick is not None:  # the previous tick's command never came: counted, not replayed
            self.late_first_commands += 1
            self._owed_tick = None
        if self._measured is None or (self._needs_goal and self._goal is None):
            self._hold("waiting")
            return
        if is_stale(self._joint_state_ns * 1e-9, now_ns * 1e-9, self.params.stale_timeout_s):
            self._hold("stale")
            return
        if self.state == "error" and tick < self._retry_tick:
            return
        if self.state in ("waiting", "stale"):
            self._set_state("running")
        due = self.scheduler.due(tick) and not self.worker.busy and self._await_obs_after_ns is None
        if due:
            self._await_obs_after_ns = now_ns  # _on_joint_state submits on the next joint state
        if self.state == "error":
            return
        if self.params.execution == "stream":
            if due:
                self._owed_tick = tick  # sent when the new chunk arrives (or late, from the old chunk)
            else:
                self._stream(tick)
        else:
            self._trajectory_tick(tick)

    def _submit(self) -> None:
        """Start inference on the latest joint state for the current tick (executor thread)."""
        self._await_obs_after_ns = None
        if self.state not in ("running", "error") or (self._needs_goal and self._goal is None):
            return
        observation = build_observation(self.meta.observation, self._obs_positions, self._obs_velocities, self._goal)
        self.worker.submit(observation, self._last_tick, self._joint_state_ns, self.guidance_scale,
                           obs_stamp_ns=self._joint_state_stamp_ns, generation=self._generation)

    def _serve_owed_late(self) -> None:
        """The observation for the new chunk came 3/4 of a period late: send this tick's command from the old chunk."""
        tick, self._owed_tick = self._owed_tick, None
        self.late_first_commands += 1
        if tick == self._last_tick and self.state == "running":
            self._stream(tick)

    def _on_inference_done(self) -> None:
        """A result is ready: take the chunk and publish its first command now (executor thread)."""
        result = self.worker.poll()
        if result is None or self._last_tick is None:
            return
        if result.generation != self._generation:
            self.chunks_discarded += 1
            return
        tick = self._last_tick
        if not self._take_result(result, tick):
            return
        if self.params.execution == "stream":
            if self._owed_tick == tick:
                self._owed_tick = None
                self._stream(tick)
        else:
            self._publish_trajectory(tick)

    def _take_result(self, result: InferenceResult, tick: int) -> bool:
        """Hand a result to the scheduler; True if a new chunk was accepted."""
        self._inference_s.append(result.latency_s)
        if result.error is not None:
            self.last_error = result.error
            self.get_logger().error(f"inference failed, holding: {result.error}", throttle_duration_sec=1.0)
            self._hold("error")
            self._retry_tick = tick + self.params.replan_every
            return False
        if self.state == "error":
            self._set_state("running")
        if self.state != "running":
            return False  # data went stale while this chunk was computed
        if self.scheduler.add_chunk(ActionChunk(result.actions, result.tick), tick):
            self.chunks_received += 1
            self._pending_obs_ns = result.obs_stamp_ns or result.obs_received_ns
            return True
        return False

    def _note_command(self) -> None:
        self.commands_sent += 1
        if self._pending_obs_ns is not None:
            self._obs_to_cmd_s.append((self.get_clock().now().nanoseconds - self._pending_obs_ns) * 1e-9)
            self._pending_obs_ns = None

    def _stream(self, tick: int) -> None:
        action = self.scheduler.action_at(tick)
        if action is None:
            return  # no chunk covers this tick yet: hold
        command = self.limiter.limit(action, self._measured)
        self._publisher.publish(action_to_multiarray_msg(command, self.meta.action_joint_names))
        self._note_command()

    def _publish_trajectory(self, tick: int) -> None:
        """Publish the plan from ``tick`` on as one JointTrajectory stamped at tick ``tick``."""
        plan = self.scheduler.plan(tick)
        if len(plan) == 0:
            return
        points = self.limiter.limit_trajectory(plan, self._measured)
        self._publisher.publish(
            chunk_to_trajectory_msg(points, self.meta.action_joint_names, self.params.period_s, self._tick_ns(tick)))
        self._trajectory = (tick, points)
        self._note_command()

    def _trajectory_tick(self, tick: int) -> None:
        self.scheduler.action_at(tick)  # advances the scheduler's clock, drops passed chunks
        if self._trajectory is not None:
            start, points = self._trajectory
            if 0 < tick - start < len(points):
                self.limiter.advance(points[tick - start])

    # -- diagnostics ------------------------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        level = {"running": DiagnosticStatus.OK, "waiting": DiagnosticStatus.WARN,
                 "stale": DiagnosticStatus.WARN, "error": DiagnosticStatus.ERROR}[self.state]
        message = self.state if self.state != "error" else f"error: {self.last_error}"
        values = {
            "state": self.state,
            "active_provider": self.policy.active_provider,
            "provider_fallback_reason": self.policy.fallback_reason,
            "scheduling": self.scheduling,
            "model_name": self.meta.name,
            "model_hash": self.meta.model_hash,
            "execution": self.params.execution,
            "chunking": self.params.chunking,
            "control_rate_hz": f"{self.params.control_rate_hz:g}",
            "guidance_scale": f"{self.guidance_scale:g}",
            "inference_latency_p50_ms": f"{_percentile(self._inference_s, 50) * 1e3:.3f}",
            "inference_latency_p99_ms": f"{_percentile(self._inference_s, 99) * 1e3:.3f}",
            "tick_jitter_p50_ms": f"{_percentile(self._jitter_s, 50) * 1e3:.3f}",
            "tick_jitter_p99_ms": f"{_percentile(self._jitter_s, 99) * 1e3:.3f}",
            "obs_to_command_latency_p50_ms": f"{_percentile(self._obs_to_cmd_s, 50) * 1e3:.3f}",
            "obs_to_command_latency_p99_ms": f"{_percentile(self._obs_to_cmd_s, 99) * 1e3:.3f}",
            "deadline_misses": str(self.deadline_misses),
            "rejected_messages": str(self.rejected),
            "chunks_received": str(self.chunks_received),
            "commands_sent": str(self.commands_sent),
            "late_first_commands": str(self.late_first_commands),
            "chunks_discarded": str(self.chunks_discarded),
        }
        status = DiagnosticStatus(level=level, name=f"{self.get_name()}: policy", message=message,
                                  hardware_id=self.meta.name,
                                  values=[KeyValue(key=k, value=v) for k, v in values.items()])
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self._diagnostics.publish(array)

    def destroy_node(self) -> None:
        self.worker.stop()
        super().destroy_node()


def _raise_priority(node: PolicyNode) -> None:
    node.scheduling = set_thread_priority(node.params.thread_priority)  # this thread runs the executor
    if node.params.thread_priority and not node.scheduling.startswith("SCHED_FIFO"):
        node.get_logger().warning(node.scheduling)


def main(args: list[str] | None = None) -> int:
    """Entry point of ``ros2 run flow_policy_ros policy_node``."""
    return spin_node(NODE_NAME, PolicyNode, (FlowPolicyError, SafetyError, FileNotFoundError, ValueError), _raise_priority, args)


if __name__ == "__main__":
    sys.exit(main())
