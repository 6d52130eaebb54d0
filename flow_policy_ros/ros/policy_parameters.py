"""policy_node's parameters: declared once from this table, then frozen into :class:`PolicyNodeParams`.

The table gives each parameter's default, type, description, read-only flag and range (what
``ros2 param describe flow_policy_node <name>`` shows); ``config/policy.yaml`` sets them.
"""

from __future__ import annotations

from dataclasses import dataclass

from rcl_interfaces.msg import ParameterType
from rclpy.parameter import Parameter

from flow_policy_ros.ros.node_runner import EXECUTORS
from flow_policy_ros.ros.parameters import ParameterSpec
from flow_policy_ros.runtime.chunking import CHUNKING_CHOICES, DEFAULT_ENSEMBLE_DECAY, DEFAULT_REPLAN_EVERY, resolve_chunking
from flow_policy_ros.runtime.controller import EXECUTION_MODES, ControllerConfig
from flow_policy_ros.runtime.metadata import PolicyMetadata
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
    "chunking": ParameterSpec("auto", _T.PARAMETER_STRING,
                              "'auto' (default: 'rtc' for a real-time chunking model, metadata rtc, else "
                              "'receding_horizon'), 'receding_horizon' (open loop), 'temporal_ensemble' (ACT-style "
                              "averaging) or 'rtc' (real-time chunking: needs a model trained with a committed prefix)"),
    "rtc_margin_ticks": ParameterSpec(1, _T.PARAMETER_INTEGER,
                                      "chunking rtc: ticks added to the measured inference delay to size the committed prefix",
                                      low=0, high=100),
    "inject_delay_ms": ParameterSpec(0.0, _T.PARAMETER_DOUBLE,
                                     "FOR EXPERIMENTS ONLY: hold every inference result back this long (ms) to emulate a "
                                     "slow model (the real-time chunking delay protocol); 0 on a robot", low=0.0, high=2000.0),
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
    "autostart": ParameterSpec(True, _T.PARAMETER_BOOL,
                               "configure and activate at start-up (true), or stay unconfigured until a lifecycle "
                               "transition is requested (false: the launch file or an operator drives it)"),
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
    thread_priority: int = 0
    autostart: bool = True
    rtc_margin_ticks: int = 1
    inject_delay_ms: float = 0.0
    ood_margin: float = DEFAULT_OOD_MARGIN
    goal_frame: str = "world"
    inference_thread: bool = False
    executor: str = "events"

    def __post_init__(self) -> None:
        if self.executor not in EXECUTORS:
            raise SafetyError(f"parameter executor must be one of {EXECUTORS}, got {self.executor!r}")
        if self.execution not in EXECUTION_MODES:
            raise SafetyError(f"parameter execution must be one of {EXECUTION_MODES}, got {self.execution!r}")
        if self.chunking not in CHUNKING_CHOICES:
            raise SafetyError(f"parameter chunking must be one of {CHUNKING_CHOICES}, got {self.chunking!r}")
        validate_guidance_scale(self.guidance_scale)

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
        """The PolicyController's configuration for ``metadata`` (``guidance_scale``: the current value)."""
        w = self.guidance_scale if guidance_scale is None else validate_guidance_scale(guidance_scale)
        # by keyword: ControllerConfig's optional fields are not in a stable order
        return ControllerConfig(metadata.observation, metadata.horizon, self.period_s, execution=self.execution,
                                chunking=self.chunking_for(metadata), replan_every=self.replan_every,
                                ensemble_decay=self.ensemble_decay, stale_timeout_s=self.stale_timeout_s,
                                guidance_scale=w, observation_range=metadata.observation_range,
                                ood_margin=self.ood_margin, goal_frame=self.goal_frame,
                                rtc_max_delay=metadata.rtc_max_delay, rtc_margin_ticks=self.rtc_margin_ticks)
