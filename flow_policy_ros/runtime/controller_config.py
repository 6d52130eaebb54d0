"""The policy controller's execution settings and its event counters.

:class:`ControllerConfig` holds the settings (the node's parameters of the same names) and
refuses inconsistent ones with a message naming the value; :class:`ControllerCounters` counts
what happened (for ``/diagnostics`` and evaluation reports). Units: s, rad.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from flow_policy_ros.contract import ObservationSpec
from flow_policy_ros.errors import SafetyError
from flow_policy_ros.runtime.chunking import make_scheduler
from flow_policy_ros.runtime.metadata import DEFAULT_OUTPUT_MARGIN
from flow_policy_ros.runtime.ood import DEFAULT_OOD_MARGIN, ObservationRange, validate_margin
from flow_policy_ros.runtime.safety import validate_guidance_scale

EXECUTION_MODES: tuple[str, ...] = ("stream", "trajectory")
#: chunking rtc: the shortest committed prefix (ticks), whatever the delay (see ``runtime.prefix_committer``).
DEFAULT_RTC_MIN_PREFIX = 4
#: chunking rtc: rows after the takeover blended from the executing chunk into the new one.
DEFAULT_RTC_BLEND_TICKS = 16


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
        action_joint_names: the action joints (model order; for reasons that name a joint).
        action_range: the model's training action range (metadata ``action_range``, rad), None = no
            output range guard.
        output_margin: range widths beyond ``action_range`` before a chunk is an invalid output.
        rtc_min_prefix: the shortest committed prefix (ticks, clipped to d_max): the new chunk sees the
            executing one's velocity, not only its position.
        rtc_blend_ticks: rows after the takeover blended from the executing chunk into the new one
            (0 = none).
        density_threshold: the model's calibrated log-likelihood threshold (metadata ``density``),
            None = no density guard.
        density_hold_after: k, low density scores in a row before a hold (and good ones before it ends).
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
    action_joint_names: tuple[str, ...] = ()
    action_range: ObservationRange | None = None
    output_margin: float = DEFAULT_OUTPUT_MARGIN
    rtc_min_prefix: int = DEFAULT_RTC_MIN_PREFIX
    rtc_blend_ticks: int = DEFAULT_RTC_BLEND_TICKS
    density_threshold: float | None = None
    density_hold_after: int = 2

    def __post_init__(self) -> None:
        validate_margin(self.ood_margin)
        if not (math.isfinite(self.output_margin) and self.output_margin >= 0):
            raise SafetyError(f"output_margin must be a finite number >= 0 (range widths), got {self.output_margin}")
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
        if self.rtc_blend_ticks < 0:
            raise SafetyError(f"rtc_blend_ticks must be >= 0, got {self.rtc_blend_ticks}")
        if self.rtc_min_prefix < 1:
            raise SafetyError(f"rtc_min_prefix must be >= 1, got {self.rtc_min_prefix}")

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
    limiter_restarts: int = 0  # re-activated with the arm not tracking the held command: restarted from the arm
    ood_holds: int = 0
    ood_warnings: int = 0
    rejected_goals: int = 0
    rtc_prefix_ticks: int = 0  # sum of the prefix lengths requested
    rtc_late_chunks: int = 0  # chunks that arrived after their prefix ran out (used + discarded)
    rtc_late_used: int = 0  # ... used, shifted onto the commands executed meanwhile
    rtc_late_discarded: int = 0  # ... too late to shift (beyond d_max while the arm moved): dropped
    rtc_prefix_clipped: int = 0  # requests whose needed prefix exceeded the model's d_max
    rtc_prefix_broken: int = 0  # committed commands re-limited after a missed tick (sent != prefix)
    deadline_fallbacks: int = 0  # the executing chunk ended with no usable new one: held (stream) / ended at rest
    inference_s: deque = field(default_factory=lambda: deque(maxlen=1000))
    jitter_s: deque = field(default_factory=lambda: deque(maxlen=3000))


    def as_dict(self) -> dict[str, int]:
        return {k: v for k, v in vars(self).items() if isinstance(v, int)}
