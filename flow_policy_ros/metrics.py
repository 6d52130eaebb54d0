"""Evaluation metrics shared by eval-sim and replay: binomial confidence and command smoothness.

Smoothness is measured on the command sequence actually sent, one per control tick: finite
differences of order 2 (acceleration, rad/s²) and 3 (jerk, rad/s³) at the control period, split
into windows that straddle a chunk seam (the first tick of a new chunk) and windows inside one
chunk. Pure numpy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

#: Two-sided 95 % standard-normal quantile.
Z_95 = 1.959963984540054


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval (lo, hi) of a binomial proportion; (0, 1) when ``trials`` is 0."""
    if trials <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= trials:
        raise ValueError(f"successes {successes} must be in [0, trials={trials}]")
    p = successes / trials
    denom = 1.0 + z * z / trials
    center = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    # min/max: rounding must not push an end past p (at p = 0 or 1 the interval ends there exactly)
    return min(p, max(0.0, center - half)), max(p, min(1.0, center + half))


def seam_mask(length: int, order: int, seams: Sequence[int]) -> np.ndarray:
    """(length,) bool: difference window n..n+order of the command sequence contains a seam.

    A seam at tick b (b > 0, the first tick of a new chunk) is inside window n when n < b <= n + order,
    i.e. the window holds commands from both sides of it.
    """
    n = np.arange(length)
    mask = np.zeros(length, dtype=bool)
    for b in seams:
        if b > 0:
            mask |= (n < b) & (b <= n + order)
    return mask


def episode_peaks(commands: np.ndarray, seams: Sequence[int], period_s: float) -> dict[str, float | None]:
    """Peak |acceleration| (rad/s²) and |jerk| (rad/s³) over joints, at seams and inside chunks."""
    peaks: dict[str, float | None] = {}
    for name, order in (("accel", 2), ("jerk", 3)):
        values = np.abs(np.diff(commands, n=order, axis=0)).max(axis=1) / period_s**order if len(commands) > order else np.empty(0)
        at_seam = seam_mask(len(values), order, seams)
        peaks[f"{name}_seam"] = float(values[at_seam].max()) if at_seam.any() else None
        peaks[f"{name}_inside"] = float(values[~at_seam].max()) if (~at_seam).any() else None
    return peaks


def overall_peaks(commands: np.ndarray, period_s: float) -> dict[str, float | None]:
    """Peak |acceleration| (rad/s²) and |jerk| (rad/s³) over joints and ALL difference windows.

    Needs no chunk seams, so it is measured the same way on a recorded command topic (a bag) as on
    the in-process loop: the per-episode figure whose mean eval-sim and ``demo --record`` report.
    """
    out: dict[str, float | None] = {}
    for name, order in (("accel", 2), ("jerk", 3)):
        out[name] = float(np.abs(np.diff(commands, n=order, axis=0)).max() / period_s**order) if len(commands) > order else None
    return out


def mean_overall_peaks(sequences: Sequence[np.ndarray], period_s: float) -> dict[str, float | None]:
    """Mean over episodes of :func:`overall_peaks`: {'accel_rad_s2', 'jerk_rad_s3', 'episodes'}."""
    peaks = [overall_peaks(np.asarray(c, dtype=np.float64), period_s) for c in sequences]
    accel = [p["accel"] for p in peaks if p["accel"] is not None]
    jerk = [p["jerk"] for p in peaks if p["jerk"] is not None]
    return {"accel_rad_s2": float(np.mean(accel)) if accel else None,
            "jerk_rad_s3": float(np.mean(jerk)) if jerk else None, "episodes": len(accel)}
