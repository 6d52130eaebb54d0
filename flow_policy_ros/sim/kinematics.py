"""Kinematics of the simulated KUKA LBR iiwa: forward kinematics, inverse kinematics, collisions.

A :class:`IiwaKinematics` owns its own PyBullet DIRECT client with a copy of the robot that
is never stepped, only posed. Inverse kinematics therefore does not depend on the state of any
simulation (PyBullet's IK starts its iterations from the body's current joint state, so the
copy is reset to the rest pose before every solve): the same target gives the same joint
solution in every episode, which keeps expert demonstrations consistent and learnable.

Conventions: joint vectors are (7,) in ``config.IIWA_JOINT_NAMES`` order (rad); positions are
(3,) in the world frame (m); the robot base stands at the world origin, z up, and the end
effector point is the origin of link ``lbr_iiwa_link_7`` (the flange frame).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import pybullet
import pybullet_data
from pybullet_utils import bullet_client

from flow_policy_ros.contract import IIWA_JOINT_NAMES, IIWA_POSITION_LOWER, IIWA_POSITION_UPPER

URDF_PATH = "kuka_iiwa/model.urdf"
#: Link index of ``lbr_iiwa_link_7`` (the end-effector point is its frame origin).
EE_LINK = 6
NUM_JOINTS = len(IIWA_JOINT_NAMES)
#: Nominal start pose (rad): elbow bent, flange pointing straight down, EE at about
#: (0.40, 0.00, 0.45) m. Also the IK rest pose, so solutions stay on one branch.
HOME_Q: tuple[float, ...] = (0.0, 0.1937, 0.0, -2.0241, 0.0, 0.9237, 0.0)
#: Orientation of the flange used by IK: z axis pointing down (world -z).
EE_DOWN_QUATERNION: tuple[float, ...] = tuple(pybullet.getQuaternionFromEuler((0.0, -np.pi, 0.0)))
#: Link pairs checked for self-collision: (link_a, link_b) at least two links apart; adjacent
#: links touch by construction of the meshes. Link -1 is the base.
SELF_COLLISION_PAIRS: tuple[tuple[int, int], ...] = tuple(
    (a, b) for a, b in itertools.combinations(range(-1, NUM_JOINTS), 2) if b - a >= 2
)


class IkError(RuntimeError):
    """Inverse kinematics did not reach the target within tolerance; names target and error."""


def load_iiwa(client: bullet_client.BulletClient) -> int:
    """Load the iiwa URDF with a fixed base at the origin into ``client``; returns the body id."""
    client.setAdditionalSearchPath(pybullet_data.getDataPath())
    return client.loadURDF(URDF_PATH, basePosition=(0.0, 0.0, 0.0), useFixedBase=True)


def check_joint_order(client: bullet_client.BulletClient, body: int) -> None:
    """Raise if the URDF's joints are not the 7 revolute joints of ``IIWA_JOINT_NAMES`` in order."""
    names = tuple(client.getJointInfo(body, i)[1].decode() for i in range(client.getNumJoints(body)))
    if names != IIWA_JOINT_NAMES:
        raise RuntimeError(f"{URDF_PATH}: joints {names} differ from the expected {IIWA_JOINT_NAMES}")


def min_self_distance(client: bullet_client.BulletClient, body: int, margin: float = 0.0) -> float:
    """Smallest signed distance (m) between non-adjacent links; ``inf`` if all are farther than ``margin``."""
    best = math.inf
    for a, b in SELF_COLLISION_PAIRS:
        for point in client.getClosestPoints(body, body, margin, linkIndexA=a, linkIndexB=b):
            best = min(best, point[8])
    return best


class IiwaKinematics:
    """FK/IK and static collision queries on a private, never-stepped copy of the iiwa.

    Args:
        rest_q: (7,) rest pose (rad) for the IK null space; also the IK start point.
    """

    def __init__(self, rest_q: Sequence[float] = HOME_Q) -> None:
        self._client = bullet_client.BulletClient(connection_mode=pybullet.DIRECT)
        self._body = load_iiwa(self._client)
        check_joint_order(self._client, self._body)
        self.rest_q = np.asarray(rest_q, dtype=np.float64)
        self._lower = np.asarray(IIWA_POSITION_LOWER)
        self._upper = np.asarray(IIWA_POSITION_UPPER)

    def close(self) -> None:
        """Disconnect the private PyBullet client (idempotent)."""
        if self._client is not None:
            self._client.disconnect()
            self._client = None

    def __enter__(self) -> IiwaKinematics:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _pose(self, q: np.ndarray) -> None:
        for i, value in enumerate(q):
            self._client.resetJointState(self._body, i, float(value), 0.0)

    def forward(self, q: Sequence[float]) -> np.ndarray:
        """End-effector position (3,) in m for joint positions ``q`` (7,) in rad."""
        q = np.asarray(q, dtype=np.float64)
        if q.shape != (NUM_JOINTS,):
            raise ValueError(f"forward: q must have shape ({NUM_JOINTS},), got {q.shape}")
        self._pose(q)
        state = self._client.getLinkState(self._body, EE_LINK, computeForwardKinematics=True)
        return np.asarray(state[4], dtype=np.float64)

    def self_distance(self, q: Sequence[float], margin: float = 0.05) -> float:
        """Smallest distance (m) between non-adjacent links at ``q`` (negative = penetration; inf beyond ``margin``)."""
        self._pose(np.asarray(q, dtype=np.float64))
        return min_self_distance(self._client, self._body, margin)

    def inverse(self, position: Sequence[float], tolerance_m: float = 1e-3) -> np.ndarray:
        """Joint positions (7,) in rad that put the EE at ``position`` (3,) m, flange pointing down.

        Two phases of PyBullet's damped-least-squares IK: first with the null-space options
        (limits, ranges and rest pose ``rest_q``) starting from the rest pose, which picks the
        solution branch near the rest pose; then without them, starting from that answer, to
        remove the residual the null-space pull leaves (up to ~1 cm far from the base).
        Deterministic: the result depends only on the arguments.

        Raises:
            IkError: if the position error stays above ``tolerance_m`` or a joint limit is violated.
        """
        target = np.asarray(position, dtype=np.float64)
        if target.shape != (3,) or not np.all(np.isfinite(target)):
            raise ValueError(f"inverse: position must be 3 finite numbers (m), got {position!r}")
        q = self.rest_q.copy()
        for null_space in (True, True, False, False, False, False, False, False):
            self._pose(q)
            options = {}
            if null_space:
                options = {
                    "lowerLimits": self._lower.tolist(),
                    "upperLimits": self._upper.tolist(),
                    "jointRanges": (self._upper - self._lower).tolist(),
                    "restPoses": self.rest_q.tolist(),
                }
            solution = self._client.calculateInverseKinematics(
                self._body,
                EE_LINK,
                targetPosition=target.tolist(),
                targetOrientation=EE_DOWN_QUATERNION,
                maxNumIterations=200,
                residualThreshold=1e-6,
                **options,
            )
            q = np.asarray(solution[:NUM_JOINTS], dtype=np.float64)
        error = float(np.linalg.norm(self.forward(q) - target))
        if error > tolerance_m:
            raise IkError(f"inverse: EE target {target.round(4).tolist()} m missed by {error:.4f} m (> {tolerance_m} m)")
        outside = np.flatnonzero((q < self._lower) | (q > self._upper))
        if outside.size:
            raise IkError(f"inverse: EE target {target.round(4).tolist()} m needs joints {outside.tolist()} beyond limits")
        return q
