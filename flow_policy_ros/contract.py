"""The model I/O contract: what a policy observes and commands, shared by every layer.

Plain Python (no torch, no ROS): the policy config (training side) and the ONNX metadata
(runtime side) both embed :class:`ModelIO`, so the observation layout, action joints, chunk
shape, control period and joint limits are described and validated in exactly one place.

Units: joint positions in rad, velocities in rad/s, goal in m (world frame), periods in s.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flow_policy_ros.errors import ConfigError

#: Joint names of the KUKA LBR iiwa in pybullet_data's ``kuka_iiwa/model.urdf``.
IIWA_JOINT_NAMES: tuple[str, ...] = tuple(f"lbr_iiwa_joint_{i}" for i in range(1, 8))
#: Position limits of that URDF (rad), joint order as above.
IIWA_POSITION_LOWER: tuple[float, ...] = (-2.96706, -2.0944, -2.96706, -2.0944, -2.96706, -2.0944, -3.05433)
IIWA_POSITION_UPPER: tuple[float, ...] = tuple(-x for x in IIWA_POSITION_LOWER)
#: Command velocity limit (rad/s). The URDF says 10 rad/s, far above the real arm's rating
#: (1.7-3.1 rad/s); we use a conservative 1.5 rad/s for every joint.
IIWA_VELOCITY_LIMIT: tuple[float, ...] = (1.5,) * 7

#: Observation fields the package knows how to build, with their size per joint / total.
#: ``joint_positions`` and ``joint_velocities`` have one entry per observed joint (rad, rad/s);
#: ``goal`` is a 3-D point (m, world frame) from a geometry_msgs/PointStamped.
OBSERVATION_FIELDS: dict[str, str] = {
    "joint_positions": "per_joint",
    "joint_velocities": "per_joint",
    "goal": "xyz",
}



def require(condition: bool, message: str) -> None:
    """Raise :class:`ConfigError` with ``message`` unless ``condition``."""
    if not condition:
        raise ConfigError(message)


@dataclass(frozen=True)
class ObservationSpec:
    """Which signals form the observation vector, in which order.

    Attributes:
        joint_names: observed joints, in the order they appear in the vector.
        fields: observation fields in vector order, each a key of ``OBSERVATION_FIELDS``.
    """

    joint_names: tuple[str, ...] = IIWA_JOINT_NAMES
    fields: tuple[str, ...] = ("joint_positions", "joint_velocities", "goal")

    def __post_init__(self) -> None:
        object.__setattr__(self, "joint_names", tuple(self.joint_names))
        object.__setattr__(self, "fields", tuple(self.fields))
        require(len(self.joint_names) > 0, "observation.joint_names must not be empty")
        require(
            len(set(self.joint_names)) == len(self.joint_names),
            f"observation.joint_names has duplicates: {list(self.joint_names)}",
        )
        require(len(self.fields) > 0, "observation.fields must not be empty")
        for name in self.fields:
            require(
                name in OBSERVATION_FIELDS,
                f"observation.fields: unknown field {name!r}; expected one of {sorted(OBSERVATION_FIELDS)}",
            )
        require(len(set(self.fields)) == len(self.fields), f"observation.fields has duplicates: {list(self.fields)}")

    def field_size(self, name: str) -> int:
        return len(self.joint_names) if OBSERVATION_FIELDS[name] == "per_joint" else 3

    def field_slices(self) -> dict[str, slice]:
        """Slice of each field in the observation vector."""
        slices, start = {}, 0
        for name in self.fields:
            size = self.field_size(name)
            slices[name] = slice(start, start + size)
            start += size
        return slices

    @property
    def obs_dim(self) -> int:
        return sum(self.field_size(name) for name in self.fields)


@dataclass(frozen=True)
class JointLimits:
    """Per-joint position limits (rad) and command velocity limit (rad/s), action joint order."""

    lower: tuple[float, ...] = IIWA_POSITION_LOWER
    upper: tuple[float, ...] = IIWA_POSITION_UPPER
    velocity: tuple[float, ...] = IIWA_VELOCITY_LIMIT

    def __post_init__(self) -> None:
        for name in ("lower", "upper", "velocity"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        require(
            len(self.lower) == len(self.upper) == len(self.velocity),
            f"limits: lower/upper/velocity lengths differ: {len(self.lower)}/{len(self.upper)}/{len(self.velocity)}",
        )
        for i, (lo, hi, vel) in enumerate(zip(self.lower, self.upper, self.velocity)):
            require(lo < hi, f"limits: joint {i} lower {lo} must be below upper {hi}")
            require(vel > 0, f"limits: joint {i} velocity limit {vel} must be positive")



@dataclass(frozen=True)
class ModelIO:
    """What a policy reads and writes: the part of its description every layer needs.

    Attributes:
        observation: the observation spec (fields and joint order); obs_dim follows from it.
        action_joint_names: joints of the action chunk, in output order (A = their count).
        horizon: H, actions per chunk.
        control_period_s: time between consecutive actions of a chunk (s).
        limits: joint limits of the action joints (rad, rad/s).
    """

    observation: ObservationSpec = field(default_factory=ObservationSpec)
    action_joint_names: tuple[str, ...] = IIWA_JOINT_NAMES
    horizon: int = 16
    control_period_s: float = 0.02
    limits: JointLimits = field(default_factory=JointLimits)

    def __post_init__(self) -> None:
        if isinstance(self.observation, dict):
            object.__setattr__(self, "observation", ObservationSpec(**self.observation))
        if isinstance(self.limits, dict):
            object.__setattr__(self, "limits", JointLimits(**self.limits))
        object.__setattr__(self, "action_joint_names", tuple(self.action_joint_names))
        check_model_io(self.observation, self.action_joint_names, self.horizon, self.control_period_s, self.limits)

    @property
    def action_dim(self) -> int:
        return len(self.action_joint_names)

    @property
    def obs_dim(self) -> int:
        return self.observation.obs_dim


def check_model_io(observation: ObservationSpec, action_joint_names: tuple[str, ...], horizon: int,
                   control_period_s: float, limits: JointLimits) -> None:
    """The one validation of a model's I/O description (ConfigError naming the field)."""
    require(len(action_joint_names) > 0, "action_joint_names must not be empty")
    require(
        len(set(action_joint_names)) == len(action_joint_names),
        f"action_joint_names has duplicates: {list(action_joint_names)}",
    )
    require(int(horizon) == horizon and horizon >= 1, f"horizon must be >= 1, got {horizon}")
    require(control_period_s > 0, f"control_period_s must be > 0, got {control_period_s}")
    require(
        len(limits.lower) == len(action_joint_names),
        f"limits cover {len(limits.lower)} joints but action_joint_names has {len(action_joint_names)}",
    )
