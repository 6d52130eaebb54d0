"""Configuration dataclasses: what the policy observes, how it is built, how it is trained.

Everything here is plain Python (no torch). The model's I/O description (observation, action
joints, H, dt, limits) is :class:`flow_policy_ros.contract.ModelIO`, shared with the ONNX metadata.
Each dataclass validates itself in ``__post_init__`` and round-trips through plain dicts
(JSON/YAML) exactly.

Units: joint positions in rad, velocities in rad/s, goal in m (world frame), periods in s.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from flow_policy_ros.contract import (  # noqa: F401 - re-exported: the config speaks the contract's types
    DEFAULT_FEATURES,
    IIWA_JOINT_NAMES,
    IIWA_POSITION_LOWER,
    IIWA_POSITION_UPPER,
    IIWA_VELOCITY_LIMIT,
    FeatureSpec,
    JointLimits,
    ModelIO,
    ObservationSpec,
    check_model_io,
    require,
)
from flow_policy_ros.data.config import DataConfig
from flow_policy_ros.errors import ConfigError
from flow_policy_ros.policy.robot import require_given_limits

NORMALIZATION_MODES = ("minmax", "meanstd")
CHUNK_BASES = ("none", "dct", "bspline")  # see flow_policy_ros.policy.basis
ACTION_FRAMES = ("relative", "absolute")


@dataclass(frozen=True)
class PolicyConfig:
    """The policy: what it sees, what it outputs, and how it is sampled.

    Attributes:
        observation: the observation spec (fields and joint order).
        action_joint_names: joints of the action chunk, in output order (A = their count).
        horizon: H, actions per chunk.
        control_period_s: time between consecutive actions of a chunk (s).
        solver_steps: N, fixed steps of the sampler's ODE solver (Euler by default: dt = 1/N); the
            key was ``euler_steps`` before, which still reads.
        guidance_scale: default CFG weight w (1 = conditional, 0 = unconditional).
        p_uncond: probability of replacing the guided condition by the null condition in training.
        guided_fields: observation fields replaced by the learned null condition (the CFG condition).
            A camera model names its image features here (e.g. ``image.front``): the unconditional
            branch then sees a learned null vector in place of that camera's embedding (and of any
            guided low-dimensional field, e.g. a task vector) and still sees the proprioception
            (joint positions): see ``policy.model``.
        normalization: 'minmax' (per-dim to [-1, 1]) or 'meanstd' (zero mean, unit std).
        action_frame: 'relative' (the network predicts targets minus the current measured
            joint positions, which the graph adds back: small, well-scaled numbers and exact
            holding) or 'absolute' (the network predicts the targets themselves). Both export
            to the same contract: the graph outputs absolute targets in rad.
        hidden_dim: width of the velocity MLP.
        num_layers: hidden layers of the velocity MLP.
        time_embed_dim: size of the sinusoidal time embedding.
        chunk_basis: 'none' (the flow runs over the H raw actions of each joint) or a smooth basis
            of ``flow_policy_ros.policy.basis`` ('dct', 'bspline'): the flow runs over ``basis_size``
            coefficients per joint and the graph decodes them into H actions (smooth by construction).
        basis_size: K, coefficients per joint (2..H) for a smooth basis; ignored (0) for 'none'.
        noise_scale: sampling temperature tau in [0, 1]: the graph starts the flow at tau * noise
            (1 = the trained N(0, I); below 1 trades sample diversity for chunk-to-chunk consistency).
        limits: joint limits of the action joints.
        rtc_max_delay: d_max of real-time chunking (training-time action conditioning): the
            model learns to continue a committed prefix of up to this many actions, given
            clean; 0 = a plain model without the prefix inputs. Must be < horizon.
        rtc_probability: fraction of training samples given a prefix (d drawn from
            [0, rtc_max_delay]); the others train plain sampling (d = 0).
        rtc_delay_weights: distribution of d: 'uniform' or 'exponential' (short delays, the
            common case, weighted more: P(d) ~ exp(-3 d / d_max)).
        image_channels: camera models: output channels of the encoder's three convolutions
            (``policy.image_encoder``); ignored without image features.
        image_keypoints: spatial-softmax keypoints K of each camera's encoder (2K coordinates).
        image_embed_dim: size of each camera's embedding (concatenated to the normalized
            low-dimensional observation before the condition encoder).
        image_shift_pad: random-shift augmentation in training (pixels of replicate padding
            before a random crop back to the frame size, as DrQ); 0 = none. Never at sampling.
    """

    observation: ObservationSpec = field(default_factory=ObservationSpec)
    action_joint_names: tuple[str, ...] = IIWA_JOINT_NAMES
    horizon: int = 16
    control_period_s: float = 0.02
    solver_steps: int = 10
    guidance_scale: float = 1.0
    p_uncond: float = 0.1
    guided_fields: tuple[str, ...] = ("goal",)
    normalization: str = "minmax"
    action_frame: str = "relative"
    hidden_dim: int = 192
    num_layers: int = 3
    time_embed_dim: int = 32
    chunk_basis: str = "none"
    basis_size: int = 0
    noise_scale: float = 1.0
    limits: JointLimits = field(default_factory=JointLimits)
    rtc_max_delay: int = 0
    rtc_probability: float = 0.5
    rtc_delay_weights: str = "exponential"
    image_channels: tuple[int, int, int] = (8, 16, 32)
    image_keypoints: int = 16
    image_embed_dim: int = 64
    image_shift_pad: int = 4

    def __post_init__(self) -> None:
        if isinstance(self.observation, dict):
            object.__setattr__(self, "observation", ObservationSpec(**self.observation))
        if isinstance(self.limits, dict):
            object.__setattr__(self, "limits", JointLimits(**self.limits))
        object.__setattr__(self, "action_joint_names", tuple(self.action_joint_names))
        object.__setattr__(self, "guided_fields", tuple(self.guided_fields))
        object.__setattr__(self, "image_channels", tuple(int(c) for c in self.image_channels))
        require(len(self.image_channels) == 3 and min(self.image_channels) >= 1,
                f"image_channels must be 3 positive ints, got {list(self.image_channels)}")
        require(self.image_keypoints >= 1, f"image_keypoints must be >= 1, got {self.image_keypoints}")
        require(self.image_embed_dim >= 1, f"image_embed_dim must be >= 1, got {self.image_embed_dim}")
        require(self.image_shift_pad >= 0, f"image_shift_pad must be >= 0, got {self.image_shift_pad}")
        check_model_io(self.observation, self.action_joint_names, self.horizon, self.control_period_s, self.limits)
        require(0 <= self.rtc_max_delay < self.horizon,
                f"rtc_max_delay must be in [0, horizon={self.horizon}), got {self.rtc_max_delay}")
        require(0.0 <= self.rtc_probability <= 1.0, f"rtc_probability must be in [0, 1], got {self.rtc_probability}")
        require(self.rtc_delay_weights in ("uniform", "exponential"),
                f"rtc_delay_weights must be 'uniform' or 'exponential', got {self.rtc_delay_weights!r}")
        require(self.chunk_basis in CHUNK_BASES, f"chunk_basis must be one of {CHUNK_BASES}, got {self.chunk_basis!r}")
        if self.chunk_basis != "none":
            require(2 <= self.basis_size <= self.horizon,
                    f"basis_size must be in [2, horizon={self.horizon}] for chunk_basis {self.chunk_basis!r}, got {self.basis_size}")
        require(0.0 <= self.noise_scale <= 1.0, f"noise_scale must be in [0, 1], got {self.noise_scale}")
        require(self.solver_steps >= 1, f"solver_steps must be >= 1, got {self.solver_steps}")
        require(0.0 <= self.p_uncond < 1.0, f"p_uncond must be in [0, 1), got {self.p_uncond}")
        for name in self.guided_fields:
            require(
                name in self.observation.fields,
                f"guided_fields: {name!r} is not an observation field {list(self.observation.fields)}",
            )
        require(
            self.normalization in NORMALIZATION_MODES,
            f"normalization must be one of {NORMALIZATION_MODES}, got {self.normalization!r}",
        )
        require(
            self.action_frame in ACTION_FRAMES,
            f"action_frame must be one of {ACTION_FRAMES}, got {self.action_frame!r}",
        )
        if self.action_frame == "relative":
            missing = [n for n in self.action_joint_names if n not in self.observation.joint_names]
            require(
                "joint_positions" in self.observation.fields and not missing,
                "action_frame 'relative' needs the positions of every action joint in the observation "
                f"(observation.fields has joint_positions: {'joint_positions' in self.observation.fields}, "
                f"action joints not observed: {missing}); use action_frame: absolute otherwise",
            )
        require(self.hidden_dim >= 8, f"hidden_dim must be >= 8, got {self.hidden_dim}")
        require(self.num_layers >= 1, f"num_layers must be >= 1, got {self.num_layers}")
        require(
            self.time_embed_dim >= 2 and self.time_embed_dim % 2 == 0,
            f"time_embed_dim must be an even number >= 2, got {self.time_embed_dim}",
        )

    @property
    def flow_state_rows(self) -> int:
        """Rows of the flow state per joint: K for a smooth chunk basis, else H."""
        return self.horizon if self.chunk_basis == "none" else self.basis_size

    @property
    def io(self) -> ModelIO:
        """The model I/O contract this policy is trained for (also written into the ONNX metadata)."""
        return ModelIO(self.observation, self.action_joint_names, self.horizon, self.control_period_s, self.limits)

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

    @property
    def cameras(self) -> tuple[str, ...]:
        """Camera names of the image features, in observation order (one encoder each)."""
        return tuple(f.camera for f in self.observation.image_features)

    @property
    def condition_dim(self) -> int:
        """Size of the condition encoder's input: the normalized observation vector plus one
        embedding per camera."""
        return self.obs_dim + len(self.cameras) * self.image_embed_dim

    def guided_mask(self) -> list[bool]:
        """Per condition-input dimension (``condition_dim``: the observation vector, then each
        camera's embedding): True where the null condition replaces it (CFG)."""
        mask = [False] * self.obs_dim
        for name, sl in self.observation.field_slices().items():
            if name in self.guided_fields:
                for i in range(sl.start, sl.stop):
                    mask[i] = True
        for feature in self.observation.image_features:
            mask += [feature.name in self.guided_fields] * self.image_embed_dim
        return mask


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
        position_noise_blend_steps: how the perturbed sample's targets return to the demonstration.
            0: at once (every target of the chunk stays on the demonstration, so the chunk's first
            action jumps back by the perturbation: a step at every chunk seam). R > 0: smoothly over
            the first R actions (target h = demonstration + e * (1 - s(h / R)), s the C2 quintic
            smoothstep), so the chunk continues from where the arm is.
        rtc_prefix_noise_std: real-time chunking models: std (rad) of a per-joint offset e added to
            the committed prefix of each training sample with d > 0 (with the velocity term below):
            at run time the prefix is the controller's earlier commands, which differ from what
            the demonstration would do from the observed state, so the network must learn to
            continue THE PREFIX, not to re-derive it from the observation (trained only on
            demonstrated prefixes it ignores them, and the seam jumps). 0 disables it.
        rtc_prefix_velocity_noise_std: std (rad/s) of a per-joint velocity v of the same
            perturbation: delta(h) = e + v (h - d + 1) dt on the prefix rows h < d.
        rtc_prefix_blend_steps: R: after the prefix the perturbation returns to the demonstration
            smoothly, delta(h) (1 - s((h - d + 1) / R)) for h >= d (s the C2 quintic smoothstep,
            so the chunk is C2 at the prefix boundary). >= 1.
        checkpoint_every: steps between checkpoints.
        log_every: steps between loss-log entries (console, ``train_log.csv``, loss plot).
        val_fraction: fraction of the EPISODES held out for validation (never single windows:
            neighbouring windows of one episode are near copies, so a window split would
            measure memorisation). Chosen with ``seed``; at least one episode when > 0. The
            normalization statistics are fitted on the training episodes only. 0 disables it.
        val_every: steps between validation losses (flow-matching loss of the EMA weights, the
            ones exported, on every held-out window with a fixed noise stream, so successive
            values are comparable).
        image_aux_feature: camera models: a vector feature recorded in the episodes (e.g. ``goal``:
            the object position the scripted expert knows, on ``data.goal_topic``) that a linear
            head must predict from the camera embedding during training (``policy/aux_target.py``).
            Privileged supervision for localisation: training only; the model never reads it and
            the export has no such input. '' disables it.
        image_aux_weight: weight of that head's loss (mean squared error of the standardized
            feature) beside the flow-matching loss; > 0 exactly when ``image_aux_feature`` is set.
        image_lag_frames: camera models: each training sample sees, instead of the frame in force
            at its tick, one up to this many camera frames older (uniform, never before its
            episode's first frame). A camera's frame arrives after its exposure (transfer and
            decoding; sim_node needs ~10 ms to render one), so a decision may pair the joint
            state with the frame before the one of its tick; this teaches the policy not to rely
            on the image being that fresh (docs/camera.md). 0 disables it.
    """

    objective: str = "flow"
    steps: int = 20000
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    ema_decay: float = 0.999
    seed: int = 0
    position_noise_std: float = 0.0
    position_noise_blend_steps: int = 0
    rtc_prefix_noise_std: float = 0.0
    rtc_prefix_velocity_noise_std: float = 0.0
    rtc_prefix_blend_steps: int = 8
    checkpoint_every: int = 2000
    log_every: int = 50
    val_fraction: float = 0.05
    val_every: int = 500
    image_aux_feature: str = ""
    image_aux_weight: float = 0.0
    image_lag_frames: int = 0

    def __post_init__(self) -> None:
        require(self.objective in ("flow", "regression"), f"train.objective must be 'flow' or 'regression', got {self.objective!r}")
        require(self.steps >= 1, f"train.steps must be >= 1, got {self.steps}")
        require(self.batch_size >= 1, f"train.batch_size must be >= 1, got {self.batch_size}")
        require(self.lr > 0, f"train.lr must be > 0, got {self.lr}")
        require(0.0 <= self.ema_decay < 1.0, f"train.ema_decay must be in [0, 1), got {self.ema_decay}")
        require(self.position_noise_std >= 0, f"train.position_noise_std must be >= 0, got {self.position_noise_std}")
        require(self.position_noise_blend_steps >= 0,
                f"train.position_noise_blend_steps must be >= 0, got {self.position_noise_blend_steps}")
        require(self.rtc_prefix_noise_std >= 0, f"train.rtc_prefix_noise_std must be >= 0, got {self.rtc_prefix_noise_std}")
        require(self.rtc_prefix_velocity_noise_std >= 0,
                f"train.rtc_prefix_velocity_noise_std must be >= 0, got {self.rtc_prefix_velocity_noise_std}")
        require(self.rtc_prefix_blend_steps >= 1, f"train.rtc_prefix_blend_steps must be >= 1, got {self.rtc_prefix_blend_steps}")
        require(self.checkpoint_every >= 1, f"train.checkpoint_every must be >= 1, got {self.checkpoint_every}")
        require(self.log_every >= 1, f"train.log_every must be >= 1, got {self.log_every}")
        require(0.0 <= self.val_fraction < 1.0, f"train.val_fraction must be in [0, 1), got {self.val_fraction}")
        require(self.val_every >= 1, f"train.val_every must be >= 1, got {self.val_every}")
        require(self.image_aux_weight >= 0, f"train.image_aux_weight must be >= 0, got {self.image_aux_weight}")
        require(self.image_lag_frames >= 0, f"train.image_lag_frames must be >= 0, got {self.image_lag_frames}")
        require((self.image_aux_weight > 0) == bool(self.image_aux_feature),
                f"train.image_aux_feature {self.image_aux_feature!r} and train.image_aux_weight {self.image_aux_weight}: "
                "set both (a feature name and a weight > 0) or neither")


@dataclass(frozen=True)
class DensityTrainConfig:
    """The observation density trained beside the policy (issue 24; ``policy/density.py``).

    Attributes:
        enabled: train it at the end of ``flow-policy train`` on the training windows'
            observations, with the policy's normalization, and store it in the checkpoint.
        steps: optimizer steps of the density network.
        batch_size: observations per step.
        lr: Adam learning rate (the policy's warm-up/cosine schedule).
        data_noise: std (normalized units) of the Gaussian smoothing of the data: real joint
            observations are near-degenerate (coupled joints), docs/density_solvers.md.
        hidden_dim: width of the density's residual MLP.
        num_layers: its residual layers (0: one hidden layer, whose exact divergence is one product
            per evaluation: the cheap graph the shipped models use, docs/density_shield.md).
        activation: 'silu' or 'softplus' (derivative = one sigmoid: fewer graph nodes).
        seed: seed of weights, batches and noise.
    """

    enabled: bool = False
    steps: int = 4000
    batch_size: int = 256
    lr: float = 2e-3
    data_noise: float = 0.05
    hidden_dim: int = 128
    num_layers: int = 0
    activation: str = "softplus"
    seed: int = 0

    def __post_init__(self) -> None:
        require(self.activation in ("silu", "softplus"), f"density.activation must be 'silu' or 'softplus', got {self.activation!r}")
        require(isinstance(self.enabled, bool), f"density.enabled must be true or false, got {self.enabled!r}")
        require(self.steps >= 1, f"density.steps must be >= 1, got {self.steps}")
        require(self.batch_size >= 1, f"density.batch_size must be >= 1, got {self.batch_size}")
        require(self.lr > 0, f"density.lr must be > 0, got {self.lr}")
        require(self.data_noise >= 0, f"density.data_noise must be >= 0, got {self.data_noise}")
        require(self.hidden_dim >= 1, f"density.hidden_dim must be >= 1, got {self.hidden_dim}")
        require(self.num_layers >= 0, f"density.num_layers must be >= 0, got {self.num_layers}")


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything ``flow-policy train`` needs: policy, data and training settings (and the
    optional observation density, section ``density``; off by default)."""

    policy: PolicyConfig = field(default_factory=PolicyConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    density: DensityTrainConfig = field(default_factory=DensityTrainConfig)

    def __post_init__(self) -> None:
        for name, cls in (("policy", PolicyConfig), ("data", DataConfig), ("train", TrainConfig),
                          ("density", DensityTrainConfig)):
            value = getattr(self, name)
            if isinstance(value, dict):
                object.__setattr__(self, name, _build(cls, value, name))
                if name == "policy":  # read from a file: limits must not silently be the iiwa's
                    require_given_limits(value)
        if self.train.image_aux_feature:
            aux_feature(self)  # validates it now, naming the setting

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
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from exc
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the config ({exc.strerror or exc})") from exc
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at top level, got {type(data).__name__}")
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from exc


def aux_feature(config: ExperimentConfig) -> FeatureSpec | None:
    """The vector feature ``train.image_aux_feature`` names (a camera model's privileged training
    target, read from the episodes beside the observation), None when unset."""
    name = config.train.image_aux_feature
    if not name:
        return None
    require(bool(config.policy.cameras), f"train.image_aux_feature {name!r}: only for camera models (the head "
            "reads the camera embedding); this policy observes no image feature")
    feature = DEFAULT_FEATURES.get(name)
    require(feature is not None and feature.kind == "vector",
            f"train.image_aux_feature {name!r}: not a vector feature; one of "
            f"{sorted(k for k, f in DEFAULT_FEATURES.items() if f.kind == 'vector')}")
    require(name not in config.policy.observation.fields,
            f"train.image_aux_feature {name!r}: the policy observes it already (fields {list(config.policy.observation.fields)})")
    return feature


#: Keys renamed since older configs and checkpoints were written: class -> {old key: new key}.
RENAMED_KEYS: dict[type, dict[str, str]] = {PolicyConfig: {"euler_steps": "solver_steps"}}


def _renamed(cls: type, data: dict[str, Any], where: str) -> dict[str, Any]:
    """``data`` with the old names of ``cls``'s fields (:data:`RENAMED_KEYS`) read as the new ones."""
    renames = RENAMED_KEYS.get(cls, {})
    if not renames.keys() & data.keys():
        return data
    out = dict(data)
    for old, new in renames.items():
        if old in out:
            if new in out:
                raise ConfigError(f"{where}: both {old!r} (its old name) and {new!r} given; keep {new!r}")
            out[new] = out.pop(old)
    return out


def _build(cls: type, data: Any, where: str) -> Any:
    """Build dataclass ``cls`` from a dict, naming unknown keys instead of ignoring them (old key
    names of :data:`RENAMED_KEYS` still read)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    data = _renamed(cls, data, where)
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
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:  # e.g. int('abc') inside a field's validation
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
