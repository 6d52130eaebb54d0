"""Whether the controller may act on its input: measured positions, the observation, vector features (pure).

Each check returns a one-line reason ("" = fine); the controller holds (or rejects the goal)
with that reason.

* Measured positions further than :data:`MEASURED_LIMIT_TOLERANCE_RAD` beyond the joint limits
  are an alarm, not a target: the controller holds.
* Out-of-distribution guard (:mod:`flow_policy_ros.runtime.ood`): with the model's training
  range (``ControllerConfig.observation_range``), every tick and every inference request
  measures the observation against it; beyond ``ood_margin`` range widths the controller holds
  naming the field, beyond half of it :attr:`InputGuard.warning` says so while it keeps
  running. Without a range the guard is off (:attr:`InputGuard.status` says why).
* A vector feature (e.g. the goal) in another frame than its spec's ``frame_id`` (a task
  feature: ``goal_frame``), of the wrong size, non-finite, or outside its training range plus
  ``ood_margin`` is rejected: the previous value stays, or the controller keeps waiting.
* Observation density (:mod:`flow_policy_ros.runtime.density_guard`, models with metadata
  ``density``): :attr:`InputGuard.density` sees each decision's log-likelihood; k low scores in a
  row hold, k good ones (probes scored while holding) resume (``density_hold_after`` = k).

Units: rad, m.
"""

from __future__ import annotations

import numpy as np

from flow_policy_ros.contract import FeatureSpec
from flow_policy_ros.runtime.controller_config import ControllerConfig, ControllerCounters
from flow_policy_ros.runtime.density_guard import DensityGuard
from flow_policy_ros.runtime.ood import OodScore, classify, ood_score
from flow_policy_ros.runtime.safety import SafetyLimits

#: A measured position further than this beyond a joint limit (rad) is an alarm, not a target.
MEASURED_LIMIT_TOLERANCE_RAD = 0.05


class InputGuard:
    """The input checks of one controller; see the module docstring.

    Args:
        config: the controller's settings (observation spec, training range, margin, goal frame).
        limits: position limits of the action joints (model order).
        counters: where OOD holds and warnings are counted.
    """

    def __init__(self, config: ControllerConfig, limits: SafetyLimits, counters: ControllerCounters) -> None:
        self.config = config
        self.limits = limits
        self.counters = counters
        #: running but close to the training range's edge (beyond half the margin): why, else ""
        self.warning = ""
        #: the latest observation's distance from the training range (None: guard off or no data yet)
        self.ood: OodScore | None = None
        rng = config.observation_range
        spec = config.observation
        self._ranges = {} if rng is None else {f.name: rng.field(spec, f.name) for f in spec.vector_features}
        #: the density score's hold (off without a model density)
        self.density = DensityGuard(config.density_threshold, config.density_hold_after)

    @property
    def status(self) -> str:
        """'on (margin M range widths)' or 'off: <why>'."""
        if self.config.observation_range is None:
            return "off: no training range in metadata"
        return f"on (margin {self.config.ood_margin:g} range widths)"

    def measured_beyond_limits(self, measured: np.ndarray) -> str:
        """The hold reason if a measured position (A,) rad is beyond its joint limit plus the tolerance, else ''."""
        lower = self.limits.lower - MEASURED_LIMIT_TOLERANCE_RAD
        upper = self.limits.upper + MEASURED_LIMIT_TOLERANCE_RAD
        bad = np.flatnonzero((measured < lower) | (measured > upper))
        if len(bad) == 0:
            return ""
        i = int(bad[0])
        return (f"measured position of action joint {i} is {measured[i]:.3f} rad, beyond its limits "
                f"[{self.limits.lower[i]:.3f}, {self.limits.upper[i]:.3f}]")

    def vector_problem(self, feature: FeatureSpec, values: np.ndarray, frame_id: str | None) -> str:
        """Why ``values`` (size,) of vector feature ``feature`` in ``frame_id`` (None: vouched for by
        the caller) are rejected, else ''."""
        expected = self.config.goal_frame if feature.task else feature.frame_id
        if frame_id is not None and expected and frame_id != expected:
            return f"{feature.name} in frame {frame_id!r}, expected {expected!r}"
        if values.shape != (feature.size,) or not np.all(np.isfinite(values)):
            return f"{feature.name} must be {feature.size} finite values ({feature.units or 'model units'}), got {values.tolist()}"
        if feature.name in self._ranges:
            score = ood_score(values, self._ranges[feature.name])
            if score.value > self.config.ood_margin:
                return f"{score.describe()} (margin {self.config.ood_margin:g})"
        return ""

    def out_of_distribution(self, observation: np.ndarray, holding: bool) -> str:
        """Measure ``observation`` (obs_dim,) against the training range: the hold reason beyond the
        margin, else ''. Updates :attr:`ood` and :attr:`warning`; ``holding``: the controller is in
        state 'hold' already (a hold is counted once)."""
        rng = self.config.observation_range
        if rng is None:
            return ""
        self.ood = score = ood_score(observation, rng)
        level = classify(score.value, self.config.ood_margin)
        warning = "" if level == "ok" else f"near the edge of the training range: {score.describe()}"
        was_warning = bool(self.warning)
        self.warning = warning if level == "warn" else ""
        if self.warning and not was_warning:
            self.counters.ood_warnings += 1
        if level != "ood":
            return ""
        if not holding:
            self.counters.ood_holds += 1
        return f"out of distribution: {score.describe()} (margin {self.config.ood_margin:g})"
