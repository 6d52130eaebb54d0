"""Scripted experts: IK waypoints joined by a smooth joint-space trajectory, then hold.

Plan. Waypoints are solved with :class:`~flow_policy_ros.sim.kinematics.IiwaKinematics`
(flange pointing down, one fixed IK rest pose = ``HOME_Q``, so every episode's solution lies on
the same branch). ``reach`` and ``reach_object`` (whose goal is the red cube's centre, which
the expert knows) go start -> goal; ``reach_around`` goes start -> two via points
beside the obstacle (on the side of the episode's coin) -> goal. The waypoints are joined by a
piecewise quintic in joint space with zero acceleration at every waypoint, zero velocity at
the ends and heuristic velocities at via points (mean of the neighbouring segment slopes, zero
where they change sign), so the motion is C2 and passes the via points without stopping.
Durations are scaled so that the fastest joint peaks at :data:`PEAK_VELOCITY_FRACTION` of the
velocity limit (1.5 rad/s), with at least :data:`MIN_MOTION_S`: 2-3.7 s of motion (reach
2.0-3.0 s, reach_around 2.1-3.6 s over 200 seeds), never over the limit. After the last
waypoint the expert holds the goal until the episode ends (6 s), so a policy learns to stop.

Measured expert success: 200/200 on ``reach`` and 200/200 on ``reach_around`` (routes 106
left / 94 right, each equal to the expert's coin), no command clipped, reproduced by
``flow-policy collect --task TASK --episodes 200 --out DIR --seed 0`` (prints the rate);
200/200 on ``reach_object`` (episode seeds 0-199, no command clipped, motion 2.0-2.5 s), and
50/50 with the camera recorded: ``flow-policy collect --task reach_object --episodes 50 --out DIR --seed 0``.

Commands follow the project convention: at tick k the expert commands the trajectory's value
at the next tick time t_{k+1}.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flow_policy_ros.contract import IIWA_VELOCITY_LIMIT
from flow_policy_ros.sim.kinematics import IiwaKinematics
from flow_policy_ros.sim.tasks import NOMINAL_START_EE, EpisodeSpec, route_frame

#: The fastest joint's peak speed as a fraction of its velocity limit.
PEAK_VELOCITY_FRACTION = 0.55
#: Shortest motion (s): keeps tiny reaches smooth instead of twitchy.
MIN_MOTION_S = 2.0
#: reach_around via points: lateral distance (m) of the EE path from the obstacle axis and
#: half the along-track spacing (m) of the two via points around the obstacle's centre.
VIA_LATERAL_M = 0.17
VIA_ALONG_M = 0.06


@dataclass(frozen=True)
class QuinticTrajectory:
    """Piecewise-quintic joint trajectory through waypoints, constant after the last one.

    Attributes:
        times_s: (M,) waypoint times (s), strictly increasing, first 0.
        positions: (M, 7) waypoint joint positions (rad).
        velocities: (M, 7) waypoint joint velocities (rad/s); accelerations are zero there.
    """

    times_s: np.ndarray
    positions: np.ndarray
    velocities: np.ndarray

    @property
    def duration_s(self) -> float:
        return float(self.times_s[-1])

    def sample(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """Position (7,) rad and velocity (7,) rad/s at time ``t`` (s); held after the end."""
        if t <= 0.0:
            return self.positions[0].copy(), np.zeros(self.positions.shape[1])
        if t >= self.times_s[-1]:
            return self.positions[-1].copy(), np.zeros(self.positions.shape[1])
        i = int(np.searchsorted(self.times_s, t, side="right")) - 1
        h = self.times_s[i + 1] - self.times_s[i]
        s = (t - self.times_s[i]) / h
        p0, p1 = self.positions[i], self.positions[i + 1]
        v0, v1 = self.velocities[i] * h, self.velocities[i + 1] * h
        # Quintic Hermite basis with zero end accelerations, on s in [0, 1].
        h00 = 1 - 10 * s**3 + 15 * s**4 - 6 * s**5
        h10 = s - 6 * s**3 + 8 * s**4 - 3 * s**5
        h01 = 10 * s**3 - 15 * s**4 + 6 * s**5
        h11 = -4 * s**3 + 7 * s**4 - 3 * s**5
        d00 = -30 * s**2 + 60 * s**3 - 30 * s**4
        d10 = 1 - 18 * s**2 + 32 * s**3 - 15 * s**4
        d11 = -12 * s**2 + 28 * s**3 - 15 * s**4
        position = h00 * p0 + h10 * v0 + h01 * p1 + h11 * v1
        velocity = (d00 * p0 + d10 * v0 - d00 * p1 + d11 * v1) / h
        return position, velocity

    def position(self, t: float) -> np.ndarray:
        return self.sample(t)[0]


def _via_velocities(times_s: np.ndarray, positions: np.ndarray) -> np.ndarray:
    slopes = np.diff(positions, axis=0) / np.diff(times_s)[:, None]
    velocities = np.zeros_like(positions)
    for i in range(1, len(positions) - 1):
        before, after = slopes[i - 1], slopes[i]
        velocities[i] = np.where(before * after > 0.0, (before + after) / 2.0, 0.0)
    return velocities


def fit_trajectory(
    waypoints: np.ndarray, velocity_limit: tuple[float, ...] = IIWA_VELOCITY_LIMIT
) -> QuinticTrajectory:
    """Time a smooth trajectory through ``waypoints`` (M, 7) rad within ``velocity_limit`` (7,) rad/s.

    Segment durations start proportional to the largest joint move of each segment; all are
    then scaled by one factor so the measured peak speed of the fastest joint is
    ``PEAK_VELOCITY_FRACTION`` of its limit (scaling time scales every velocity inversely, so
    one scaling is exact), with the whole motion lasting at least ``MIN_MOTION_S``.
    """
    waypoints = np.asarray(waypoints, dtype=np.float64)
    velocity_limit = np.asarray(velocity_limit, dtype=np.float64)
    if waypoints.ndim != 2 or len(waypoints) < 2:
        raise ValueError(f"fit_trajectory: need (M >= 2, J) waypoints, got shape {waypoints.shape}")
    moves = np.max(np.abs(np.diff(waypoints, axis=0)) / velocity_limit, axis=1)
    times = np.concatenate([[0.0], np.cumsum(np.maximum(moves, 1e-3))])
    trajectory = QuinticTrajectory(times, waypoints, _via_velocities(times, waypoints))
    probe = np.linspace(0.0, trajectory.duration_s, 400)
    peak = max(float(np.max(np.abs(trajectory.sample(t)[1]) / velocity_limit)) for t in probe)
    scale = max(peak / PEAK_VELOCITY_FRACTION, MIN_MOTION_S / trajectory.duration_s)
    times = times * scale
    return QuinticTrajectory(times, waypoints, _via_velocities(times, waypoints))


def expert_waypoints_m(spec: EpisodeSpec) -> np.ndarray:
    """EE waypoints (K, 3) m after the start: the goal, preceded by via points for reach_around."""
    if spec.task in ("reach", "reach_object"):  # reach_object: the goal is the object's centre, known to the expert
        return spec.goal[None, :].copy()
    if spec.expert_side not in ("left", "right"):
        raise ValueError(f"reach_around episode {spec.seed} has no expert side (got {spec.expert_side!r})")
    center, along, left = route_frame(spec.goal)
    lateral = VIA_LATERAL_M if spec.expert_side == "left" else -VIA_LATERAL_M
    z_mid = (spec.goal[2] + NOMINAL_START_EE[2]) / 2.0
    vias = [center + lateral * left + offset * along for offset in (-VIA_ALONG_M, VIA_ALONG_M)]
    return np.array([[v[0], v[1], z_mid] for v in vias] + [spec.goal.tolist()])


class ScriptedExpert:
    """Plans an episode's joint trajectory and issues its position commands.

    Args:
        kinematics: IK solver to use (created, and owned, when None).
    """

    def __init__(self, kinematics: IiwaKinematics | None = None) -> None:
        self._owns_kinematics = kinematics is None
        self.kinematics = kinematics or IiwaKinematics()
        self.trajectory: QuinticTrajectory | None = None

    def close(self) -> None:
        if self._owns_kinematics:
            self.kinematics.close()

    def plan(self, spec: EpisodeSpec) -> QuinticTrajectory:
        """Plan the motion of episode ``spec`` from its start pose; returns and keeps it."""
        joint_waypoints = [np.asarray(spec.start_q, dtype=np.float64)]
        joint_waypoints += [self.kinematics.inverse(p) for p in expert_waypoints_m(spec)]
        self.trajectory = fit_trajectory(np.stack(joint_waypoints))
        return self.trajectory

    def command(self, next_tick_time_s: float) -> np.ndarray:
        """Position command (7,) rad issued now: the trajectory at the next tick's time (s)."""
        if self.trajectory is None:
            raise RuntimeError("ScriptedExpert.command called before plan()")
        return self.trajectory.position(next_tick_time_s)
