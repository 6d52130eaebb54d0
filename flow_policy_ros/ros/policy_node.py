"""``policy_node``: runs an exported flow policy (ONNX) at control rate over ROS 2, as a managed node.

A lifecycle node (``rclpy.lifecycle``, the ros2_control convention), driven through the standard
services ``/flow_policy_node/change_state``, ``get_state``, ... (``ros2 lifecycle set``):

* configure: load, validate and warm up the model; build the PolicyController, the inference
  worker, the subscriptions and 1 Hz ``/diagnostics``. Bad input (model path, metadata, a
  parameter) returns FAILURE with one log line; the node stays unconfigured.
* activate: command, with a fresh PolicyController (tick clock, chunks, counters) whose velocity
  limiter starts from the last command sent (the robot holds it).
* deactivate: stop commanding and keep the model; trajectory mode publishes one empty
  JointTrajectory (a JointTrajectoryController holds), stream mode stops publishing.
* cleanup / shutdown: release the model, the worker thread, subscriptions and timers. Shutdown
  from active first runs the deactivate path (the empty trajectory goes out at once; the writer
  then stays up to :data:`STOP_ACK_TIMEOUT_S` for the subscribers' acknowledgement); once
  ``finalized`` the process exits (status 0), as ``ros2 lifecycle set ... shutdown`` expects.
* SIGINT / SIGTERM (Ctrl-C, ``launch`` stopping, ``docker stop``): the same shutdown transition
  before the process exits (:mod:`flow_policy_ros.ros.node_runner` keeps the context valid for
  it), so a JointTrajectoryController holds instead of running the last chunk to its end.

Nothing goes out on ``commands`` / ``joint_trajectory`` unless active. ``autostart`` (default
true) configures and activates at start-up (a failure exits with status 1), so ``ros2 run`` and
``flow-policy demo`` need no lifecycle calls; ``autostart:=false`` leaves it to the launch file
or an operator. Every decision (when to infer, what to command, when to hold) is made by the
pure :class:`~flow_policy_ros.runtime.controller.PolicyController`; the model runs in an
:class:`~flow_policy_ros.runtime.inference_worker.InferenceWorker`, by default inline in the
joint-state callback that asked for it (``inference_thread:=true``: in its own thread, whose
guard condition wakes the executor), so a chunk's first command goes out at once. Each stage
of that path is timed (:mod:`flow_policy_ros.runtime.latency`) and published as
``stage_<name>_p50_ms``/``_p99_ms``. Parameters:
:mod:`flow_policy_ros.ros.policy_parameters`. Topics (remappable): in ``joint_states`` (best
effort), ``goal`` (transient local), one image topic per camera of a camera model
(``camera/<name>/image_raw`` as sensor_msgs/Image rgb8/bgr8, or ``.../compressed`` jpeg/png; best
effort; parameter ``camera_topics``); out ``commands`` (Float64MultiArray per tick, stream) or
``joint_trajectory`` (one per chunk, empty = stop), ``/diagnostics`` (state, provider, model,
latency p50/p99 from the observation's stamp to its first command, counters of this activation).

Cameras: each frame is decoded without cv_bridge (:func:`~flow_policy_ros.ros.messages.image_frame`)
and handed to the controller, which pairs each decision's joint state with the freshest frame
within the camera's max age (else it holds, ``stale``, naming the camera and the age). A frame
of the wrong encoding or size, corrupt compressed data, no stamp, or a stamp from the future is
a counted rejection (``image_rejections``, the last reason in ``image_rejection``), never a
command. The camera path's stages (receipt, decode) are in ``/diagnostics`` as ``stage_image_*``.


Shadow mode (``shadow:=true``): the same node on the live robot, but the commands go to
``~/preview/commands`` / ``~/preview/joint_trajectory`` (no controller listens) and never to
``commands`` / ``joint_trajectory``; the limiter follows the measured arm instead of the
previews, and ``/diagnostics`` adds ``shadow_diff_*`` (the arm vs the preview of the tick
before; :mod:`flow_policy_ros.runtime.shadow`).
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.duration import Duration
from rclpy.exceptions import ParameterUninitializedException
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Float64MultiArray
from trajectory_msgs.msg import JointTrajectory

from flow_policy_ros import paths
from flow_policy_ros.contract import FeatureSpec
from flow_policy_ros.errors import FlowPolicyError, ObservationError, one_line
from flow_policy_ros.ros.diagnostics import camera_diagnostics, policy_diagnostics, shadow_values
from flow_policy_ros.ros.messages import (
    CameraTopic,
    JointStateReader,
    MissingJointError,
    action_to_multiarray_msg,
    camera_topics,
    chunk_to_trajectory_msg,
    image_frame,
    joint_states_topic,
    vector_message_class,
    vector_values,
)
from flow_policy_ros.ros.node_runner import spin_node
from flow_policy_ros.ros.parameters import declare_all
from flow_policy_ros.ros.policy_parameters import NODE_NAME, PARAMETERS, PolicyNodeParams
from flow_policy_ros.ros.realtime import set_thread_priority
from flow_policy_ros.runtime.controller import Command, InferenceRequest, PolicyController, Stop, Trajectory
from flow_policy_ros.runtime.inference_worker import InferenceWorker
from flow_policy_ros.runtime.latency import IMAGE_STAGES, StageLatencies
from flow_policy_ros.runtime.observation import stamp_to_ns
from flow_policy_ros.runtime.policy import load_policy
from flow_policy_ros.runtime.safety import validate_guidance_scale
from flow_policy_ros.runtime.shadow import ShadowComparison, follow_robot

__all__ = ["NODE_NAME", "PARAMETERS", "PolicyNode", "PolicyNodeParams", "main"]
SUCCESS, FAILURE = TransitionCallbackReturn.SUCCESS, TransitionCallbackReturn.FAILURE
#: Bad input that fails the configure transition (named in one log line).
CONFIGURE_ERRORS = (FlowPolicyError, OSError, ValueError, TypeError)
_RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
_LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
#: How long shutdown waits for the subscribers to acknowledge the empty trajectory (s), keeping the
#: writer alive for a retransmission. The stop itself reached a subscriber in another process 2-11 ms
#: after SIGINT/SIGTERM (12 runs, both executors); Fast DDS acknowledges on its writer heartbeat (3 s
#: by default: acknowledged after 2.7 s here), so a longer wait only delays the exit (0.7 s in all).
STOP_ACK_TIMEOUT_S = 0.5


class PolicyNode(LifecycleNode):
    """The policy at control rate, managed; see the module docstring."""

    def __init__(self, **node_kwargs: Any) -> None:
        """``node_kwargs`` go to rclpy's Node (e.g. ``context`` for an in-process test)."""
        super().__init__(NODE_NAME, **node_kwargs)
        # set before anything can fail: rclpy's shutdown calls destroy_node on a half-built node
        self.params: PolicyNodeParams | None = None  # params, policy, controller, worker: set by configure
        self.policy, self.controller, self.worker = None, None, None
        self.shadow: ShadowComparison | None = None  # shadow mode's comparison (set by configure)
        self._values = declare_all(self, PARAMETERS)
        self.configure_error = self._last_reason = ""
        self.scheduling = "SCHED_OTHER"
        self._active = False
        self._latched: dict[str, tuple[np.ndarray, str | None]] = {}  # task features (goal): last value, frame
        self.finalized = False  # the shutdown transition ran: the process exits (node_runner's ``finished``)
        # joint states the node itself refused, for /diagnostics (the controller never sees those messages):
        # the last reason; whether a joint state was usable this activation
        self._rejections: dict[str, str] = {}
        self._joint_state_used = False
        self._joint_state_refused = False  # the latest joint state was refused
        self._held: np.ndarray | None = None  # the last command sent: what the robot holds while inactive
        self._owned: list[tuple[Callable, object]] = []  # (destroy, entity) of what configure created
        self.latency = StageLatencies()
        self.image_latency = StageLatencies(stages=IMAGE_STAGES)
        self._cameras: list[CameraTopic] = []
        self._tick_timer = None
        self._obs_to_cmd_s: deque = deque(maxlen=1000)
        self._diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.add_post_set_parameters_callback(self._on_parameters_set)

    # -- lifecycle transitions ---------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._configure()
        except CONFIGURE_ERRORS as exc:
            self.configure_error = one_line(exc)
            if not self._values.get("autostart", True):  # with autostart the process exits with this one line
                self.get_logger().error(f"configure failed: {self.configure_error}")
            self._release()
            return FAILURE
        return SUCCESS

    def _configure(self) -> None:
        self.params = p = PolicyNodeParams(**self._values)
        self.policy = load_policy(p.model_path or paths.default_model_path(), providers=p.providers,
                                  intra_op_num_threads=p.intra_op_threads, seed=p.seed, warmup=p.warmup,
                                  output_margin=p.output_margin)
        self.meta = meta = self.policy.metadata
        self._cameras = camera_topics(meta.observation, p.camera_topics)  # fails naming a camera not mapped
        if abs(meta.control_period_s - p.period_s) > 1e-3 * meta.control_period_s:
            self.get_logger().warning(f"control_rate_hz {p.control_rate_hz} differs from the model's "
                                      f"1/{meta.control_period_s} s; actions are executed one per tick")
        self._limits = p.safety_limits(meta)
        self.controller = PolicyController(p.controller_config(meta), self._limits)  # validates the configuration
        self._joint_reader = JointStateReader(meta.observation.joint_names, meta.action_joint_names,
                                              "joint_velocities" in meta.observation.fields)
        msg_type, topic = (Float64MultiArray, "commands") if p.execution == "stream" else (JointTrajectory, "joint_trajectory")
        if p.shadow:  # previews only: no controller listens to ~/preview/...; never commands/joint_trajectory
            topic = f"~/preview/{topic}"
        self._publisher = self.create_lifecycle_publisher(msg_type, topic, _RELIABLE)
        self.shadow = ShadowComparison(meta.action_joint_names) if p.shadow else None
        self._owned = []
        on_done = None
        if p.threaded_inference and p.executor == "events":  # no guard conditions there: a task wakes it
            on_done = lambda: self.executor.create_task(self._on_inference_done)  # noqa: E731
        elif p.threaded_inference:
            done = self.create_guard_condition(self._on_inference_done)
            on_done = done.trigger
            self._owned.append((self.destroy_guard_condition, done))
        self.worker = InferenceWorker(self.policy.predict, on_done=on_done, delay_s=p.inject_delay_ms * 1e-3,
                                      inline=not p.threaded_inference, latencies=self.latency)
        self._owned += [
            (self.destroy_lifecycle_publisher, self._publisher),
            (self.destroy_subscription, self.create_subscription(JointState, joint_states_topic(meta.observation),
                                                                 self._on_joint_state, qos_profile_sensor_data)),
            *[(self.destroy_subscription, self._subscribe_vector(feature)) for feature in meta.observation.vector_features],
            *[(self.destroy_subscription, self.create_subscription(camera.message_class, camera.topic, self._image_callback(camera),
                                                                   qos_profile_sensor_data)) for camera in self._cameras],
            (self.destroy_timer, self.create_timer(1.0, self._publish_diagnostics)),
        ]
        if meta.observation_range is None:
            self.get_logger().warning(f"out-of-distribution guard {self.controller.ood_guard}")
        if meta.action_range is None:
            self.get_logger().warning(f"output range guard {self.controller.output_guard}")
        self.get_logger().info(f"configured: model {meta.name} ({meta.model_hash[:12]}) on {self.policy.active_provider}; "
                               f"H={meta.horizon} A={meta.action_dim}; {p.control_rate_hz} Hz, {p.execution}, "
                               f"{p.chunking_for(meta)}, replan_every={p.replan_every}")

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        config = self.params.controller_config(self.meta, self._guidance_scale())
        self.controller = PolicyController(config, self._limits)
        if self._held is not None:  # the robot holds the last command sent; the first joint state decides
            self.controller.continue_from(self._held)  # whether to go on from it or restart from the arm
        for name, (values, frame_id) in self._latched.items():
            self.controller.on_feature(name, values, frame_id)
        self._last_reason = ""
        self._rejections, self._joint_state_used, self._joint_state_refused = {}, False, False
        self._obs_to_cmd_s.clear()
        if self.shadow is not None:
            self.shadow = ShadowComparison(self.meta.action_joint_names)  # figures of this activation
        self.latency = self.worker.latencies = StageLatencies()
        self.image_latency = StageLatencies(stages=IMAGE_STAGES)
        result = super().on_activate(state)  # enables the command publisher
        self._active = True
        self._tick_timer = self.create_timer(self.params.period_s, self._on_tick)
        self.get_logger().info("activated: commanding")
        return result

    def _guidance_scale(self) -> float | None:
        """The guidance_scale parameter's current value; None while it is unset (the model's default)."""
        try:
            return self.get_parameter("guidance_scale").value
        except ParameterUninitializedException:  # declared typed, without a value
            return None

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_commanding()
        self.get_logger().info("deactivated: model kept, not commanding")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self._active:
            self._stop_commanding()
            acked = self._publisher.wait_for_all_acked(Duration(seconds=STOP_ACK_TIMEOUT_S))
            self.get_logger().info(f"shutdown: stop sent on {self._publisher.topic_name}" + (
                "" if acked else f" (not yet acknowledged by every subscriber after {STOP_ACK_TIMEOUT_S} s; "
                                 "DDS acknowledges on its next heartbeat)"))
        result = self.on_cleanup(state)
        self.finalized = True
        self.get_logger().info("shut down (finalized): exiting")
        return result

    def stop_for_exit(self, signal_name: str) -> None:
        """Before the process exits on ``signal_name``: the shutdown transition from the current
        state (from active: the deactivate path, its stop published), unless it already ran."""
        if self.finalized:
            return
        self.get_logger().info(f"{signal_name}: shutting down")
        self.trigger_shutdown()

    def _stop_commanding(self) -> None:
        # The EventsExecutor may still run ONE tick of the destroyed timer: a timer event already queued
        # behind this transition's service call is dispatched before the executor processes the removal
        # (seen in 2 of 40 deactivations). _on_tick therefore checks _active, and every callback copes
        # with a released node (after shutdown a stale tick met controller None: AttributeError, the
        # process died and get_state after ACTIVE_SHUTDOWN had no answer).
        self._active = False
        self.destroy_timer(self._tick_timer)
        deadline = time.monotonic() + 1.0  # a chunk in flight belongs to this activation: wait, drop it
        while self.worker.busy and time.monotonic() < deadline:
            time.sleep(0.001)
        self.worker.poll()
        self._held = None if self.shadow is not None else self.controller.last_command  # shadow: the arm held nothing of ours
        if self.params.execution == "trajectory":
            self._publisher.publish(JointTrajectory(joint_names=list(self.meta.action_joint_names)))

    def _release(self) -> None:
        for destroy, entity in self._owned:
            destroy(entity)
        self._owned = []
        if self.worker is not None:
            self.worker.stop()
        self.worker = self.policy = self.controller = self._held = None
        self._latched = {}

    # -- callbacks ----------------------------------------------------------------------------
    def _on_parameters_set(self, parameters: list[Parameter]) -> None:
        for param in parameters:
            if param.name == "guidance_scale" and self.controller is not None:
                self.controller.guidance_scale = validate_guidance_scale(param.value)

    def _reject(self, reason: str, topic: str = "joint_states", feature: str = "") -> None:
        """Count a refused message; ``feature``: the vector feature it was for (the controller keeps its reason)."""
        if self.controller is None:  # a message queued before cleanup destroyed the subscription
            return
        if not feature:
            self._rejections[topic] = reason
        if topic == "joint_states" and not feature:
            self._joint_state_refused = True
        self.controller.reject(reason, feature)
        self.get_logger().warning(f"rejected message ({self.controller.counters.rejected_messages} so far): {reason}",
                                  throttle_duration_sec=1.0)

    def _on_joint_state(self, msg: JointState) -> None:
        if not self._active:
            return
        start_ns, now_ns = time.perf_counter_ns(), self.get_clock().now().nanoseconds
        stamp_ns = stamp_to_ns(msg.header.stamp)
        if stamp_ns:
            self.latency.add_ns("receipt", now_ns - stamp_ns)
        try:
            positions, velocities, measured = self._joint_reader.read(msg)
        except ObservationError as exc:
            self._reject(joint_state_problem(exc, msg.name, self.meta.observation.joint_names))
            return
        self._joint_state_used, self._joint_state_refused = True, False
        decisions = self.controller.on_joint_state(now_ns, positions, velocities, measured, stamp_ns)
        if decisions and isinstance(decisions[-1], InferenceRequest):
            self.latency.add_ns("assembly", time.perf_counter_ns() - start_ns)
        self._carry_out(decisions)

    def _subscribe_vector(self, feature: FeatureSpec) -> object:
        """A vector feature's subscription: latched (reliable, transient local) for a task feature
        such as the goal, sensor data QoS otherwise."""
        qos = _LATCHED if feature.task else qos_profile_sensor_data
        return self.create_subscription(vector_message_class(feature), feature.topic,
                                        lambda msg: self._on_vector(feature, msg), qos)

    def _on_vector(self, feature: FeatureSpec, msg: object) -> None:
        try:
            values, frame_id = vector_values(feature, msg)
        except ObservationError as exc:
            self._reject(str(exc), feature.topic, feature.name)
            return
        stamp = getattr(msg, "header", None)
        stamp_ns = stamp_to_ns(stamp.stamp) if stamp is not None else 0
        if feature.task:
            self._latched[feature.name] = (values, frame_id)
        if self._active:
            rejected = self.controller.counters.rejected_goals
            self._carry_out(self.controller.on_feature(feature.name, values, frame_id, stamp_ns))
            if self.controller.counters.rejected_goals > rejected:
                self.get_logger().warning(f"rejected {feature.name} ({rejected + 1} so far): "
                                          f"{self.controller.goal_rejection}", throttle_duration_sec=1.0)

    def _image_callback(self, camera: CameraTopic) -> Callable[[Image | CompressedImage], None]:
        return lambda msg: self._on_image(camera, msg)

    def _on_image(self, camera: CameraTopic, msg: Image | CompressedImage) -> None:
        """A camera frame: decoded and checked here, paired with the joint states by the controller."""
        if not self._active:
            return
        start_ns, now_ns = time.perf_counter_ns(), self.get_clock().now().nanoseconds
        stamp_ns, name = stamp_to_ns(msg.header.stamp), camera.feature.name
        if not stamp_ns:
            self._reject(f"{camera.topic}: header.stamp is zero, expected the time the frame shows (its age "
                         f"cannot be checked) for {name}", camera.topic, name)
            return
        self.image_latency.add_ns("image_receipt", now_ns - stamp_ns)
        try:
            frame = image_frame(camera, msg)
        except ObservationError as exc:
            self._reject(str(exc), camera.topic, name)
            return
        self.image_latency.add_ns("image_decode", time.perf_counter_ns() - start_ns)
        rejected = self.controller.counters.rejected_messages
        self._carry_out(self.controller.on_image(name, frame, stamp_ns, now_ns))
        if self.controller.counters.rejected_messages > rejected:  # from the future
            self.get_logger().warning(f"rejected frame ({rejected + 1} so far): {camera.topic}: "
                                      f"{self.controller.images.last_rejection}", throttle_duration_sec=1.0)

    def _on_tick(self) -> None:
        if not self._active:  # a tick queued before deactivate/shutdown destroyed the timer: see _stop_commanding
            return
        self._on_inference_done()  # normally handled at once via the guard condition
        self._carry_out(self.controller.on_tick(self.get_clock().now().nanoseconds))
        c = self.controller
        if self.shadow is not None:  # the arm now vs the preview of the tick before
            self.shadow.on_tick(c.current_tick, c.tracking.measured, c.state == "running")
        if c.reason != self._last_reason:  # each state change, once (one call site per severity: rclpy requires it)
            self._last_reason = c.reason
            if c.state == "running":
                self.get_logger().info("running")
            elif c.state == "error":
                self.get_logger().error(f"holding: {c.reason}")
            elif c.state in ("stale", "hold"):
                self.get_logger().warning(f"holding ({c.state}): {c.reason}")

    def _on_inference_done(self) -> None:
        result = self.worker.poll() if self.worker is not None else None
        if result is not None and self._active:
            start_ns = time.perf_counter_ns()
            decisions = self.controller.on_inference_result(result)
            self.latency.add_ns("scheduling", time.perf_counter_ns() - start_ns)
            self._carry_out(decisions)

    def _carry_out(self, decisions: list) -> None:
        names = self.meta.action_joint_names
        for decision in decisions:
            if isinstance(decision, InferenceRequest):
                if not self.worker.submit(decision):
                    self.get_logger().error("inference worker busy: request dropped", throttle_duration_sec=1.0)
                elif self.worker.inline:
                    self._on_inference_done()  # the chunk is ready: its first command goes out now
                continue
            start_ns = time.perf_counter_ns()
            if isinstance(decision, Command):
                self._publisher.publish(action_to_multiarray_msg(decision.positions, names))
            elif isinstance(decision, Trajectory):
                self._publisher.publish(chunk_to_trajectory_msg(decision.points, names, self.params.period_s,
                                                                decision.stamp_ns))
            elif isinstance(decision, Stop):
                self._publisher.publish(JointTrajectory(joint_names=list(names)))
            if getattr(decision, "obs_stamp_ns", None) is not None:  # the first command of a chunk
                self.latency.add_ns("publish", time.perf_counter_ns() - start_ns)
                obs_to_command_ns = self.get_clock().now().nanoseconds - decision.obs_stamp_ns
                self.latency.add_ns("obs_to_command", obs_to_command_ns)
                self._obs_to_cmd_s.append(obs_to_command_ns * 1e-9)
            if self.shadow is not None:  # a preview went out: remember it, and limit the next against the arm
                self.shadow.on_decision(decision, self.controller.current_tick)
                follow_robot(self.controller)

    def _diagnosis(self) -> str:
        """The controller's reason, made specific while it waits or holds on stale data: the node saw the
        messages it refused (joint states whose names do not match the model, a NaN goal) and names them."""
        c = self.controller
        if c.state == "stale" and self._joint_state_refused:  # they still come, but are refused
            return f"{c.reason}; the joint states arriving are refused: {self._rejections['joint_states']}"
        if c.state != "waiting":
            return c.reason
        if not self._joint_state_used and "joint_states" in self._rejections:
            return f"no usable joint states: {self._rejections['joint_states']}"
        return c.reason  # names a missing vector feature (the goal) and why its last value was rejected

    def _publish_diagnostics(self) -> None:
        if self.controller is None:  # an event queued before cleanup destroyed the timer
            return
        state, reason = (self.controller.state, self._diagnosis()) if self._active else ("inactive", "")
        array = policy_diagnostics(
            self.get_clock().now().to_msg(), f"{self.get_name()}: policy", state, reason, self.controller, self.policy,
            {"lifecycle_state": "active" if self._active else "inactive", "scheduling": self.scheduling,
             "execution": self.params.execution, "chunking": self.params.chunking_for(self.meta),
             "control_rate_hz": f"{self.params.control_rate_hz:g}",
             "inference": "thread" if self.params.threaded_inference else "inline", "executor": self.params.executor,
             **self.latency.diagnostic_values(), **camera_diagnostics(self.controller, self._cameras, self.image_latency),
             **(shadow_values(self.shadow) if self.shadow is not None else {})},
            self._obs_to_cmd_s, goal_rejection=self.controller.goal_rejection,
            joint_state_rejection=self._rejections.get("joint_states", ""))
        if self.shadow is not None:  # say it where an operator looks first: nothing is commanded
            array.status[0].message = f"shadow (previews only): {array.status[0].message}"
        self._diagnostics.publish(array)

    def destroy_node(self) -> None:
        if self.worker is not None:
            self.worker.stop()
        super().destroy_node()


def joint_state_problem(exc: ObservationError, received: list[str], model_joints: tuple[str, ...] | list[str]) -> str:
    """Why a JointState was refused; when the model's joints are missing, which ones, what the message
    had instead, and the way out (the driver's names mapped to the model's)."""
    if not isinstance(exc, MissingJointError) or not received:
        return str(exc)
    missing = [name for name in model_joints if name not in received]
    if not missing:
        return str(exc)
    return (f"joint_states lack the model's joint(s) {missing}; the message has {list(received)}: publish the "
            f"model's joint names, e.g. by remapping the driver's names (a joint map such as "
            f"config/example_joint_map.yaml lists driver name -> model name)")


def _start(node: PolicyNode) -> None:
    """On the executor's thread, before spinning: its priority, then (``autostart``) configure + activate."""
    priority = node.get_parameter("thread_priority").value
    node.scheduling = set_thread_priority(priority)
    if priority and not node.scheduling.startswith("SCHED_FIFO"):
        node.get_logger().warning(node.scheduling)
    if node.get_parameter("autostart").value:
        if node.trigger_configure() != SUCCESS:
            raise FlowPolicyError(f"configure failed: {node.configure_error or 'see the log above'}")
        if node.trigger_activate() != SUCCESS:
            raise FlowPolicyError("activate failed: see the log above")


def main(args: list[str] | None = None) -> int:
    """Entry point of ``ros2 run flow_policy_ros policy_node``."""
    return spin_node(NODE_NAME, PolicyNode, (FlowPolicyError, FileNotFoundError, ValueError, TypeError), _start, args,
                     executor_kind=lambda node: node.get_parameter("executor").value,
                     on_stop=lambda node, signal_name: node.stop_for_exit(signal_name),
                     finished=lambda node: node.finalized)


if __name__ == "__main__":
    sys.exit(main())
