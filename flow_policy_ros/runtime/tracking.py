"""Is the arm still tracking the last command? If not: hold, and restart only on an explicit event (pure).

The rule this module serves: **no command ever differs by more than one velocity step
(``velocity · dt``) from the last command the robot was given.** The
:class:`~flow_policy_ros.runtime.safety.CommandLimiter` is never reset while a controller lives:
not by a goal change, a hold, an error, a resume, nor by anything a joint-state stream says.

Why there is no automatic restart: a restart moves the limiter's reference from the last
command to the measured position, so the next command may lie anywhere within one step of what
the sensor says. A stuck, offset or lying reading that merely *looks* like a driver restart (far
from the last command, standing still) would then move the arm by the sensor's error in one tick:
0.37 rad, 12 velocity steps, in the case measured (issue 22). No rule over the readings alone can
tell a driver that really holds a new position from a sensor that lies about it, so the readings
never decide; an operator (or the program that reset the robot: ``sim_node`` after each episode
of ``flow-policy demo``) does, with the one explicit event:

* an arm further than :data:`TRACKING_TOLERANCE_RAD` (any joint) from the last command is a
  **hold** (:meth:`ArmTracking.not_tracking` gives the reason, naming the joint, the distance and
  how to resume); the robot keeps what it has (stream: no command; trajectory: one stop). When
  the reading comes back within the tolerance the controller runs on from the last command.
* **lifecycle re-activation** (deactivate, activate) builds a new controller that continues from
  the held command (:meth:`ArmTracking.continue_from`); at its first joint state, if the arm is
  not tracking that command, the limiter restarts from the measured position (counted in
  ``limiter_restarts``, said on ``/diagnostics``): the first command is then within one step of
  the measured arm. The in-process evaluation builds a new controller per episode (no last
  command: the first command starts from the arm).

Units: rad.
"""

from __future__ import annotations

import numpy as np

from flow_policy_ros.runtime.safety import CommandLimiter

#: An arm further than this (rad, any joint) from the last command is not tracking it (a driver
#: restart, a reset, a hand-guided move, or a sensor that lies): the controller holds. A position
#: controller under a 1.5 rad/s command stream lags by a few ticks (< 0.1 rad).
TRACKING_TOLERANCE_RAD = 0.25

#: How to resume from a hold "not tracking" (the node's lifecycle; the one explicit restart event).
RESUME_HINT = ("to resume from where the arm is, re-activate the node: "
               "ros2 lifecycle set /flow_policy_node deactivate, then activate")


class ArmTracking:
    """The measured arm position; says when the arm is not tracking the last command, and restarts
    the limiter from the arm at the first joint state after an explicit restart (re-activation).

    Args:
        joint_names: the action joints (model order), for the reasons.
    """

    def __init__(self, joint_names: tuple[str, ...] | list[str] = ()) -> None:
        self.joint_names = tuple(joint_names)
        self.measured: np.ndarray | None = None  # (A,) rad, the latest measured action-joint positions
        self._restart_pending = False  # re-activated: decide at the first joint state
        #: what the last restart decision was (for /diagnostics; "" before any)
        self.restart_note = ""

    def observe(self, measured: np.ndarray) -> np.ndarray:
        """Record a joint state's measured positions (A,) rad; returns them as float64."""
        self.measured = np.asarray(measured, dtype=np.float64)
        return self.measured

    def distance(self, last: np.ndarray) -> tuple[float, int]:
        """(largest |measured - last| over the joints (rad), that joint's index)."""
        gap = np.abs(self.measured - last)
        j = int(np.argmax(gap))
        return float(gap[j]), j

    def _joint(self, j: int) -> str:
        return self.joint_names[j] if j < len(self.joint_names) else f"#{j}"

    def not_tracking(self, last: np.ndarray | None) -> str:
        """Why the arm is not tracking ``last`` (the last command sent), '' if it is (or nothing was
        sent yet, or no joint state came yet)."""
        if last is None or self.measured is None:
            return ""
        gap, j = self.distance(last)
        if not gap > TRACKING_TOLERANCE_RAD:
            return "" if np.isfinite(gap) else f"measured position of joint {self._joint(j)} is not finite"
        return (f"the arm is {gap:.2f} rad from the last command (joint {self._joint(j)}): not tracking — a driver "
                f"restart, a hand-guided move or a lying sensor; {RESUME_HINT}")

    def continue_from(self, limiter: CommandLimiter, held: np.ndarray) -> None:
        """An explicit restart (re-activation): the robot holds ``held`` (the last command sent before);
        the first joint state decides whether the limiter continues from it or restarts from the arm
        (:meth:`restart_if_pending`)."""
        limiter.advance(held)
        self._restart_pending = True

    def restart_if_pending(self, limiter: CommandLimiter) -> bool:
        """At the first joint state after :meth:`continue_from`: restart ``limiter`` from the measured
        position if the arm is not tracking the held command; True if it did (the caller counts it)."""
        if not self._restart_pending or self.measured is None:
            return False
        self._restart_pending = False
        last = limiter.last_command
        gap, j = self.distance(last)
        if not gap > TRACKING_TOLERANCE_RAD:
            self.restart_note = f"continued from the held command (arm within {gap:.2f} rad of it)"
            return False
        limiter.reset()  # the next command is limited relative to the measured position
        self.restart_note = (f"restarted from the measured arm at activation: it was {gap:.2f} rad from the held "
                             f"command (joint {self._joint(j)})")
        return True
