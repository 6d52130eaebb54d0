"""The scores of one bag's predictions: errors against what followed, seam jerk, prefix consistency.

:func:`error_metrics` compares the predicted chunks with the recorded ones (rad);
:func:`seam_jerk` the smoothness of executing them open loop; :func:`prefix_consistency`
re-runs a real-time chunking model on recorded prefixes.

Conventions:

- Prefix consistency (real-time chunking models, :func:`prefix_consistency`): at every decision
  whose next d + 1 recorded actions exist, the recorded actions of ticks k .. k+d-1 are passed as
  the committed prefix (what the robot was commanded), d = ``rtc_prefix`` (default the model's
  d_max); reported: whether the output reproduced the prefix exactly, and the step from the last
  committed action to the first new one (row d - row d-1) against the recorded step at the same
  place and the velocity limit. None for a plain model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from flow_policy_ros.data.replay_decisions import DEFAULT_BATCH, Decisions, images_kw
from flow_policy_ros.errors import InvalidOutputError, UsageError
from flow_policy_ros.runtime.metadata import PolicyMetadata

# --------------------------------------------------------------------------- metrics


def _jerk(seq: np.ndarray, period_s: float) -> np.ndarray:
    """Third finite difference (M-3, A) of positions (M, A) rad → rad/s³."""
    return np.diff(seq, n=3, axis=0) / period_s**3


def seam_jerk(predicted: np.ndarray, recorded: np.ndarray, period_s: float, replan_every: int) -> dict[str, Any]:
    """Jerk of executing predicted chunks open loop, ``replan_every`` ticks each, at seams vs inside.

    predicted: (N, H, A) chunks of consecutive ticks; recorded: (N, A) recorded actions of the same ticks.
    The executed sequence takes the first ``replan_every`` actions of the chunks at decisions
    0, R, 2R, ...; a jerk sample (window n..n+3) is at a seam when a chunk starts at n+1..n+3.
    Values are mean |jerk| over joints and samples (rad/s³).
    """
    r = max(1, min(replan_every, predicted.shape[1]))
    seq = np.concatenate([predicted[d, :r] for d in range(0, len(predicted), r)])[: len(predicted)]
    result: dict[str, Any] = {"replan_every": r, "seam_mean_abs_rad_s3": None, "inside_mean_abs_rad_s3": None,
                              "seam_to_inside_ratio": None, "recorded_mean_abs_rad_s3": None}
    if len(seq) < 4:
        return result
    jerk = np.abs(_jerk(seq, period_s)).mean(axis=1)
    n = np.arange(len(jerk))
    seam = ((n + 3) // r) > (n // r)
    if seam.any():
        result["seam_mean_abs_rad_s3"] = float(jerk[seam].mean())
    if (~seam).any():
        result["inside_mean_abs_rad_s3"] = float(jerk[~seam].mean())
    if seam.any() and (~seam).any() and jerk[~seam].mean() > 0:
        result["seam_to_inside_ratio"] = float(jerk[seam].mean() / jerk[~seam].mean())
    result["recorded_mean_abs_rad_s3"] = float(np.abs(_jerk(recorded, period_s)).mean())
    return result


def prefix_consistency(policy: Any, dec: Decisions, noise: np.ndarray, guidance: float | None, prefix_length: int,
                       batch_size: int = DEFAULT_BATCH) -> dict[str, Any]:
    """Seam of a real-time chunking model on recorded prefixes (see module docstring).

    Decisions with an invalid output are skipped (counted). Steps are in rad per tick; means are
    over decisions and joints, ``*_max_abs_rad`` the largest joint step of any decision.
    """
    meta: PolicyMetadata = policy.metadata
    d = int(prefix_length)
    if not 1 <= d <= meta.rtc_max_delay:
        raise UsageError(f"--rtc-prefix {d}: must be in [1, d_max={meta.rtc_max_delay}] for {meta.name}")
    usable = np.flatnonzero(dec.valid[:, d])  # rows 0..d recorded
    result: dict[str, Any] = {"prefix_length": d, "decisions": int(len(usable)), "invalid_outputs": 0,
                              "reproduced": None, "seam_step_mean_abs_rad": None, "seam_step_max_abs_rad": None,
                              "recorded_step_mean_abs_rad": None, "seam_step_error_mean_abs_rad": None,
                              "beyond_velocity_limit_fraction": None}
    if len(usable) == 0:
        return result
    step_limit = np.asarray(meta.limits.velocity) * meta.control_period_s
    prefix = dec.targets[usable].astype(np.float32)
    outs, keep = [], []
    for lo in range(0, len(usable), batch_size):
        idx = usable[lo:lo + batch_size]
        sl = slice(lo, lo + len(idx))
        try:
            outs.append(policy.predict(dec.observations[idx], noise=noise[idx], guidance_scale=guidance,
                                       prefix_actions=prefix[sl], prefix_length=np.full(len(idx), d, np.int64),
                                       **images_kw(dec.images, idx)))
            keep.append(np.ones(len(idx), bool))
        except InvalidOutputError:  # count the batch as invalid; replay's main metrics find the culprits
            outs.append(np.full((len(idx),) + prefix.shape[1:], np.nan, np.float32))
            keep.append(np.zeros(len(idx), bool))
    out, ok = np.concatenate(outs), np.concatenate(keep)
    result["invalid_outputs"] = int((~ok).sum())
    if not ok.any():
        return result
    out, rec = out[ok], prefix[ok].astype(np.float64)
    seam = np.abs(out[:, d].astype(np.float64) - out[:, d - 1])
    recorded = np.abs(rec[:, d] - rec[:, d - 1])
    result.update({
        "reproduced": bool(np.array_equal(out[:, :d], prefix[ok][:, :d])),
        "seam_step_mean_abs_rad": float(seam.mean()),
        "seam_step_max_abs_rad": float(seam.max()),
        "recorded_step_mean_abs_rad": float(recorded.mean()),
        "seam_step_error_mean_abs_rad": float(np.abs(out[:, d] - rec[:, d]).mean()),
        "beyond_velocity_limit_fraction": float(np.mean(np.any(seam > step_limit[None, :] + 1e-9, axis=1))),
    })
    return result


def error_metrics(predicted: np.ndarray, targets: np.ndarray, valid: np.ndarray,
                  joint_names: Sequence[str], period_s: float) -> dict[str, Any]:
    """Errors (rad) of predicted (N, H, A) against targets (N, H, A) over ``valid`` (N, H) steps."""
    err = predicted.astype(np.float64) - targets
    mask = valid[:, :, None]
    count = int(valid.sum())  # scored (decision, step) pairs, the same for every joint
    abs_err = np.where(mask, np.abs(err), 0.0)
    sq_err = np.where(mask, err**2, 0.0)
    steps = valid.sum(axis=0)
    first = np.abs(err[:, 0, :])
    return {
        "first_action": {"mae_rad": float(first.mean()), "rmse_rad": float(np.sqrt((first**2).mean())),
                         "max_abs_rad": float(first.max()), "mae_rad_per_joint": first.mean(axis=0).tolist()},
        "per_joint": {name: {"mae_rad": float(abs_err[:, :, j].sum() / count),
                             "rmse_rad": float(np.sqrt(sq_err[:, :, j].sum() / count))}
                      for j, name in enumerate(joint_names)},
        "overall": {"mae_rad": float(abs_err.sum() / (count * err.shape[2])),
                    "rmse_rad": float(np.sqrt(sq_err.sum() / (count * err.shape[2])))},
        "horizon": {"step_time_s": [(i + 1) * period_s for i in range(valid.shape[1])],
                    "mae_rad": (abs_err.sum(axis=(0, 2)) / np.maximum(steps * err.shape[2], 1)).tolist(),
                    "rmse_rad": np.sqrt(sq_err.sum(axis=(0, 2)) / np.maximum(steps * err.shape[2], 1)).tolist(),
                    "scored_decisions": steps.tolist()},
    }
