"""Configuration dataclasses: what the policy observes, how it is built, how it is trained.

Everything here is plain Python (no torch), so the runtime, the nodes and the data tools
share one definition. Each dataclass validates itself in ``__post_init__`` and round-trips
through plain dicts (JSON/YAML) exactly.

Units: joint positions in rad, velocities in rad/s, goal in m (world frame), periods in s.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

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

NORMALIZATION_MODES = ("minmax", "meanstd")
ACTION_FRAMES = ("relative", "absolute")


class ConfigError(ValueError):
    """A configuration value is missing or invalid; the message names the field."""


def _require(condition: bool, message: str) -> None:
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
        _require(len(self.joint_names) > 0, "observation.joint_names must not be empty")
        _require(
            len(set(self.joint_names)) == len(self.joint_names),
            f"observation.joint_names has duplicates: {list(self.joint_names)}",
        )
        _require(len(self.fields) > 0, "observation.fields must not be empty")
        for name in self.fields:
            _require(
                name in OBSERVATION_FIELDS,
                f"observation.fields: unknown field {name!r}; expected one of {sorted(OBSERVATION_FIELDS)}",
            )
        _require(len(set(self.fields)) == len(self.fields), f"observation.fields has duplicates: {list(self.fields)}")

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
        _require(
            len(self.lower) == len(self.upper) == len(self.velocity),
            f"limits: lower/upper/velocity lengths differ: {len(self.lower)}/{len(self.upper)}/{len(self.velocity)}",
        )
        for i, (lo, hi, vel) in enumerate(zip(self.lower, self.upper, self.velocity)):
            _require(lo < hi, f"limits: joint {i} lower {lo} must be below upper {hi}")
            _require(vel > 0, f"limits: joint {i} velocity limit {vel} must be positive")


@dataclass(frozen=True)
class PolicyConfig:
    """The policy: what it sees, what it outputs, and how it is sampled.

    Attributes:
        observation: the observation spec (fields and joint order).
        action_joint_names: joints of the action chunk, in output order (A = their count).
        horizon: H, actions per chunk.
        control_period_s: time between consecutive actions of a chunk (s).
        euler_steps: N, fixed Euler steps of the sampler (dt = 1/N).
        guidance_scale: default CFG weight w (1 = conditional, 0 = unconditional).
        p_uncond: probability of replacing the guided condition by the null condition in training.
        guided_fields: observation fields replaced by the learned null condition (the CFG condition).
        normalization: 'minmax' (per-dim to [-1, 1]) or 'meanstd' (zero mean, unit std).
        action_frame: 'relative' (the network predicts targets minus the current measured
            joint positions, which the graph adds back: small, well-scaled numbers and exact
            holding) or 'absolute' (the network predicts the targets themselves). Both export
            to the same contract: the graph outputs absolute targets in rad.
        hidden_dim: width of the velocity MLP.
        num_layers: hidden layers of the velocity MLP.
        time_embed_dim: size of the sinusoidal time embedding.
        limits: joint limits of the action joints.
    """

    observation: ObservationSpec = field(default_factory=ObservationSpec)
    action_joint_names: tuple[str, ...] = IIWA_JOINT_NAMES
    horizon: int = 16
    control_period_s: float = 0.02
    euler_steps: int = 10
    guidance_scale: float = 1.0
    p_uncond: float = 0.1
    guided_fields: tuple[str, ...] = ("goal",)
    normalization: str = "minmax"
    action_frame: str = "relative"
    hidden_dim: int = 192
    num_layers: int = 3
    time_embed_dim: int = 32
    limits: JointLimits = field(default_factory=JointLimits)

    def __post_init__(self) -> None:
        if isinstance(self.observation, dict):
            object.__setattr__(self, "observation", ObservationSpec(**self.observation))
        if isinstance(self.limits, dict):
            object.__setattr__(self, "limits", JointLimits(**self.limits))
        object.__setattr__(self, "action_joint_names", tuple(self.action_joint_names))
        object.__setattr__(self, "guided_fields", tuple(self.guided_fields))
        _require(len(self.action_joint_names) > 0, "action_joint_names must not be empty")
        _require(
            len(set(self.action_joint_names)) == len(self.action_joint_names),
            f"action_joint_names has duplicates: {list(self.action_joint_names)}",
        )
        _require(self.horizon >= 1, f"horizon must be >= 1, got {self.horizon}")
        _require(self.control_period_s > 0, f"control_period_s must be > 0, got {self.control_period_s}")
        _require(self.euler_steps >= 1, f"euler_steps must be >= 1, got {self.euler_steps}")
        _require(0.0 <= self.p_uncond < 1.0, f"p_uncond must be in [0, 1), got {self.p_uncond}")
        for name in self.guided_fields:
            _require(
                name in self.observation.fields,
                f"guided_fields: {name!r} is not an observation field {list(self.observation.fields)}",
            )
        _require(
            self.normalization in NORMALIZATION_MODES,
            f"normalization must be one of {NORMALIZATION_MODES}, got {self.normalization!r}",
        )
        _require(
            self.action_frame in ACTION_FRAMES,
            f"action_frame must be one of {ACTION_FRAMES}, got {self.action_frame!r}",
        )
        if self.action_frame == "relative":
            missing = [n for n in self.action_joint_names if n not in self.observation.joint_names]
            _require(
                "joint_positions" in self.observation.fields and not missing,
                "action_frame 'relative' needs the positions of every action joint in the observation "
                f"(observation.fields has joint_positions: {'joint_positions' in self.observation.fields}, "
                f"action joints not observed: {missing}); use action_frame: absolute otherwise",
            )
        _require(self.hidden_dim >= 8, f"hidden_dim must be >= 8, got {self.hidden_dim}")
        _require(self.num_layers >= 1, f"num_layers must be >= 1, got {self.num_layers}")
        _require(
            self.time_embed_dim >= 2 and self.time_embed_dim % 2 == 0,
            f"time_embed_dim must be an even number >= 2, got {self.time_embed_dim}",
        )
        _require(
            len(self.limits.lower) == len(self.action_joint_names),
            f"limits cover {len(self.limits.lower)} joints but action_joint_names has {len(self.action_joint_names)}",
        )

    @property
    def action_dim(self) -> int:
        return len(self.action_joint_names)

    @property
    def obs_dim(self) -> int:
        return self.observation.obs_dim

    def action_reference_indices(self) -> list[int]:
        """Observation indices of the action joints' measured positions (relative frame), else []."""
        if self.action_frame != "relative":
            return []
        start = self.observation.field_slices()["joint_positions"].start
        return [start + self.observation.joint_names.index(name) for name in self.action_joint_names]

    def guided_mask(self) -> list[bool]:
        """Per observation dimension: True where the null condition replaces it (CFG)."""
        mask = [False] * self.obs_dim
        for name, sl in self.observation.field_slices().items():
            if name in self.guided_fields:
                for i in range(sl.start, sl.stop):
                    mask[i] = True
        return mask


@dataclass(frozen=True)
class DataConfig:
    """Where the training data comes from in a rosbag2 recording.

    Attributes:
        joint_states_topic: sensor_msgs/JointState topic (positions, velocities by name).
        goal_topic: geometry_msgs/PointStamped topic with the goal.
        command_topic: std_msgs/Float64MultiArray topic with per-tick position commands,
            in ``command_joint_names`` order.
        command_joint_names: joint order of the command arrays (defaults to the action joints).
        action_source: 'commands' (the recorded commands) or 'joint_states' (executed positions).
    """

    joint_states_topic: str = "/joint_states"
    goal_topic: str = "/goal"
    command_topic: str = "/commands"
    command_joint_names: tuple[str, ...] = ()
    action_source: str = "commands"

    def __post_init__(self) -> None:
        object.__setattr__(self, "command_joint_names", tuple(self.command_joint_names))
        _require(
            self.action_source in ("commands", "joint_states"),
            f"data.action_source must be 'commands' or 'joint_states', got {self.action_source!r}",
        )


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings.

    Attributes:
        objective: 'flow' (conditional flow matching) or 'regression' (MSE to the chunk; the
            deterministic baseline with the same network).
        steps: optimizer steps.
        batch_size: windows per step (per process under DDP).
        lr: AdamW learning rate (cosine-decayed to 10% over ``steps``).
        weight_decay: AdamW weight decay.
        ema_decay: decay of the exponential moving average of the weights.
        seed: seed for weights, batches, noise and condition dropout.
        position_noise_std: std (rad) of Gaussian noise added to the observed joint positions of
            each training sample while its target positions stay on the demonstration: the
            policy learns to steer back to the demonstrated path from slightly-off states (the
            covariate shift that makes behaviour cloning drift). 0 disables it.
        checkpoint_every: steps between checkpoints.
        log_every: steps between loss-log entries.
    """

    objective: str = "flow"
    steps: int = 20000
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    ema_decay: float = 0.999
    seed: int = 0
    position_noise_std: float = 0.0
    checkpoint_every: int = 2000
    log_every: int = 50

    def __post_init__(self) -> None:
        _require(self.objective in ("flow", "regression"), f"train.objective must be 'flow' or 'regression', got {self.objective!r}")
        _require(self.steps >= 1, f"train.steps must be >= 1, got {self.steps}")
        _require(self.batch_size >= 1, f"train.batch_size must be >= 1, got {self.batch_size}")
        _require(self.lr > 0, f"train.lr must be > 0, got {self.lr}")
        _require(0.0 <= self.ema_decay < 1.0, f"train.ema_decay must be in [0, 1), got {self.ema_decay}")
        _require(self.position_noise_std >= 0, f"train.position_noise_std must be >= 0, got {self.position_noise_std}")
        _require(self.checkpoint_every >= 1, f"train.checkpoint_every must be >= 1, got {self.checkpoint_every}")
        _require(self.log_every >= 1, f"train.log_every must be >= 1, got {self.log_every}")


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything ``flow-policy train`` needs: policy, data and training settings."""

    policy: PolicyConfig = field(default_factory=PolicyConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        for name, cls in (("policy", PolicyConfig), ("data", DataConfig), ("train", TrainConfig)):
            value = getattr(self, name)
            if isinstance(value, dict):
                object.__setattr__(self, name, _build(cls, value, name))

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExperimentConfig:
        return _build(cls, data, "config")

    @classmethod
    def from_yaml(cls, path: str | Path) -> ExperimentConfig:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at top level, got {type(data).__name__}")
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from exc


def _build(cls: type, data: Any, where: str) -> Any:
    """Build dataclass ``cls`` from a dict, naming unknown keys instead of ignoring them."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; expected some of {sorted(known)}")
    kwargs = {}
    for key, value in data.items():
        sub = {"observation": ObservationSpec, "limits": JointLimits}.get(key) if cls is PolicyConfig else None
        if sub is not None and isinstance(value, dict):
            value = _build(sub, value, f"{where}.{key}")
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def to_dict(obj: Any) -> Any:
    """Dataclass → plain JSON-able dict (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [to_dict(v) for v in obj]
    return obj


def policy_config_from_dict(data: dict[str, Any]) -> PolicyConfig:
    return _build(PolicyConfig, data, "policy")


def dumps(obj: Any) -> str:
    return json.dumps(to_dict(obj), sort_keys=True)
