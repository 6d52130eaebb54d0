"""What policy_node would have made of one bag's predictions: the safety review and the density report.

Conventions:

- Safety (:func:`safety_review`): per bag, the fraction of decisions out of distribution (the
  guard of :mod:`flow_policy_ros.runtime.ood` at ``ood_margin``), of predicted commands outside
  the joint limits and of steps (from the measured position through the chunk) beyond the
  velocity limit; and what ``policy_node`` would have published: each chunk clamped by
  :mod:`flow_policy_ros.runtime.safety` from the measured position, an empty JointTrajectory
  (hold) where the node would hold (out of distribution, invalid output, measured position
  beyond the limits). ``--write-bag`` writes that, not the raw prediction.
- Observation density (models with metadata ``density``, :func:`density_report`): per bag the
  score (``observation_log_likelihood``, nats) of every decision, its distribution, the fraction
  below the calibrated threshold (flagged) and the fraction the node's guard would spend in the
  density hold (:class:`~flow_policy_ros.runtime.density_guard.DensityGuard`, k =
  ``density_hold_after``, over the decisions in time order, each decision scored); None for a
  model without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from flow_policy_ros.data.replay_decisions import Decisions
from flow_policy_ros.runtime.controller import MEASURED_LIMIT_TOLERANCE_RAD
from flow_policy_ros.runtime.density_guard import DEFAULT_HOLD_AFTER, DensityGuard
from flow_policy_ros.runtime.metadata import PolicyMetadata
from flow_policy_ros.runtime.ood import DEFAULT_OOD_MARGIN, classify, ood_score, ood_scores
from flow_policy_ros.runtime.safety import CommandLimiter, SafetyLimits

# --------------------------------------------------------------------------- safety


@dataclass
class SafetyReview:
    """What policy_node would have made of the predictions of one bag.

    Attributes:
        published: (N, H, A) float64, each chunk clamped as the node sends it (rad); NaN rows where held.
        held: (N,) bool, the node would hold instead (out of distribution, invalid, measured beyond limits).
        report: the JSON summary (fractions and counts; see :func:`safety_review`).
        ood: (N,) bool, the held decisions that are out of distribution (all False with the guard off).
    """

    published: np.ndarray
    held: np.ndarray
    report: dict[str, Any]
    ood: np.ndarray | None = None


def safety_review(predicted: np.ndarray, invalid: np.ndarray, dec: Decisions, meta: PolicyMetadata,
                  ood_margin: float = DEFAULT_OOD_MARGIN) -> SafetyReview:
    """Out-of-distribution decisions, predicted commands outside the limits, steps beyond the velocity
    limit, and the chunks as the node would publish them (see the module docstring).

    predicted: (N, H, A) rad (NaN rows where ``invalid``); invalid: (N,) bool. Fractions: OOD of
    decisions; outside limits of the valid decisions' predicted commands (N·H); velocity of their
    steps (point 0 from the measured position, then point to point: N·H).
    """
    limits = SafetyLimits.from_joint_limits(meta.limits)
    n, h, _ = predicted.shape
    rng = meta.observation_range
    report: dict[str, Any] = {"ood_margin": ood_margin, "ood_guard": "on" if rng is not None else
                              "off: no training range in metadata"}
    ood = np.zeros(n, bool)
    if rng is not None:
        scores = ood_scores(dec.observations, rng)
        levels = np.array([classify(v, ood_margin) for v in scores])
        ood = levels == "ood"
        worst = int(np.argmax(scores))
        report.update({"ood_decisions": int(ood.sum()), "ood_fraction": float(ood.mean()),
                       "ood_warn_fraction": float((levels == "warn").mean()),
                       "worst_ood": ood_score(dec.observations[worst], rng).describe() if scores[worst] > 0 else None})
    else:
        report.update({"ood_decisions": None, "ood_fraction": None, "ood_warn_fraction": None, "worst_ood": None})
    beyond = ((dec.measured < limits.lower - MEASURED_LIMIT_TOLERANCE_RAD)
              | (dec.measured > limits.upper + MEASURED_LIMIT_TOLERANCE_RAD)).any(axis=1)
    ok = ~invalid
    chunks = predicted[ok].astype(np.float64)
    outside = (chunks < limits.lower) | (chunks > limits.upper)
    steps = np.diff(np.concatenate([dec.measured[ok][:, None, :], chunks], axis=1), axis=1)
    too_fast = np.abs(steps) > limits.velocity * meta.control_period_s + 1e-9
    held = invalid | ood | beyond
    published = np.full(predicted.shape, np.nan)
    clamped = 0
    for i in np.flatnonzero(~held):
        published[i] = CommandLimiter(limits, meta.control_period_s).limit_trajectory(predicted[i], dec.measured[i])
        clamped += int(not np.allclose(published[i], predicted[i], rtol=0.0, atol=1e-9))
    commands = max(1, int(ok.sum()) * h)
    report.update({
        "outside_limits_commands": int(outside.any(axis=2).sum()),
        "outside_limits_fraction": float(outside.any(axis=2).sum() / commands),
        "velocity_violation_steps": int(too_fast.any(axis=2).sum()),
        "velocity_violation_fraction": float(too_fast.any(axis=2).sum() / commands),
        "measured_beyond_limits_decisions": int(beyond.sum()),
        "held_decisions": int(held.sum()),
        "clamped_decisions": clamped,
    })
    return SafetyReview(published, held, report, ood)


def safety_warning(report: dict[str, Any]) -> str:
    """One console line for a bag's report when anything would have alarmed the node, else ''."""
    safety = report["safety"]
    parts = []
    if report["invalid_outputs"]:
        parts.append(f"{report['invalid_outputs']} of {report['decisions']} model outputs invalid "
                     f"({report['first_invalid_output']})")
    if safety["ood_fraction"]:
        parts.append(f"{safety['ood_fraction']:.1%} of decisions out of distribution (worst: {safety['worst_ood']})")
    if safety["outside_limits_fraction"]:
        parts.append(f"{safety['outside_limits_fraction']:.1%} of predicted commands outside the joint limits")
    if safety["velocity_violation_fraction"]:
        parts.append(f"{safety['velocity_violation_fraction']:.1%} of predicted steps beyond the velocity limit")
    if safety["measured_beyond_limits_decisions"]:
        parts.append(f"{safety['measured_beyond_limits_decisions']} decisions with a measured position beyond the limits")
    return f"{report['bag']}: " + "; ".join(parts) if parts else ""


def density_held(scores: np.ndarray | None, meta: PolicyMetadata, hold_after: int = DEFAULT_HOLD_AFTER) -> np.ndarray | None:
    """(N,) bool: the decisions the node's density guard would hold (k = ``hold_after`` below the
    threshold in a row; every decision scored in time order); None for a model without a density."""
    density = getattr(meta, "density", None)
    if scores is None or density is None:
        return None
    guard = DensityGuard(density.threshold, hold_after)
    return np.array([bool(guard.observe(float(s))) for s in scores], dtype=bool)


def density_report(scores: np.ndarray | None, meta: PolicyMetadata, hold_after: int = DEFAULT_HOLD_AFTER) -> dict[str, Any] | None:
    """Score distribution, flagged fraction (score < threshold) and the fraction of decisions the
    density guard would hold (:func:`density_held`)."""
    density = getattr(meta, "density", None)
    if scores is None or density is None:
        return None
    finite = scores[np.isfinite(scores)]
    mask = density_held(scores, meta, hold_after)
    held = int(mask.sum())
    holds = int(np.count_nonzero(np.diff(mask.astype(np.int8), prepend=0) == 1))  # hold spans entered
    quantiles = {f"p{q}": float(np.percentile(finite, q)) for q in (1, 5, 50)} if finite.size else {}
    return {"threshold": density.threshold, "hold_after": hold_after, "decisions": int(len(scores)),
            "min": float(finite.min()) if finite.size else None, **quantiles,
            "flagged": int(np.sum(~(scores >= density.threshold))), "flagged_fraction": float(np.mean(~(scores >= density.threshold))),
            "held_decisions": held, "held_fraction": held / max(1, len(scores)), "holds": holds}
