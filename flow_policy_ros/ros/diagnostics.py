"""diagnostic_msgs/DiagnosticArray from a level, a message and key/value pairs; the policy node's status."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import numpy as np
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

if TYPE_CHECKING:  # annotations only: sim_node imports this module without onnxruntime
    from flow_policy_ros.ros.messages import CameraTopic
    from flow_policy_ros.runtime.controller import PolicyController
    from flow_policy_ros.runtime.latency import StageLatencies
    from flow_policy_ros.runtime.policy import ChunkPolicy
    from flow_policy_ros.runtime.shadow import ShadowComparison

LEVELS: dict[str, bytes] = {
    "OK": DiagnosticStatus.OK,
    "WARN": DiagnosticStatus.WARN,
    "ERROR": DiagnosticStatus.ERROR,
    "STALE": DiagnosticStatus.STALE,
}


def diagnostic_array(stamp: Time, name: str, level: str, message: str, hardware_id: str,
                     values: Mapping[str, object]) -> DiagnosticArray:
    """A DiagnosticArray with one status; ``values`` are stringified in order."""
    status = DiagnosticStatus(level=LEVELS[level], name=name, message=message, hardware_id=hardware_id,
                              values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])
    array = DiagnosticArray(status=[status])
    array.header.stamp = stamp
    return array


def percentiles_ms(series: Mapping[str, Iterable[float]], quantiles: tuple[int, ...] = (50, 99)) -> dict[str, str]:
    """``{name}_p{q}_ms`` for each series of durations (s): the percentile in ms (3 decimals), 'nan' if empty."""
    values = {}
    for name, samples in series.items():
        data = np.fromiter(samples, dtype=np.float64)
        for q in quantiles:
            values[f"{name}_p{q}_ms"] = f"{float(np.percentile(data, q)) * 1e3:.3f}" if data.size else "nan"
    return values

#: Diagnostic level of each policy state (the controller's states and the lifecycle's "inactive").
POLICY_LEVELS = {"running": "OK", "inactive": "OK", "waiting": "WARN", "stale": "WARN", "error": "ERROR", "hold": "ERROR"}


def density_values(controller: PolicyController) -> dict[str, str]:
    """The observation density guard on /diagnostics: state (off/ok/low/hold/recovering), the latest
    score and the threshold (nats), holds so far."""
    density = controller.guard.density
    status = density.status
    return {"density_state": status.state, "density_score": "nan" if status.score is None else f"{status.score:.3f}",
            "density_threshold": "nan" if status.threshold is None else f"{status.threshold:.3f}",
            "density_holds": str(density.holds), "density_hold_after": str(density.hold_after)}


def policy_diagnostics(stamp: Time, name: str, state: str, reason: str, controller: PolicyController, policy: ChunkPolicy,
                       extra: Mapping[str, object], obs_to_command_s: Iterable[float], goal_rejection: str | None = None,
                       joint_state_rejection: str = "") -> DiagnosticArray:
    """policy_node's status: ``state``/``reason``, the model (``OnnxPolicy``: provider, name, hash),
    the ``PolicyController``'s counters and latency percentiles (ms), and ``extra`` key/values.

    ``goal_rejection`` (default: the controller's) is the last goal refused for whatever reason,
    also one the node refused before the controller saw it (a NaN goal); ``joint_state_rejection``
    the last joint state the node refused (e.g. joint names that do not match the model)."""
    counters = controller.counters
    meta = policy.metadata
    goal_rejection = controller.goal_rejection if goal_rejection is None else goal_rejection
    values = {
        "state": state, "reason": reason, "active_provider": policy.active_provider,
        "provider_fallback_reason": policy.fallback_reason, "model_name": meta.name, "model_hash": meta.model_hash,
        **extra, "guidance_scale": f"{controller.guidance_scale:g}", "warning": controller.warning,
        "ood_guard": controller.ood_guard, "ood_score": "nan" if controller.ood is None else f"{controller.ood.value:.3g}",
        "ood_field": "" if controller.ood is None else controller.ood.label,
        "output_range_guard": controller.output_guard, "limiter_restart": controller.tracking.restart_note,
        "goal_rejection": goal_rejection,
        "joint_state_rejection": joint_state_rejection,
        **density_values(controller),
        **counters.as_dict(),
        **percentiles_ms({"inference_latency": counters.inference_s, "tick_jitter": counters.jitter_s,
                          "obs_to_command_latency": obs_to_command_s}),
    }
    timing_level, timing = controller.timing_warning
    values["timing_warning"] = timing
    if controller.config.rtc:  # real-time chunking: the figures the prefix and the execution horizon come from
        prefix = controller.prefix
        values.update(rtc_delay_ticks=prefix.delay_ticks, rtc_prefix_length=prefix.prefix_length(),
                      rtc_execution_horizon=prefix.execution_horizon(), rtc_max_delay=controller.config.rtc_max_delay)
    level, message = POLICY_LEVELS[state], f"{state}: {reason}" if reason else state
    if state == "running" and controller.warning:  # running, but near the edge of the training range
        level, message = "WARN", f"{state}: {controller.warning}"
    if state == "running" and timing_level:  # a delay beyond the model's d_max, or a deadline hold
        level = "ERROR" if timing_level == "ERROR" else "WARN"
        message = f"{message}; {timing}" if message != state else f"{state}: {timing}"
    return diagnostic_array(stamp, name, level, message, meta.name, values)


def camera_diagnostics(controller: PolicyController, cameras: Iterable[CameraTopic],
                       image_latency: StageLatencies) -> dict[str, str]:
    """A camera model's extra key/values (empty for a state-only model): per camera its topic and the
    age (ms) of its newest frame against the joint state last paired ('nan' before the first frame),
    ``image_rejections`` (frames refused so far) and ``image_rejection`` (the last reason), and the
    camera path's stage percentiles ``stage_image_receipt_p50_ms``, ``stage_image_decode_p99_ms``, ..."""
    cameras = list(cameras)
    if not cameras:
        return {}
    images = controller.images
    ages = images.ages_s()
    values = {}
    for camera in cameras:
        age = ages.get(camera.feature.name)
        values[f"{camera.feature.name}_topic"] = camera.topic
        values[f"{camera.feature.name}_age_ms"] = "nan" if age is None else f"{age * 1e3:.1f}"
    values["image_rejections"] = str(sum(images.rejected.values()))
    values["image_rejection"] = images.last_rejection
    return {**values, **image_latency.diagnostic_values()}


def shadow_values(comparison: ShadowComparison) -> dict[str, str]:
    """Shadow mode's figures (rad, 4 decimals; 'nan' before the first comparison): the per-tick max
    |measured - preview of the tick before| now, p50/p95 over the recent window, the worst tick,
    the joint and the worst per joint (``shadow_worst_rad.<joint>``)."""
    c = comparison
    values = {
        "shadow": "true", "shadow_ticks_compared": str(c.ticks_compared),
        "shadow_diff_rad": f"{c.last_max_abs_rad:.4f}", "shadow_diff_p50_rad": f"{c.percentile_rad(50):.4f}",
        "shadow_diff_p95_rad": f"{c.percentile_rad(95):.4f}", "shadow_diff_max_rad": f"{c.worst_max_abs_rad:.4f}",
        "shadow_worst_joint": c.worst_joint,
    }
    values.update({f"shadow_worst_rad.{name}": f"{worst:.4f}" for name, worst in zip(c.joint_names, c.worst_per_joint_rad)})
    return values
