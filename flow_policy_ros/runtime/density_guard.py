"""The density half of the input guard: hold on k low observation log-likelihoods in a row (pure).

A model with an observation density (metadata ``density``) returns, with every chunk, the
log-likelihood of the observation the chunk was computed from (``InferenceResult.log_likelihood``,
nats) and its metadata holds a calibrated threshold. :class:`DensityGuard` sees one score per
decision (:meth:`DensityGuard.observe`) and decides:

* **hold**: after ``hold_after`` (k) consecutive decisions scored below the threshold, the
  controller holds (state ``hold``; the reason names score and threshold). The k-th low chunk is
  not executed; the k - 1 before it are (one low score alone is not a reason to stop: k = 2 by
  default trades one chunk of exposure for robustness to a single borderline score).
  A NaN/inf score counts as low.
* **recovery**: while holding the controller keeps scoring the live observation (a probe
  inference per tick while no call is in flight; its chunk is discarded). After ``hold_after``
  consecutive probes at or above the threshold, the hold ends and the controller runs again
  (the next chunk is requested afresh). One low probe restarts the count.

A model without a density (threshold None), or a result without a score, leaves the guard off:
the range guard alone applies. Counters: ``density_holds`` (holds entered), ``density_low_scores``
(decisions scored below the threshold). Units: nats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: Default k: consecutive low scores before a hold, and consecutive good ones before it ends.
DEFAULT_HOLD_AFTER = 2


@dataclass
class DensityStatus:
    """What /diagnostics shows: the guard's state, the latest score and the threshold."""

    state: str  # 'off', 'ok', 'low (j/k)', 'hold', 'recovering (j/k)'
    score: float | None
    threshold: float | None


class DensityGuard:
    """See the module docstring.

    Args:
        threshold: calibrated log-likelihood threshold (nats), None = no density (guard off).
        hold_after: k >= 1.
    """

    def __init__(self, threshold: float | None, hold_after: int = DEFAULT_HOLD_AFTER) -> None:
        if hold_after < 1:
            raise ValueError(f"density_hold_after must be >= 1, got {hold_after}")
        self.threshold = threshold
        self.hold_after = int(hold_after)
        self.holding = False
        self.score: float | None = None
        self.low_streak = 0
        self.good_streak = 0
        self.holds = 0
        self.low_scores = 0
        self.reason = ""

    @property
    def enabled(self) -> bool:
        return self.threshold is not None

    def observe(self, score: float | None) -> str:
        """The score of one decision; returns why its chunk must not be executed ('' = execute it)."""
        if self.threshold is None or score is None:
            return self.reason if self.holding else ""
        self.score = float(score)
        low = not math.isfinite(self.score) or self.score < self.threshold
        if low:
            self.low_scores += 1
            self.low_streak += 1
            self.good_streak = 0
        else:
            self.low_streak = 0
            self.good_streak += 1
        if not self.holding and self.low_streak >= self.hold_after:
            self.holding = True
            self.holds += 1
        elif self.holding and self.good_streak >= self.hold_after:
            self.holding = False
        self.reason = self._describe() if self.holding else ""
        return self.reason

    def _describe(self) -> str:
        recovering = f", recovering {self.good_streak}/{self.hold_after}" if self.good_streak else ""
        return (f"observation density: log-likelihood {self.score:.2f} below threshold {self.threshold:.2f} "
                f"({self.hold_after} decisions in a row{recovering})") if not self.good_streak else (
                f"observation density: hold{recovering} (last log-likelihood {self.score:.2f}, threshold "
                f"{self.threshold:.2f})")

    def reset(self) -> None:
        """Forget the streaks and any hold (the node builds a new controller, hence a new guard, on every
        lifecycle activation: a hold never outlives a deactivation)."""
        self.holding, self.low_streak, self.good_streak, self.reason = False, 0, 0, ""

    @property
    def status(self) -> DensityStatus:
        if self.threshold is None:
            return DensityStatus("off", None, None)
        if self.holding:
            state = f"recovering ({self.good_streak}/{self.hold_after})" if self.good_streak else "hold"
        elif self.low_streak:
            state = f"low ({self.low_streak}/{self.hold_after})"
        else:
            state = "ok"
        return DensityStatus(state, self.score, self.threshold)
