"""Out-of-distribution guard: how far an observation lies outside the policy's training range.

A flow policy only knows the part of the observation space its demonstrations covered; far
outside it, its chunks are arbitrary (a real recording at a normalized value of -17 on one joint
made a shipped model predict targets of hundreds of radians). The exported metadata records the
training range of every observation dimension (min/max over the training windows, per joint
and per goal axis: :class:`ObservationRange`); this module measures an observation against it.

Excess of dimension i, in range widths (0 inside the range)::

    excess_i = max(low_i - x_i, x_i - high_i, 0) / max(high_i - low_i, MIN_RANGE_WIDTH)

The score of an observation is its worst dimension (:class:`OodScore` names it). A caller
compares it with a margin (``policy_node`` parameter ``ood_margin``, default
:data:`DEFAULT_OOD_MARGIN` = 0.25 range widths): above the margin the observation is
out of distribution (hold), above half the margin it is a warning (:func:`classify`).

Pure numpy: the node, the in-process evaluation and offline replay use the same numbers.
Units: the observation's own (rad, rad/s, m); excesses are dimensionless.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from flow_policy_ros.contract import ObservationSpec
from flow_policy_ros.errors import ModelFileError, SafetyError

#: Default margin (range widths) beyond the training range before the guard holds.
DEFAULT_OOD_MARGIN = 0.25
#: Floor of a range width (observation units): a dimension that never changed in training (a
#: fixed goal coordinate) still has a finite excess. Equals the normalization's 2 * MIN_SCALE.
MIN_RANGE_WIDTH = 2e-3
#: What :func:`classify` returns.
OOD_LEVELS: tuple[str, ...] = ("ok", "warn", "ood")


def observation_labels(spec: ObservationSpec) -> tuple[str, ...]:
    """One label per observation dimension: ``joint_positions[<joint>]``, ``goal[x]``, ...
    (a vector's value names, else its indices)."""
    labels: list[str] = []
    for feature in spec.low_dim_features:
        parts = feature.value_names or tuple(str(i) for i in range(feature.size))
        labels += [f"{feature.name}[{part}]" for part in parts]
    return tuple(labels)


@dataclass(frozen=True, eq=False)
class ObservationRange:
    """Training range of every observation dimension.

    Attributes:
        low: (obs_dim,) minimum over the training windows (observation units).
        high: (obs_dim,) maximum over the training windows.
        labels: (obs_dim,) names of the dimensions (:func:`observation_labels`).
        source: where the range came from (e.g. 'training windows').
    """

    low: np.ndarray
    high: np.ndarray
    labels: tuple[str, ...]
    source: str = ""

    def __post_init__(self) -> None:
        low = np.asarray(self.low, dtype=np.float64).reshape(-1)
        high = np.asarray(self.high, dtype=np.float64).reshape(-1)
        if low.shape != high.shape or low.size != len(self.labels):
            raise SafetyError(f"observation range: low {low.size}, high {high.size} and {len(self.labels)} labels differ")
        if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
            raise SafetyError("observation range: low/high must be finite")
        bad = np.flatnonzero(low > high)
        if len(bad):
            i = int(bad[0])
            raise SafetyError(f"observation range: {self.labels[i]} low {low[i]} above high {high[i]}")
        for value in (low, high):
            value.setflags(write=False)
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)
        object.__setattr__(self, "labels", tuple(self.labels))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ObservationRange):
            return NotImplemented
        return (self.labels == other.labels and self.source == other.source
                and np.array_equal(self.low, other.low) and np.array_equal(self.high, other.high))

    __hash__ = None  # type: ignore[assignment]

    @property
    def width(self) -> np.ndarray:
        """(obs_dim,) range widths, floored at :data:`MIN_RANGE_WIDTH`."""
        return np.maximum(self.high - self.low, MIN_RANGE_WIDTH)

    def field(self, spec: ObservationSpec, name: str) -> ObservationRange:
        """The part of the range that covers observation field ``name`` (e.g. 'goal')."""
        sl = spec.field_slices()[name]
        return ObservationRange(self.low[sl], self.high[sl], self.labels[sl], self.source)

    def to_json(self) -> dict[str, Any]:
        return {"low": self.low.tolist(), "high": self.high.tolist(), "source": self.source}

    @classmethod
    def from_json(cls, data: Any, spec: ObservationSpec, where: str = "model") -> ObservationRange:
        """Parse the metadata entry; ModelFileError naming ``where`` when it is malformed."""
        if not isinstance(data, Mapping) or "low" not in data or "high" not in data:
            raise ModelFileError(f"{where}: metadata observation_range must be an object with 'low' and 'high'")
        try:
            low = np.asarray(data["low"], dtype=np.float64)
            high = np.asarray(data["high"], dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ModelFileError(f"{where}: metadata observation_range is not numeric ({exc})") from exc
        if low.shape != (spec.obs_dim,) or high.shape != (spec.obs_dim,):
            raise ModelFileError(f"{where}: metadata observation_range has {low.size}/{high.size} values, "
                                 f"expected obs_dim {spec.obs_dim}")
        try:
            return cls(low, high, observation_labels(spec), str(data.get("source", "")))
        except SafetyError as exc:
            raise ModelFileError(f"{where}: metadata {exc}") from exc


@dataclass(frozen=True)
class OodScore:
    """How far one observation lies outside the training range.

    Attributes:
        value: excess of the worst dimension (range widths; 0 = inside the range).
        index: that dimension's index in the observation vector.
        label: its name (e.g. ``joint_positions[lbr_iiwa_joint_4]``).
        observed: its value (observation units).
        low, high: its training range.
    """

    value: float
    index: int
    label: str
    observed: float
    low: float
    high: float

    def describe(self) -> str:
        """One line, e.g. ``goal[x] = 100.000 is 4e+03 range widths outside the training range [0.450, 0.700]``."""
        return (f"{self.label} = {self.observed:.3f} is {self.value:.3g} range widths outside the training range "
                f"[{self.low:.3f}, {self.high:.3f}]")


def ood_excess(observations: np.ndarray, rng: ObservationRange) -> np.ndarray:
    """Per-dimension excess (range widths, >= 0) of (obs_dim,) or (N, obs_dim) observations.

    Non-finite values count as infinitely far outside.
    """
    x = np.asarray(observations, dtype=np.float64)
    if x.shape[-1] != rng.low.size:
        raise SafetyError(f"observation has {x.shape[-1]} values, the training range covers {rng.low.size}")
    with np.errstate(invalid="ignore"):
        excess = np.maximum(np.maximum(rng.low - x, x - rng.high), 0.0) / rng.width
    return np.where(np.isnan(excess), np.inf, excess)


def ood_score(observation: np.ndarray, rng: ObservationRange) -> OodScore:
    """The worst dimension of one (obs_dim,) observation (ties: the first)."""
    x = np.asarray(observation, dtype=np.float64).reshape(-1)
    excess = ood_excess(x, rng)
    i = int(np.argmax(excess))
    return OodScore(float(excess[i]), i, rng.labels[i], float(x[i]), float(rng.low[i]), float(rng.high[i]))


def ood_scores(observations: np.ndarray, rng: ObservationRange) -> np.ndarray:
    """(N,) worst excess of each of (N, obs_dim) observations (range widths)."""
    return ood_excess(np.asarray(observations, dtype=np.float64).reshape(-1, rng.low.size), rng).max(axis=1)


def classify(value: float, margin: float) -> str:
    """'ok' (within half the margin), 'warn' (half the margin .. the margin) or 'ood' (beyond the margin)."""
    if value > margin:
        return "ood"
    if value > margin / 2:
        return "warn"
    return "ok"


def validate_margin(margin: float) -> float:
    """``margin`` as float when finite and >= 0 (range widths), else SafetyError naming it."""
    margin = float(margin)
    if not np.isfinite(margin) or margin < 0:
        raise SafetyError(f"ood_margin must be a finite number >= 0 (range widths), got {margin}")
    return margin
