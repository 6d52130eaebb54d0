"""policy_node's parameters: declared once from this table, then frozen into :class:`PolicyNodeParams`.

The execution settings (chunking, replan_every, guidance_scale, ood_margin, ...) come from the
one table in :mod:`flow_policy_ros.runtime.settings`, shared with ``eval-sim`` and the in-process
loop; this module adds the ROS-specific parameters (model path, providers, executor, rate, ...).
Each parameter has its default, type, description, read-only flag and range (what
``ros2 param describe flow_policy_node <name>`` shows); ``config/policy.yaml`` sets them.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from rcl_interfaces.msg import ParameterType
from rclpy.parameter import Parameter

from flow_policy_ros.ros.node_runner import EXECUTORS
from flow_policy_ros.ros.parameters import ParameterSpec
from flow_policy_ros.runtime.chunking import resolve_chunking
from flow_policy_ros.runtime.controller import ControllerConfig
from flow_policy_ros.runtime.metadata import PolicyMetadata
from flow_policy_ros.runtime.safety import SafetyError, SafetyLimits, validate_guidance_scale
from flow_policy_ros.runtime.settings import ExecutionSettings, SettingSpec, controller_config, settings_table

NODE_NAME = "flow_policy_node"
_T = ParameterType
#: Python type of a setting -> (ROS parameter type, the "declared but unset" marker).
_ROS_TYPES = {str: (_T.PARAMETER_STRING, Parameter.Type.STRING), int: (_T.PARAMETER_INTEGER, Parameter.Type.INTEGER),
              float: (_T.PARAMETER_DOUBLE, Parameter.Type.DOUBLE), bool: (_T.PARAMETER_BOOL, Parameter.Type.BOOL)}


def setting_parameter(spec: SettingSpec) -> ParameterSpec:
    """The ROS parameter of one execution setting (an unset default is declared typed, without a value)."""
    ros_type, unset = _ROS_TYPES[spec.type]
    s = spec.setting
    doc = s.doc if s.choices is None else f"{s.doc}; one of {list(s.choices)}"
    return ParameterSpec(unset if spec.optional else spec.default, ros_type, doc, read_only=s.read_only,
                         low=s.low, high=s.high)


#: The ROS-specific parameters (the execution settings are added from the settings table below).
NODE_PARAMETERS: dict[str, ParameterSpec] = {
    "model_path": ParameterSpec("", _T.PARAMETER_STRING,
                                "ONNX policy file; empty = the packaged default model (share/flow_policy_ros/models)"),
    "camera_topics": ParameterSpec(Parameter.Type.STRING_ARRAY, _T.PARAMETER_STRING_ARRAY,
                                   "camera models: '<camera>=<topic>' per camera of the model (a topic ending in "
                                   "/compressed is read as CompressedImage, others as Image); unset = each camera on "
                                   "its topic from the model (camera/<name>/image_raw, remappable)", read_only=True),
    "control_rate_hz": ParameterSpec(50.0, _T.PARAMETER_DOUBLE, "control tick rate (Hz)", low=1.0, high=1000.0),
    "inference_thread": ParameterSpec(False, _T.PARAMETER_BOOL,
                                      "run the model in its own thread (true) or inline in the joint-state callback "
                                      "(false, default: no thread wake-ups, so the first command leaves right after the "
                                      "model; the executor waits for one model call, harmless while it is short against "
                                      "the control period). Use true for a slow model (GPU, large network); "
                                      "inject_delay_ms > 0 always uses the thread"),
    "executor": ParameterSpec("events", _T.PARAMETER_STRING,
                              "rclpy executor: 'events' (default: rclpy.experimental.EventsExecutor, C++; about half "
                              "the CPU per message and a shorter obs->command path, measured by `flow-policy bench --ros`) "
                              "or 'single_threaded' (rclpy's SingleThreadedExecutor)"),
    "providers": ParameterSpec(["CUDAExecutionProvider", "CPUExecutionProvider"], _T.PARAMETER_STRING_ARRAY,
                               "ONNX Runtime execution providers in order of preference (CPU is always the fallback)"),
    "intra_op_threads": ParameterSpec(1, _T.PARAMETER_INTEGER, "ONNX Runtime intra-op threads", low=1, high=64),
    "warmup": ParameterSpec(3, _T.PARAMETER_INTEGER, "inference calls at start-up before running", low=0, high=100),
    "seed": ParameterSpec(0, _T.PARAMETER_INTEGER, "seed of the sampler's noise stream", low=0, high=2**31 - 1),
    "lower_limits": ParameterSpec(Parameter.Type.DOUBLE_ARRAY, _T.PARAMETER_DOUBLE_ARRAY,
                                  "per-joint lower position limits (rad), may only tighten the model's; unset = model"),
    "upper_limits": ParameterSpec(Parameter.Type.DOUBLE_ARRAY, _T.PARAMETER_DOUBLE_ARRAY,
                                  "per-joint upper position limits (rad), may only tighten the model's; unset = model"),
    "velocity_limits": ParameterSpec(Parameter.Type.DOUBLE_ARRAY, _T.PARAMETER_DOUBLE_ARRAY,
                                     "per-joint velocity limits (rad/s), may only tighten the model's; unset = model"),
    "thread_priority": ParameterSpec(0, _T.PARAMETER_INTEGER,
                                     "SCHED_FIFO priority of the control (executor) thread, 0 = normal scheduling; "
                                     "falls back with a warning when not permitted (as ros2_control's controller_manager)",
                                     low=0, high=99),
    "autostart": ParameterSpec(True, _T.PARAMETER_BOOL,
                               "configure and activate at start-up (true), or stay unconfigured until a lifecycle "
                               "transition is requested (false: the launch file or an operator drives it)"),
    "shadow": ParameterSpec(False, _T.PARAMETER_BOOL,
                            "shadow mode: run live on the robot's joint states but publish only to ~/preview/commands "
                            "or ~/preview/joint_trajectory (no controller listens), never to commands/joint_trajectory; "
                            "the limiter follows the measured arm, and /diagnostics carries the per-tick difference "
                            "between the previews and what the arm does (shadow_diff_*). Set at start-up only"),
}

#: Every parameter of the node: the ROS-specific ones and the execution settings (``ros2 param describe``).
PARAMETERS: dict[str, ParameterSpec] = {**NODE_PARAMETERS, **{s.name: setting_parameter(s) for s in settings_table()}}


@dataclass(frozen=True, kw_only=True)
class PolicyNodeParams(ExecutionSettings):
    """The node's parameters after declaration: the execution settings (inherited, validated by the
    table) and the ROS-specific ones (see :data:`PARAMETERS` for descriptions)."""

    model_path: str
    camera_topics: tuple[str, ...] = ()
    control_rate_hz: float
    providers: tuple[str, ...]
    intra_op_threads: int
    warmup: int
    seed: int
    lower_limits: tuple[float, ...]
    upper_limits: tuple[float, ...]
    velocity_limits: tuple[float, ...]
    thread_priority: int = 0
    autostart: bool = True
    inference_thread: bool = False
    executor: str = "events"
    shadow: bool = False

    def __post_init__(self) -> None:
        try:
            super().__post_init__()
        except ValueError as exc:  # name it as what it is here: a parameter
            raise SafetyError(f"parameter {str(exc).removeprefix('setting ')}") from exc
        if self.executor not in EXECUTORS:
            raise SafetyError(f"parameter executor must be one of {EXECUTORS}, got {self.executor!r}")

    @property
    def settings(self) -> ExecutionSettings:
        """The execution settings alone."""
        return ExecutionSettings(**{f.name: getattr(self, f.name) for f in fields(ExecutionSettings)})

    @property
    def threaded_inference(self) -> bool:
        """Inference in the worker thread: asked for, or needed by an injected delay."""
        return self.inference_thread or self.inject_delay_ms > 0

    @property
    def period_s(self) -> float:
        return 1.0 / self.control_rate_hz

    def safety_limits(self, metadata: PolicyMetadata) -> SafetyLimits:
        """The model's joint limits, scaled and tightened by these parameters (rad, rad/s)."""
        return SafetyLimits.from_joint_limits(metadata.limits, self.max_velocity_scale, self.lower_limits,
                                              self.upper_limits, self.velocity_limits)

    def chunking_for(self, metadata: PolicyMetadata) -> str:
        """The chunking mode this node runs with ``metadata``'s model ('auto' resolved)."""
        return resolve_chunking(self.chunking, metadata.rtc)

    def controller_config(self, metadata: PolicyMetadata, guidance_scale: float | None = None) -> ControllerConfig:
        """The PolicyController's configuration for ``metadata`` at this node's rate (``guidance_scale``: the
        current value, None = the parameter's, unset = the model's)."""
        if guidance_scale is not None:
            validate_guidance_scale(guidance_scale)
        return controller_config(self.settings, metadata, self.period_s, guidance_scale)
