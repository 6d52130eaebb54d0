"""diagnostic_msgs/DiagnosticArray from a level, a message and key/value pairs; the policy node's status."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import numpy as np
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

if TYPE_CHECKING:  # annotations only: sim_node imports this module without onnxruntime
    from flow_policy_ros.runtime.controller import PolicyController
    from flow_policy_ros.runtime.policy import ChunkPolicy

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
                       extra: Mapping[str, object], obs_to_command_s: Iterable[float]) -> DiagnosticArray:
    """policy_node's status: ``state``/``reason``, the model (``OnnxPolicy``: provider, name, hash),
    the ``PolicyController``'s counters and latency percentiles (ms), and ``extra`` key/values."""
    counters = controller.counters
    meta = policy.metadata
    values = {
        "state": state, "reason": reason, "active_provider": policy.active_provider,
        "provider_fallback_reason": policy.fallback_reason, "model_name": meta.name, "model_hash": meta.model_hash,
        **extra, "guidance_scale": f"{controller.guidance_scale:g}", "warning": controller.warning,
        "ood_guard": controller.ood_guard, "ood_score": "nan" if controller.ood is None else f"{controller.ood.value:.3g}",
        "ood_field": "" if controller.ood is None else controller.ood.label, "goal_rejection": controller.goal_rejection,
        **density_values(controller),
        **counters.as_dict(),
        **percentiles_ms({"inference_latency": counters.inference_s, "tick_jitter": counters.jitter_s,
                          "obs_to_command_latency": obs_to_command_s}),
    }
    level, message = POLICY_LEVELS[state], f"{state}: {reason}" if reason else state
    if state == "running" and controller.warning:  # running, but near the edge of the training range
        level, message = "WARN", f"{state}: {controller.warning}"
    return diagnostic_array(stamp, name, level, message, meta.name, values)
