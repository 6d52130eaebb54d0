"""``policy_node``: runs an exported flow policy (ONNX) at control rate over ROS 2.

Thin rclpy glue: parameters, callbacks, publishing and diagnostics. Every decision (when to
infer, what to command, when to hold) is made by the pure
:class:`~flow_policy_ros.runtime.controller.PolicyController`, the same object the in-process
evaluation drives; its module docstring describes the states, the event-driven first command
and the velocity-limit guarantee. Inference runs in an
:class:`~flow_policy_ros.runtime.inference_worker.InferenceWorker` thread; a guard condition
wakes the executor when it returns, so the new chunk's first command goes out at once.

Topics (all remappable): in ``joint_states`` (sensor_msgs/JointState, best effort), ``goal``
(geometry_msgs/PointStamped, reliable + transient local); out ``commands``
(std_msgs/Float64MultiArray, one action per tick, model joint order) when
``execution:=stream``, ``joint_trajectory`` (trajectory_msgs/JointTrajectory, one per new
chunk; empty = stop) when ``execution:=trajectory``, and ``/diagnostics`` at 1 Hz (state and
its reason, provider and fallback reason, model name and hash, tick jitter, obs→command and
inference latency p50/p99, deadline misses, rejected messages and goals, the out-of-distribution
guard's score and field, counters). Goals must carry ``goal_frame``; the guard's margin is
``ood_margin`` (see the controller's docstring). obs→command latency
runs from the observation's ``header.stamp`` (receipt time if the stamp is 0) to the publish
of the first command computed from it.
"""

from __future__ import annotations

import sys
from collections import deque
from dataclasses import dataclass

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PointStamped
from rcl_interfaces.msg import ParameterType
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray
from trajectory_msgs.msg import JointTrajectory

from flow_policy_ros import paths
from flow_policy_ros.errors import FlowPolicyError, ObservationError
from flow_policy_ros.ros.diagnostics import diagnostic_array
from flow_policy_ros.ros.messages import (
    action_to_multiarray_msg,
    chunk_to_trajectory_msg,
    joint_state_arrays,
    point_array,
    values_by_name,
)
from flow_policy_ros.ros.node_runner import spin_node
from flow_policy_ros.ros.parameters import ParameterSpec, declare_all
from flow_policy_ros.ros.realtime import set_thread_priority
from flow_policy_ros.runtime.chunking import CHUNKING_MODES, DEFAULT_ENSEMBLE_DECAY, DEFAULT_REPLAN_EVERY
from flow_policy_ros.runtime.controller import (
    EXECUTION_MODES,
    Command,
    ControllerConfig,
    InferenceRequest,
    PolicyController,
    Stop,
    Trajectory,
)
from flow_policy_ros.runtime.inference_worker import InferenceWorker
from flow_policy_ros.runtime.onnx_policy import OnnxPolicy
from flow_policy_ros.runtime.ood import DEFAULT_OOD_MARGIN
from flow_policy_ros.runtime.safety import GUIDANCE_SCALE_BOUNDS, SafetyError, SafetyLimits, validate_guidance_scale

NODE_NAME = "flow_policy_node"
_T = ParameterType

#: The node's parameters: declared once, with descriptors (``ros2 param describe``).
PARAMETERS: dict[str, ParameterSpec] = {
    "model_path": ParameterSpec("", _T.PARAMETER_STRING,
                                "ONNX policy file; empty = the packaged default model (share/flow_policy_ros/models)"),
    "control_rate_hz": ParameterSpec(50.0, _T.PARAMETER_DOUBLE, "control tick rate (Hz)", low=1.0, high=1000.0),
    "replan_every": ParameterSpec(DEFAULT_REPLAN_EVERY, _T.PARAMETER_INTEGER,
                                  "actions executed from a chunk before the next chunk is due (ticks, <= horizon H)",
                                  low=1, high=1000),
    "execution": ParameterSpec("stream", _T.PARAMETER_STRING,
                               "'stream': one Float64MultiArray per tick on commands; "
                               "'trajectory': one JointTrajectory per chunk on joint_trajectory"),
    "chunking": ParameterSpec("receding_horizon", _T.PARAMETER_STRING,
                              "'receding_horizon' (open loop, default) or 'temporal_ensemble' (ACT-style averaging)"),
    "ensemble_decay": ParameterSpec(DEFAULT_ENSEMBLE_DECAY, _T.PARAMETER_DOUBLE,
                                    "temporal ensembling m in w = exp(-m * chunk start tick); > 0 favours older chunks",
                                    low=-1.0, high=1.0),
    "guidance_scale": ParameterSpec(1.0, _T.PARAMETER_DOUBLE,
                                    "classifier-free guidance weight w (1 = conditional); may change at run time",
                                    read_only=False, low=GUIDANCE_SCALE_BOUNDS[0], high=GUIDANCE_SCALE_BOUNDS[1]),
    "providers": ParameterSpec(["CUDAExecutionProvider", "CPUExecutionProvider"], _T.PARAMETER_STRING_ARRAY,
                               "ONNX Runtime execution providers in order of preference (CPU is always the fallback)"),
    "intra_op_threads": ParameterSpec(1, _T.PARAMETER_INTEGER, "ONNX Runtime intra-op threads", low=1, high=64),
    "warmup": ParameterSpec(3, _T.PARAMETER_INTEGER, "inference calls at start-up before running", low=0, high=100),
    "seed": ParameterSpec(0, _T.PARAMETER_INTEGER, "seed of the sampler's noise stream", low=0, high=2**31 - 1),
    "stale_timeout_s": ParameterSpec(0.1, _T.PARAMETER_DOUBLE,
                                     "joint states older than this (s, by receipt time) stop new commands",
                                     low=0.001, high=10.0),
    "max_velocity_scale": ParameterSpec(1.0, _T.PARAMETER_DOUBLE,
                                        "factor (0, 1] on the model's joint velocity limits (rad/s)", low=0.01, high=1.0),
    "lower_limits": ParameterSpec(Parameter.Type.DOUBLE_ARRAY, _T.PARAMETER_DOUBLE_ARRAY,
                                  "per-joint lower position limits (rad), may only tighten the model's; unset = model"),
    "upper_limits": ParameterSpec(Parameter.Type.DOUBLE_ARRAY, _T.PARAMETER_DOUBLE_ARRAY,
                                  "per-joint upper position limits (rad), may only tighten the model's; unset = model"),
    "velocity_limits": ParameterSpec(Parameter.Type.DOUBLE_ARRAY, _T.PARAMETER_DOUBLE_ARRAY,
                                     "per-joint velocity limits (rad/s), may only tighten the model's; unset = model"),
    "ood_margin": ParameterSpec(DEFAULT_OOD_MARGIN, _T.PARAMETER_DOUBLE,
                                "out-of-distribution guard: hold when an observation lies more than this many "
                                "training-range widths outside the model's training range (WARN beyond half of it); "
                                "goals beyond it are rejected", low=0.0, high=100.0),
    "goal_frame": ParameterSpec("world", _T.PARAMETER_STRING, "frame_id a goal must carry; goals in other frames are rejected"),
    "thread_priority": ParameterSpec(0, _T.PARAMETER_INTEGER,
                                     "SCHED_FIFO priority of the control (executor) thread, 0 = normal scheduling; "
                                     "falls back with a warning when not permitted (as ros2_control's controller_manager)",
                                     low=0, high=99),
}


@dataclass(frozen=True)
class PolicyNodeParams:
    """The node's parameters after declaration (see :data:`PARAMETERS` for descriptions)."""

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
    ood_margin: float = DEFAULT_OOD_MARGIN
    goal_frame: str = "world"
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


def _percentile_ms(samples: deque, q: float) -> str:
    return f"{float(np.percentile(np.fromiter(samples, dtype=np.float64), q)) * 1e3:.3f}" if samples else "nan"


class PolicyNode(Node):
    """The policy at control rate; see the module docstring."""

    def __init__(self) -> None:
        super().__init__(NODE_NAME)
        self.worker: InferenceWorker | None = None
        self.params = p = PolicyNodeParams(**declare_all(self, PARAMETERS))
        self.policy = OnnxPolicy(p.model_path or str(paths.default_model_path()), providers=p.providers,
                                 intra_op_num_threads=p.intra_op_threads, seed=p.seed, warmup=p.warmup)
        self.meta = meta = self.policy.metadata
        if abs(meta.control_period_s - p.period_s) > 1e-3 * meta.control_period_s:
            self.get_logger().warning(
                f"control_rate_hz {p.control_rate_hz} differs from the model's 1/{meta.control_period_s} s; "
                "actions are executed one per tick")
        limits = SafetyLimits.from_joint_limits(meta.limits, p.max_velocity_scale, p.lower_limits, p.upper_limits,
                                                p.velocity_limits)
        self.controller = PolicyController(
            ControllerConfig(meta.observation, meta.horizon, p.period_s, p.execution, p.chunking, p.replan_every,
                             p.ensemble_decay, p.stale_timeout_s, p.guidance_scale, meta.observation_range,
                             p.ood_margin, p.goal_frame), limits)
        if meta.observation_range is None:
            self.get_logger().warning(f"out-of-distribution guard {self.controller.ood_guard}")
        self.add_post_set_parameters_callback(self._on_parameters_set)
        self._needs_velocity = "joint_velocities" in meta.observation.fields
        self.scheduling = "SCHED_OTHER"
        self._last_reason = ""
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
        self.worker = InferenceWorker(lambda obs, w: self.policy.predict(obs, guidance_scale=w), on_done=self._inference_done.trigger)
        self.create_timer(p.period_s, self._on_tick)
        self.create_timer(1.0, self._publish_diagnostics)
        self.get_logger().info(
            f"model {meta.name} ({meta.model_hash[:12]}) on {self.policy.active_provider}; "
            f"H={meta.horizon} A={meta.action_dim}; {p.control_rate_hz} Hz, {p.execution}, {p.chunking}, "
            f"replan_every={p.replan_every}")

    def _now_ns(self) -> int:
        return self.get_clock().now().nanoseconds

    # -- callbacks ------------------------------------------------------------------------
    def _on_parameters_set(self, parameters: list[Parameter]) -> None:
        for param in parameters:
            if param.name == "guidance_scale":
                self.controller.guidance_scale = validate_guidance_scale(param.value)

    def _reject(self, reason: str) -> None:
        self.controller.reject()
        count = self.controller.counters.rejected_messages
        self.get_logger().warning(f"rejected message ({count} so far): {reason}", throttle_duration_sec=1.0)

    def _on_joint_state(self, msg: JointState) -> None:
        try:
            positions, velocities = joint_state_arrays(msg, self.meta.observation.joint_names, self._needs_velocity)
            measured = values_by_name(msg.name, msg.position, self.meta.action_joint_names, "position")
        except ObservationError as exc:
            self._reject(str(exc))
            return
        stamp_ns = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        self._carry_out(self.controller.on_joint_state(self._now_ns(), positions, velocities, measured, stamp_ns))

    def _on_goal(self, msg: PointStamped) -> None:
        try:
            goal = point_array(msg)
        except ObservationError as exc:
            self._reject(str(exc))
            return
        rejected = self.controller.counters.rejected_goals
        self._carry_out(self.controller.on_goal(goal, msg.header.frame_id))
        if self.controller.counters.rejected_goals > rejected:
            self.get_logger().warning(f"rejected goal ({rejected + 1} so far): {self.controller.goal_rejection}",
                                      throttle_duration_sec=1.0)

    def _on_tick(self) -> None:
        self._on_inference_done()  # normally handled at once via the guard condition
        self._carry_out(self.controller.on_tick(self._now_ns()))
        self._log_state_change()

    def _on_inference_done(self) -> None:
        result = self.worker.poll()
        if result is not None:
            self._carry_out(self.controller.on_inference_result(result))

    # -- decisions --------------------------------------------------------------------------
    def _carry_out(self, decisions: list) -> None:
        for decision in decisions:
            if isinstance(decision, InferenceRequest):
                if not self.worker.submit(decision):
                    self.get_logger().error("inference worker busy: request dropped", throttle_duration_sec=1.0)
                continue
            if isinstance(decision, Command):
                self._publisher.publish(action_to_multiarray_msg(decision.positions, self.meta.action_joint_names))
            elif isinstance(decision, Trajectory):
                self._publisher.publish(chunk_to_trajectory_msg(decision.points, self.meta.action_joint_names,
                                                                self.params.period_s, decision.stamp_ns))
            elif isinstance(decision, Stop):
                self._publisher.publish(JointTrajectory(joint_names=list(self.meta.action_joint_names)))
            stamp = getattr(decision, "obs_stamp_ns", None)
            if stamp is not None:
                self._obs_to_cmd_s.append((self._now_ns() - stamp) * 1e-9)

    def _log_state_change(self) -> None:
        state, reason = self.controller.state, self.controller.reason
        if reason == self._last_reason:
            return
        self._last_reason = reason
        log = self.get_logger()
        if state == "running":
            log.info("running")
        elif state == "error":
            log.error(f"holding: {reason}", throttle_duration_sec=1.0)
        elif state in ("stale", "hold"):
            log.warning(f"holding ({state}): {reason}")

    # -- diagnostics ------------------------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        c = self.controller
        counters = c.counters
        level = {"running": "OK", "waiting": "WARN", "stale": "WARN", "error": "ERROR", "hold": "ERROR"}[c.state]
        message = c.state if not c.reason else f"{c.state}: {c.reason}"
        if level == "OK" and c.warning:
            level, message = "WARN", f"{c.state}: {c.warning}"
        values = {
            "state": c.state,
            "reason": c.reason,
            "active_provider": self.policy.active_provider,
            "provider_fallback_reason": self.policy.fallback_reason,
            "scheduling": self.scheduling,
            "model_name": self.meta.name,
            "model_hash": self.meta.model_hash,
            "execution": self.params.execution,
            "chunking": self.params.chunking,
            "control_rate_hz": f"{self.params.control_rate_hz:g}",
            "guidance_scale": f"{c.guidance_scale:g}",
            "warning": c.warning,
            "ood_guard": c.ood_guard,
            "ood_score": "nan" if c.ood is None else f"{c.ood.value:.3g}",
            "ood_field": "" if c.ood is None else c.ood.label,
            "goal_rejection": c.goal_rejection,
            "inference_latency_p50_ms": _percentile_ms(counters.inference_s, 50),
            "inference_latency_p99_ms": _percentile_ms(counters.inference_s, 99),
            "tick_jitter_p50_ms": _percentile_ms(counters.jitter_s, 50),
            "tick_jitter_p99_ms": _percentile_ms(counters.jitter_s, 99),
            "obs_to_command_latency_p50_ms": _percentile_ms(self._obs_to_cmd_s, 50),
            "obs_to_command_latency_p99_ms": _percentile_ms(self._obs_to_cmd_s, 99),
            **counters.as_dict(),
        }
        self._diagnostics.publish(diagnostic_array(self.get_clock().now().to_msg(), f"{self.get_name()}: policy", level,
                                                   message, self.meta.name, values))

    def destroy_node(self) -> None:
        if self.worker is not None:
            self.worker.stop()
        super().destroy_node()


def _raise_priority(node: PolicyNode) -> None:
    node.scheduling = set_thread_priority(node.params.thread_priority)  # this thread runs the executor
    if node.params.thread_priority and not node.scheduling.startswith("SCHED_FIFO"):
        node.get_logger().warning(node.scheduling)


def main(args: list[str] | None = None) -> int:
    """Entry point of ``ros2 run flow_policy_ros policy_node``."""
    return spin_node(NODE_NAME, PolicyNode, (FlowPolicyError, FileNotFoundError, ValueError, TypeError), _raise_priority,
                     args)


if __name__ == "__main__":
    sys.exit(main())
