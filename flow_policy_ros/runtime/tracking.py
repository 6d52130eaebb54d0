"""Is the arm still tracking the last command? When it is not, restart the limiter from the arm (pure).

The velocity limit holds against the previous command actually sent, across every event: the
:class:`~flow_policy_ros.runtime.safety.CommandLimiter` is never reset by a goal change, a hold,
an error or a resume. Where a hold ends far from the arm, the command walks from the previous
command towards the arm at the velocity limit, then follows the policy (see
``safety.clamp_command``). One exception: when the arm is more than
:data:`TRACKING_TOLERANCE_RAD` from the last command, the robot's controller is not holding that
command any more (a driver restart, a simulator reset, a hand-guided move): continuing from it
would make the arm jump back towards it, so once the arm has stood still there for
:data:`STEADY_READINGS` joint states the limiter restarts from the measured position (counted in
``limiter_rebased``). A glitching or hostile joint-state stream never stands still, so it never
moves the reference: commands then walk towards the arm at the limit. Units: rad.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from flow_policy_ros.runtime.safety import CommandLimiter

#: An arm further than this (rad, any joint) from the last command is not tracking it (a driver
#: restart, a reset or a hand-guided move): the next command ramps from where the arm is.
#: A position controller under a 1.5 rad/s command stream lags by a few ticks (< 0.1 rad).
TRACKING_TOLERANCE_RAD = 0.25
#: ... and only once the arm has stood still (every joint within STEADY_TOLERANCE_RAD over the last
#: STEADY_READINGS joint states): a driver holding a new position, not a glitch or a noisy stream.
STEADY_READINGS = 5
STEADY_TOLERANCE_RAD = 0.005


class ArmTracking:
    """The measured arm position and its recent history; decides when the limiter restarts from it."""

    def __init__(self) -> None:
        self.measured: np.ndarray | None = None  # (A,) rad, the latest measured action-joint positions
        self._recent: deque = deque(maxlen=STEADY_READINGS)

    def observe(self, measured: np.ndarray) -> np.ndarray:
        """Record a joint state's measured positions (A,) rad; returns them as float64."""
        self.measured = np.asarray(measured, dtype=np.float64)
        self._recent.append(self.measured)
        return self.measured

    def standing_still(self) -> bool:
        """The last :data:`STEADY_READINGS` readings are all within :data:`STEADY_TOLERANCE_RAD` of the latest."""
        recent = self._recent
        return len(recent) >= STEADY_READINGS and np.max(np.abs(np.stack(recent) - self.measured)) <= STEADY_TOLERANCE_RAD

    def rebase_if_not_tracking(self, limiter: CommandLimiter) -> bool:
        """Restart ``limiter`` from the measured position if the arm is far from the last command and
        stands still there; True if it did (the caller counts it and drops commands fixed before)."""
        last = limiter.last_command
        if last is None or np.max(np.abs(self.measured - last)) <= TRACKING_TOLERANCE_RAD:
            return False
        if not self.standing_still():
            return False  # not (yet) standing still: keep the reference, walk towards the arm
        limiter.reset()  # the next command is limited relative to the measured position
        return True
