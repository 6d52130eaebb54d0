"""The model I/O contract: what a policy observes and commands, shared by every layer.

Plain Python (no torch, no ROS): the policy config (training side) and the ONNX metadata
(runtime side) both embed :class:`ModelIO`, so the observation layout, action joints, chunk
shape, control period and joint limits are described and validated in exactly one place.

Units: joint positions in rad, velocities in rad/s, goal in m (world frame), periods in s.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from flow_policy_ros.errors import ConfigError

#: Joint names of the KUKA LBR iiwa in pybullet_data's ``kuka_iiwa/model.urdf``.
IIWA_JOINT_NAMES: tuple[str, ...] = tuple(f"lbr_iiwa_joint_{i}" for i in range(1, 8))
#: Position limits of that URDF (rad), joint order as above.
IIWA_POSITION_LOWER: tuple[float, ...] = (-2.96706, -2.0944, -2.96706, -2.0944, -2.96706, -2.0944, -3.05433)
IIWA_POSITION_UPPER: tuple[float, ...] = tuple(-x for x in IIWA_POSITION_LOWER)
#: Command velocity limit (rad/s). The URDF says 10 rad/s, far above the real arm's rating
#: (1.7-3.1 rad/s); we use a conservative 1.5 rad/s for every joint.
IIWA_VELOCITY_LIMIT: tuple[float, ...] = (1.5,) * 7

def require(condition: bool, message: str) -> None:
    """Raise :class:`ConfigError` with ``message`` unless ``condition``."""
    if not condition:
        raise ConfigError(message)


#: Kinds of observation feature. ``joint_positions``/``joint_velocities``: one value per observed
#: joint, from sensor_msgs/JointState matched by joint NAME (rad, rad/s); ``vector``: a fixed-size
#: float vector from one message type (e.g. a goal point, m); ``image``: a uint8 H x W x 3 RGB frame
#: from sensor_msgs/Image or CompressedImage (a graph input of its own, not part of the vector).
FEATURE_KINDS: tuple[str, ...] = ("joint_positions", "joint_velocities", "vector", "image")
#: Message types a vector feature can come from, with the number of values each carries (0: any).
VECTOR_MESSAGE_TYPES: dict[str, int] = {
    "geometry_msgs/msg/PointStamped": 3,
    "geometry_msgs/msg/PoseStamped": 7,
    "std_msgs/msg/Float64MultiArray": 0,
}
IMAGE_MESSAGE_TYPES: tuple[str, ...] = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
JOINT_STATE_TYPE = "sensor_msgs/msg/JointState"
#: Prefix of an image feature's name: ``image.<camera>`` (LeRobot: ``observation.images.<camera>``).
IMAGE_PREFIX = "image."


@dataclass(frozen=True)
class FeatureSpec:
    """One named observation feature: what it is, where it comes from, how old it may be.

    Attributes:
        name: key in the observation mapping: 'joint_positions', 'joint_velocities', a vector's
            name (e.g. 'goal'), or 'image.<camera>'.
        kind: one of :data:`FEATURE_KINDS`.
        topic: the ROS topic it comes from (relative, so remappable).
        msg_type: its ROS message type ('sensor_msgs/msg/JointState', a key of
            :data:`VECTOR_MESSAGE_TYPES`, or one of :data:`IMAGE_MESSAGE_TYPES`).
        max_age_s: the oldest it may be (s) relative to the decision's joint-state stamp; None =
            no limit (a latched task parameter such as a goal; joint states themselves are
            governed by the controller's stale timeout).
        size: vector: number of values (joint kinds: the number of observed joints, set by
            :class:`ObservationSpec`; image: 0).
        value_names: vector: one name per value (LeRobot ``names``), e.g. ('x', 'y', 'z').
        frame_id: vector: the frame the message must be in ('' = not checked).
        task: vector: the value names the task (e.g. a goal): a changed value starts a new task,
            and chunks planned for the old value are dropped.
        image_shape: image: (height, width, 3) of the frames the model takes.
        units: one word for documentation and plots ('rad', 'rad/s', 'm', 'uint8').
    """

    name: str
    kind: str
    topic: str
    msg_type: str
    max_age_s: float | None = None
    size: int = 0
    value_names: tuple[str, ...] = ()
    frame_id: str = ""
    task: bool = False
    image_shape: tuple[int, int, int] | None = None
    units: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "value_names", tuple(self.value_names))
        if self.image_shape is not None:
            object.__setattr__(self, "image_shape", tuple(int(v) for v in self.image_shape))
        where = f"observation feature {self.name!r}"
        require(bool(self.name), "observation feature without a name")
        require(self.kind in FEATURE_KINDS, f"{where}: unknown kind {self.kind!r}; expected one of {list(FEATURE_KINDS)}")
        require(bool(self.topic), f"{where}: topic must not be empty")
        require(self.max_age_s is None or self.max_age_s > 0, f"{where}: max_age_s must be > 0 or null, got {self.max_age_s}")
        if self.kind in ("joint_positions", "joint_velocities"):
            require(self.name == self.kind, f"{where}: a {self.kind} feature must be named {self.kind!r}")
            require(self.msg_type == JOINT_STATE_TYPE, f"{where}: msg_type must be {JOINT_STATE_TYPE}, got {self.msg_type!r}")
        elif self.kind == "vector":
            require(self.msg_type in VECTOR_MESSAGE_TYPES,
                    f"{where}: msg_type {self.msg_type!r} is not a vector message type {sorted(VECTOR_MESSAGE_TYPES)}")
            fixed = VECTOR_MESSAGE_TYPES[self.msg_type]
            require(self.size > 0, f"{where}: a vector needs size > 0")
            require(fixed in (0, self.size), f"{where}: {self.msg_type} carries {fixed} values, size says {self.size}")
            require(not self.value_names or len(self.value_names) == self.size,
                    f"{where}: {len(self.value_names)} value_names for size {self.size}")
            require(not self.name.startswith(IMAGE_PREFIX), f"{where}: names starting with {IMAGE_PREFIX!r} are images")
        else:
            require(self.name.startswith(IMAGE_PREFIX) and len(self.name) > len(IMAGE_PREFIX),
                    f"{where}: an image feature is named '{IMAGE_PREFIX}<camera>'")
            require(self.msg_type in IMAGE_MESSAGE_TYPES, f"{where}: msg_type must be one of {list(IMAGE_MESSAGE_TYPES)}")
            shape = self.image_shape
            require(shape is not None and len(shape) == 3 and shape[2] == 3 and shape[0] > 0 and shape[1] > 0,
                    f"{where}: image_shape must be [height, width, 3], got {shape}")
            require(self.max_age_s is not None, f"{where}: an image needs max_age_s (a frame is only valid for a while)")

    @property
    def is_image(self) -> bool:
        return self.kind == "image"

    @property
    def camera(self) -> str:
        """The camera name of an image feature ('' otherwise)."""
        return self.name[len(IMAGE_PREFIX):] if self.is_image else ""

    @property
    def lerobot_key(self) -> str:
        """LeRobot's key: low-dimensional features all go into 'observation.state'."""
        return f"observation.images.{self.camera}" if self.is_image else "observation.state"

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"name": self.name, "kind": self.kind, "topic": self.topic, "msg_type": self.msg_type,
                                  "max_age_s": self.max_age_s}
        if self.kind == "vector":
            out.update(size=self.size, value_names=list(self.value_names), frame_id=self.frame_id, task=self.task)
        if self.is_image:
            out["image_shape"] = list(self.image_shape or ())
        if self.units:
            out["units"] = self.units
        return out


def joint_feature(kind: str, topic: str = "joint_states") -> FeatureSpec:
    """The spec of the joint positions or velocities (one value per observed joint)."""
    return FeatureSpec(kind, kind, topic, JOINT_STATE_TYPE, units="rad" if kind == "joint_positions" else "rad/s")


def goal_feature(topic: str = "goal", frame_id: str = "world") -> FeatureSpec:
    """The goal point (m) in ``frame_id``, latched: a changed goal is a new task."""
    return FeatureSpec("goal", "vector", topic, "geometry_msgs/msg/PointStamped", None, 3, ("x", "y", "z"), frame_id,
                       task=True, units="m")


def image_feature(camera: str, height: int, width: int, max_age_s: float = 0.1, compressed: bool = False) -> FeatureSpec:
    """An RGB camera's frames on ``camera/<camera>/image_raw`` (or ``.../compressed``)."""
    topic = f"camera/{camera}/image_raw" + ("/compressed" if compressed else "")
    msg_type = IMAGE_MESSAGE_TYPES[1] if compressed else IMAGE_MESSAGE_TYPES[0]
    return FeatureSpec(IMAGE_PREFIX + camera, "image", topic, msg_type, max_age_s, image_shape=(height, width, 3), units="uint8")


#: The specs used for a field named in ``ObservationSpec.fields`` without a spec of its own.
DEFAULT_FEATURES: dict[str, FeatureSpec] = {
    "joint_positions": joint_feature("joint_positions"),
    "joint_velocities": joint_feature("joint_velocities"),
    "goal": goal_feature(),
}


def _as_feature(item: object) -> FeatureSpec:
    if isinstance(item, FeatureSpec):
        return item
    if isinstance(item, dict):
        known = set(FeatureSpec.__dataclass_fields__)
        unknown = sorted(set(item) - known)
        require(not unknown, f"observation.features: unknown key(s) {unknown} in {item.get('name', item)!r}; "
                             f"expected {sorted(known)}")
        try:
            return FeatureSpec(**item)
        except TypeError as exc:
            raise ConfigError(f"observation.features: {exc}") from exc
    raise ConfigError(f"observation.features: expected a mapping per feature, got {item!r}")


@dataclass(frozen=True)
class ObservationSpec:
    """The named features a policy observes: THE observation spec of every layer.

    An observation is a mapping feature name -> array. The low-dimensional features (joint
    kinds and vectors) form the graph's ``observation`` vector, concatenated in ``fields``
    order; each image feature is a graph input of its own (``image_<camera>``).

    Attributes:
        joint_names: observed joints, in the order their values appear in a joint feature.
        fields: feature names in vector order (images may stand anywhere: they take no space).
        features: one :class:`FeatureSpec` per field, in ``fields`` order. Given in a config or
            metadata as a list of mappings, it may name only the features that differ from
            :data:`DEFAULT_FEATURES` (or are new); the others are filled in.
    """

    joint_names: tuple[str, ...] = IIWA_JOINT_NAMES
    fields: tuple[str, ...] = ("joint_positions", "joint_velocities", "goal")
    features: tuple[FeatureSpec, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "joint_names", tuple(self.joint_names))
        object.__setattr__(self, "fields", tuple(self.fields))
        require(len(self.joint_names) > 0, "observation.joint_names must not be empty")
        require(
            len(set(self.joint_names)) == len(self.joint_names),
            f"observation.joint_names has duplicates: {list(self.joint_names)}",
        )
        require(len(self.fields) > 0, "observation.fields must not be empty")
        require(len(set(self.fields)) == len(self.fields), f"observation.fields has duplicates: {list(self.fields)}")
        given = {}
        for item in self.features:
            spec = _as_feature(item)
            require(spec.name in self.fields, f"observation.features: {spec.name!r} is not in observation.fields {list(self.fields)}")
            require(spec.name not in given, f"observation.features: {spec.name!r} given twice")
            given[spec.name] = spec
        specs = []
        for name in self.fields:
            spec = given.get(name, DEFAULT_FEATURES.get(name))
            require(spec is not None, f"observation.fields: unknown field {name!r}; expected one of "
                                      f"{sorted(DEFAULT_FEATURES)} or a spec in observation.features")
            if spec.kind in ("joint_positions", "joint_velocities"):
                spec = replace(spec, size=len(self.joint_names), value_names=self.joint_names)
            specs.append(spec)
        object.__setattr__(self, "features", tuple(specs))
        require(any(not s.is_image for s in specs), "observation: at least one low-dimensional feature is needed")

    def feature(self, name: str) -> FeatureSpec:
        """The spec of feature ``name`` (ConfigError naming the known ones otherwise)."""
        for spec in self.features:
            if spec.name == name:
                return spec
        raise ConfigError(f"observation has no feature {name!r}; it has {list(self.fields)}")

    @property
    def low_dim_features(self) -> tuple[FeatureSpec, ...]:
        """Joint and vector features, in vector order."""
        return tuple(s for s in self.features if not s.is_image)

    @property
    def image_features(self) -> tuple[FeatureSpec, ...]:
        return tuple(s for s in self.features if s.is_image)

    @property
    def vector_features(self) -> tuple[FeatureSpec, ...]:
        return tuple(s for s in self.features if s.kind == "vector")

    @property
    def joint_kinds(self) -> tuple[str, ...]:
        """Which joint features the model reads ('joint_positions', 'joint_velocities')."""
        return tuple(s.kind for s in self.features if s.kind in ("joint_positions", "joint_velocities"))

    def field_size(self, name: str) -> int:
        """Values feature ``name`` takes in the observation vector (0 for an image)."""
        spec = self.feature(name)
        return 0 if spec.is_image else spec.size

    def field_slices(self) -> dict[str, slice]:
        """Slice of each low-dimensional feature in the observation vector."""
        slices, start = {}, 0
        for spec in self.low_dim_features:
            slices[spec.name] = slice(start, start + spec.size)
            start += spec.size
        return slices

    def state_names(self) -> tuple[str, ...]:
        """One name per value of the observation vector (LeRobot ``observation.state`` names):
        '<joint>.pos', '<joint>.vel', '<vector>.<value name or index>'."""
        names: list[str] = []
        for spec in self.low_dim_features:
            if spec.kind == "joint_positions":
                names += [f"{j}.pos" for j in self.joint_names]
            elif spec.kind == "joint_velocities":
                names += [f"{j}.vel" for j in self.joint_names]
            else:
                names += [f"{spec.name}.{v}" for v in (spec.value_names or range(spec.size))]
        return tuple(names)

    @property
    def obs_dim(self) -> int:
        return sum(spec.size for spec in self.low_dim_features)

    def to_json(self) -> dict[str, object]:
        """The metadata/config form: joint names, field order, and every feature's spec."""
        return {"joint_names": list(self.joint_names), "fields": list(self.fields),
                "features": [spec.to_json() for spec in self.features]}


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
