"""policy_node's parameters: declared once from this table, then frozen into :class:`PolicyNodeParams`.

The table gives each parameter's default, type, description, read-only flag and range (what
``ros2 param describe flow_policy_node <name>`` shows); ``config/policy.yaml`` sets them.
"""

from __future__ import annotations

from dataclasses import dataclass

from rcl_interfaces.msg import ParameterType
from rclpy.parameter import Parameter

from flow_policy_ros.ros.parameters import ParameterSpec
from flow_policy_ros.runtime.chunking import CHUNKING_MODES, DEFAULT_ENSEMBLE_DECAY, DEFAULT_REPLAN_EVERY
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
    "chunking": ParameterSpec("receding_horizon", _T.PARAMETER_STRING,
                              "'receding_horizon' (open loop, default), 'temporal_ensemble' (ACT-style averaging) or "
                              "'rtc' (real-time chunking: needs a model trained with a committed prefix, metadata rtc)"),
    "rtc_margin_ticks": ParameterSpec(1, _T.PARAMETER_INTEGER,
                                      "chunking rtc: ticks added to the measured inference delay to size the committed prefix",
                                      low=0, high=100),
    "inject_delay_ms": ParameterSpec(0.0, _T.PARAMETER_DOUBLE,
                                     "FOR EXPERIMENTS ONLY: hold every inference result back this long (ms) to emulate a "
                                     "slow model (the real-time chunking delay protocol); 0 on a robot", low=0.0, high=2000.0),
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

    def __post_init__(self) -> None:
        if self.execution not in EXECUTION_MODES:
            raise SafetyError(f"parameter execution must be one of {EXECUTION_MODES}, got {self.execution!r}")
        if self.chunking not in CHUNKING_MODES:
            raise SafetyError(f"parameter chunking must be one of {CHUNKING_MODES}, got {self.chunking!r}")
        validate_guidance_scale(self.guidance_scale)

    @property
    def period_s(self) -> float:
        return 1.0 / self.control_rate_hz

    def safety_limits(self, metadata: PolicyMetadata) -> SafetyLimits:
        """The model's joint limits, scaled and tightened by these parameters (rad, rad/s)."""
        return SafetyLimits.from_joint_limits(metadata.limits, self.max_velocity_scale, self.lower_limits,
                                              self.upper_limits, self.velocity_limits)

    def controller_config(self, metadata: PolicyMetadata, guidance_scale: float | None = None) -> ControllerConfig:
        """The PolicyController's configuration for ``metadata`` (``guidance_scale``: the current value)."""
        w = self.guidance_scale if guidance_scale is None else validate_guidance_scale(guidance_scale)
        return ControllerConfig(
            observation=metadata.observation, horizon=metadata.horizon, period_s=self.period_s, execution=self.execution,
            chunking=self.chunking, replan_every=self.replan_every, ensemble_decay=self.ensemble_decay,
            stale_timeout_s=self.stale_timeout_s, guidance_scale=w, observation_range=metadata.observation_range,
            ood_margin=self.ood_margin, goal_frame=self.goal_frame, rtc_max_delay=metadata.rtc_max_delay,
            rtc_margin_ticks=self.rtc_margin_ticks)
