"""Offline evaluation of an ONNX policy on rosbag2 recordings: ``flow-policy replay``.

For every bag, the observation at each decision time is rebuilt from the recorded topics with
the training windowing (:mod:`flow_policy_ros.policy.dataset`: joints by name, linear interpolation
onto the control grid, goal held), the policy predicts a chunk there, and the chunk is compared
with what actually followed.

Conventions:

- Decision times are the control ticks of :func:`dataset.action_ticks` (period = the model's
  ``control_period_s``) where the observation is defined; one decision per tick.
- Targets ("what actually followed"): ``data.action_source`` as in training (the same reader
  and windowing), with one fallback for 'commands': first available of the command topic
  (std_msgs/Float64MultiArray, joint order ``data.command_joint_names``, default the model's
  action joints); the ``trajectory_topic`` argument's trajectory_msgs/JointTrajectory chunks
  (a policy_node's own output, read as the 'joint_trajectory' source; reported as
  'trajectory'); else the executed joint positions (the position at t_{k+1} is the action of
  tick k). A fallback is reported per bag (``action_fallback``: the topic wanted and the one
  used; the CLI says it in one console line). 'joint_trajectory' and 'controller_state' read ``data.trajectory_topic`` /
  ``data.controller_state_topic`` (:func:`flow_policy_ros.data.bag.trajectory_targets`,
  :func:`~flow_policy_ros.data.bag.controller_state_targets`). Steps of a chunk that run past
  the last recorded tick are not scored.
- Cameras (models with image features): each camera's frames come from its spec topic
  (``/camera/<name>/image_raw``), or the other of raw/``.../compressed`` when the bag has only
  that one (sensor_msgs/Image rgb8/bgr8 or CompressedImage jpeg/png,
  :func:`flow_policy_ros.data.bag.read_image_topic`). Each decision gets, per camera, the freshest
  frame stamped at most the camera's ``max_age_s`` before its tick and not after it (beyond the
  node's tolerance): the pairing policy_node makes live. Decisions without such a frame are left
  out (counted in ``decisions_without_frame``); frames of another size than the model's are an error.
- Goal: the goal topic if the bag has it, else ``--goal X Y Z`` (held from the first joint
  state), else an error naming both.
- Noise: for each bag, decision j (in time order) uses the j-th (H, A) block drawn from
  ``numpy.random.default_rng(seed).standard_normal`` as float32: the same stream as
  ``OnnxPolicy(seed=seed).sample_noise()`` called once per decision, so a bag recorded by a
  policy that planned every tick replays exactly.
- Joint map (YAML mapping ``driver_name: model_name``): renames the bag's joints onto the
  model's; it must name every model joint.
- Invalid outputs: a decision whose chunk fails ``OnnxPolicy``'s output validation (wrong shape,
  NaN/inf: :class:`~flow_policy_ros.errors.InvalidOutputError`) is counted, kept out of every
  error metric, and held in ``--write-bag``.
- Safety (:func:`safety_review`): per bag, the fraction of decisions out of distribution (the
  guard of :mod:`flow_policy_ros.runtime.ood` at ``ood_margin``), of predicted commands outside
  the joint limits and of steps (from the measured position through the chunk) beyond the
  velocity limit; and what ``policy_node`` would have published: each chunk clamped by
  :mod:`flow_policy_ros.runtime.safety` from the measured position, an empty JointTrajectory
  (hold) where the node would hold (out of distribution, invalid output, measured position
  beyond the limits). ``--write-bag`` writes that, not the raw prediction.

- Prefix consistency (real-time chunking models, :func:`prefix_consistency`): at every decision
  whose next d + 1 recorded actions exist, the recorded actions of ticks k .. k+d-1 are passed as
  the committed prefix (what the robot was commanded), d = ``rtc_prefix`` (default the model's
  d_max); reported: whether the output reproduced the prefix exactly, and the step from the last
  committed action to the first new one (row d - row d-1) against the recorded step at the same
  place and the velocity limit. None for a plain model.

- Observation density (models with metadata ``density``, :func:`density_report`): per bag the
  score (``observation_log_likelihood``, nats) of every decision, its distribution, the fraction
  below the calibrated threshold (flagged) and the fraction the node's guard would spend in the
  density hold (:class:`~flow_policy_ros.runtime.density_guard.DensityGuard`, k =
  ``density_hold_after``, over the decisions in time order, each decision scored); None for a
  model without it.

Imports neither torch nor pybullet. Inputs are only read; every output is written atomically.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from flow_policy_ros.contract import FeatureSpec
from flow_policy_ros.data import bag as bagio
from flow_policy_ros.data.config import DataConfig
from flow_policy_ros.data.images import ImageSeries
from flow_policy_ros.data.recording import GOAL_FEATURE, EpisodeRecording
from flow_policy_ros.data.timeseries import TimeSeriesError, resample_linear
from flow_policy_ros.data.windows import action_ticks, chunk_indices, observable_mask, observations_at
from flow_policy_ros.errors import BagError, InvalidOutputError, UsageError, one_line
from flow_policy_ros.runtime.chunking import DEFAULT_REPLAN_EVERY
from flow_policy_ros.runtime.controller import MEASURED_LIMIT_TOLERANCE_RAD
from flow_policy_ros.runtime.density_guard import DEFAULT_HOLD_AFTER, DensityGuard
from flow_policy_ros.runtime.image_inputs import FUTURE_TOLERANCE_S
from flow_policy_ros.runtime.metadata import PolicyMetadata
from flow_policy_ros.runtime.observation import VECTOR_READERS, MalformedMessageError, NonFiniteValueError, vector_values
from flow_policy_ros.runtime.ood import DEFAULT_OOD_MARGIN, classify, ood_score, ood_scores
from flow_policy_ros.runtime.safety import CommandLimiter, SafetyLimits

DEFAULT_TRAJECTORY_TOPIC = "/joint_trajectory"
DEFAULT_POLICY_TOPIC = "/policy/joint_trajectory"
DEFAULT_BATCH = 512
#: Ticks executed from each chunk for the seam-jerk metric (policy_node's default replan_every).


# --------------------------------------------------------------------------- joint map, trajectories


def load_joint_map(path: Path) -> dict[str, str]:
    """Read a YAML mapping ``driver_joint: model_joint`` (e.g. ``lbr_joint_0: lbr_iiwa_joint_1``)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--joint-map {path}: file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UsageError(f"--joint-map {path}: not valid YAML ({' '.join(str(exc).split())})") from exc
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise UsageError(f"--joint-map {path}: expected a mapping of driver joint name -> model joint name")
    targets = list(data.values())
    dupes = sorted({n for n in targets if targets.count(n) > 1})
    if dupes:
        raise UsageError(f"--joint-map {path}: model joint(s) {dupes} are mapped from more than one driver joint")
    return dict(data)


def driver_joint_names(model_joints: Sequence[str], joint_map: dict[str, str] | None, where: str = "--joint-map") -> list[str]:
    """The bag's names of ``model_joints`` under ``joint_map`` (identity without a map).

    Raises UsageError naming the model joints the map does not cover.
    """
    if joint_map is None:
        return list(model_joints)
    inverse = {model: driver for driver, model in joint_map.items()}
    missing = [n for n in model_joints if n not in inverse]
    if missing:
        raise UsageError(f"{where}: does not cover the model's joint(s) {missing}")
    return [inverse[n] for n in model_joints]


# --------------------------------------------------------------------------- reading a bag


@dataclass
class ReplaySource:
    """A bag read for replay: the recording in model joint names and how it was assembled."""

    path: Path
    recording: EpisodeRecording
    data_config: DataConfig
    action_source: str  # 'commands', 'trajectory' (the fallback), 'joint_trajectory', 'controller_state', 'joint_states'
    goal_source: str  # 'topic', 'argument' or 'none'
    images: dict[str, ImageSeries] = field(default_factory=dict)  # image feature name -> its frames (camera models)
    image_topics: dict[str, str] = field(default_factory=dict)  # image feature name -> the bag topic read
    action_fallback: dict[str, str] | None = None  # see :func:`action_fallback`; None: the source asked for


def action_fallback(data_cfg: DataConfig, source: str, trajectory_topic: str) -> dict[str, str] | None:
    """What replay scored against instead of the recorded commands, or None when it used what was asked.

    Only action_source 'commands' falls back (to ``trajectory_topic``'s chunks, reported as source
    'trajectory', else to the executed joint positions); the other sources are an error when missing.
    Keys: wanted_source, wanted_topic, used_source, used_topic, reason (one phrase).
    """
    if data_cfg.action_source != "commands" or source == "commands":
        return None
    used_topic = trajectory_topic if source == "trajectory" else data_cfg.joint_states_topic
    return {"wanted_source": "commands", "wanted_topic": data_cfg.command_topic, "used_source": source,
            "used_topic": used_topic, "reason": f"the bag has no {data_cfg.command_topic} messages"}


def image_bag_topic(path: Path, feature: FeatureSpec, topics: Mapping[str, Any]) -> str:
    """The bag topic of image feature ``feature``: its spec topic, else the raw/compressed twin the
    bag has; BagError naming both and the bag's topics when it has neither."""
    spec = "/" + feature.topic.lstrip("/")
    raw = spec.removesuffix("/compressed")
    for topic in (spec, raw, raw + "/compressed"):
        if topic in topics:
            return topic
    raise BagError(f"{path}: no {feature.name}: the bag has neither {raw} nor {raw}/compressed; it has {sorted(topics)}")


def read_images(path: Path, features: Sequence[FeatureSpec]) -> tuple[dict[str, ImageSeries], dict[str, str]]:
    """Every camera's frames (sorted by stamp) and the topic each came from; BagError (one line) for a
    missing topic, an undecodable frame or frames of another size than the model takes."""
    if not features:
        return {}, {}
    topics = bagio.list_topics(path)
    images, sources = {}, {}
    for feature in features:
        topic = image_bag_topic(path, feature, topics)
        stamps, frames = bagio.read_image_topic(path, topic)
        if frames.shape[1:] != feature.image_shape:
            h, w, _ = feature.image_shape
            raise BagError(f"{path}: {topic}: frames are {frames.shape[2]}x{frames.shape[1]}, {feature.name} of the model "
                           f"takes {w}x{h} (width x height; replay does not resize)")
        order = np.argsort(stamps, kind="stable")
        images[feature.name] = ImageSeries(f"{feature.camera}_optical_frame", stamps[order], frames[order])
        sources[feature.name] = topic
    return images, sources


def frame_indices(series: ImageSeries, ticks_ns: np.ndarray, max_age_s: float,
                  tolerance_s: float = FUTURE_TOLERANCE_S) -> np.ndarray:
    """(N,) index of the frame each tick pairs with, -1 for none: the freshest frame stamped in
    [tick - max_age_s, tick + tolerance_s] (the pairing of runtime.image_inputs)."""
    idx = np.searchsorted(series.times_ns, ticks_ns + round(tolerance_s * 1e9), side="right") - 1
    ok = idx >= 0
    ok[ok] = ticks_ns[ok] - series.times_ns[idx[ok]] <= round(max_age_s * 1e9)
    return np.where(ok, idx, -1)


def _vector_series(path: Path, feature: FeatureSpec, topic: str, msgs: list[tuple[int, Any]],
                   held: Mapping[str, Sequence[float]], joint_times: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray], str]:
    """((times (V,) ns, values (V, size)), 'topic' | 'argument') of a vector feature: its messages
    sorted by stamp, else the value given for it, held from the first joint state."""
    if msgs:
        try:
            values = np.array([vector_values(feature, m)[0] for _, m in msgs], np.float64).reshape(len(msgs), feature.size)
        except MalformedMessageError as exc:
            raise BagError(f"{path}: {topic}: {exc}") from exc
        except NonFiniteValueError:  # kept: the replay reports non-finite observations per decision
            values = np.array([VECTOR_READERS[feature.msg_type][0](m) for _, m in msgs], np.float64)
        stamps = np.array([bagio.stamp_or_log(m, t) for t, m in msgs], np.int64)
        order = np.argsort(stamps, kind="stable")
        return (stamps[order], values[order]), "topic"
    if feature.name in held:
        value = np.asarray(held[feature.name], np.float64).reshape(1, -1)
        if value.shape[1] != feature.size:
            raise UsageError(f"{feature.name}: {value.shape[1]} values given, the model takes {feature.size}")
        return (joint_times[:1].copy(), value), "argument"
    flag = " and no --goal X Y Z was given" if feature.name == GOAL_FEATURE else ""
    raise BagError(f"{path}: no {feature.name}: the bag has no {topic} messages{flag}")


def read_source(path: Path, meta: PolicyMetadata, data_cfg: DataConfig = bagio.DEFAULT_DATA_CONFIG,
                joint_map: dict[str, str] | None = None, goal: Sequence[float] | None = None,
                trajectory_topic: str = DEFAULT_TRAJECTORY_TOPIC,
                held: Mapping[str, Sequence[float]] | None = None) -> ReplaySource:
    """Read ``path`` into a recording whose joints carry the model's names (see the module docstring).

    Vector features come from their topics (``data_cfg.feature_topic``); one the bag lacks is
    held at the value ``held`` gives for it (``goal`` is a shorthand for ``held['goal']``).
    Raises BagError/UsageError (one line) for a missing/corrupt/empty bag, missing or mistyped
    topics, unknown joints, an uncovering joint map or a missing vector feature.
    """
    path = Path(path)
    held = dict(held or {})
    if goal is not None:
        held[GOAL_FEATURE] = goal
    model_joints = list(dict.fromkeys([*meta.observation.joint_names, *meta.action_joint_names]))
    drivers = driver_joint_names(model_joints, joint_map)
    rename = dict(zip(drivers, model_joints))
    vector_topics = {feature.name: data_cfg.feature_topic(feature) for feature in meta.observation.vector_features}
    wanted = {data_cfg.joint_states_topic: bagio.JOINT_STATE}
    wanted.update({vector_topics[f.name]: f.msg_type for f in meta.observation.vector_features})
    optional = list(vector_topics.values())
    if data_cfg.action_source == "commands":
        wanted.update({data_cfg.command_topic: bagio.FLOAT64_MULTI_ARRAY, trajectory_topic: bagio.JOINT_TRAJECTORY})
        optional += [data_cfg.command_topic, trajectory_topic]
    elif data_cfg.action_topic is not None:
        wanted[data_cfg.action_topic] = bagio.ACTION_TOPIC_TYPES[data_cfg.action_source]
    msgs = bagio.read_topics(path, wanted, optional=optional, roles=bagio.action_topic_roles(data_cfg))
    _, times, pos, vel, skipped = bagio.joint_arrays(path, msgs[data_cfg.joint_states_topic], drivers)
    vectors, sources = {}, {}
    for feature in meta.observation.vector_features:
        vectors[feature.name], sources[feature.name] = _vector_series(
            path, feature, vector_topics[feature.name], msgs[vector_topics[feature.name]], held, times)
    goal_times, goals = vectors.pop(GOAL_FEATURE, (np.zeros(0, np.int64), np.zeros((0, 3))))
    goal_source = sources.get(GOAL_FEATURE, "none")

    action_joints = list(meta.action_joint_names)
    action_drivers = driver_joint_names(action_joints, joint_map)
    cmd_times, commands, source = np.zeros(0, np.int64), np.zeros((0, len(action_joints))), "joint_states"
    targets = None
    cmd_msgs, traj_msgs = msgs.get(data_cfg.command_topic, []), msgs.get(trajectory_topic, [])
    if data_cfg.action_source == "commands" and cmd_msgs:
        recorded_names = list(data_cfg.command_joint_names) or action_drivers
        mapped = [rename.get(n, n) if joint_map else n for n in recorded_names]
        for _, m in cmd_msgs:
            if len(m.data) != len(mapped):
                raise BagError(f"{path}: {data_cfg.command_topic} has {len(m.data)} values per message, expected "
                               f"{len(mapped)} for command joints {recorded_names}")
        unknown = [n for n in action_joints if n not in mapped]
        if unknown:
            raise BagError(f"{path}: command joints {recorded_names} lack the model's action joint(s) {unknown}")
        cols = [mapped.index(n) for n in action_joints]
        cmd_times = np.array([t for t, _ in cmd_msgs], np.int64)
        commands = np.array([m.data for _, m in cmd_msgs], np.float64)[:, cols]
        source = "commands"
    elif data_cfg.action_source == "commands" and traj_msgs:
        targets = bagio.trajectory_targets(path, trajectory_topic, traj_msgs, action_drivers)
        source = "trajectory"
    elif data_cfg.action_source == "joint_trajectory":
        targets = bagio.trajectory_targets(path, data_cfg.trajectory_topic, msgs[data_cfg.trajectory_topic],
                                           action_drivers)
        source = "joint_trajectory"
    elif data_cfg.action_source == "controller_state":
        targets = bagio.controller_state_targets(path, data_cfg.controller_state_topic,
                                                 msgs[data_cfg.controller_state_topic], action_drivers)
        source = "controller_state"
    rec = EpisodeRecording(joint_names=model_joints, joint_times_ns=times, positions=pos, velocities=vel,
                           goal_times_ns=goal_times, goals=goals, command_joint_names=action_joints,
                           command_times_ns=cmd_times, commands=commands,
                           metadata={"skipped_joint_states": skipped} if skipped else {},
                           targets=None if targets is None else targets.renamed(action_joints), vectors=vectors)
    cfg = replace(data_cfg, command_joint_names=tuple(action_joints),
                  action_source="joint_trajectory" if source == "trajectory" else source,
                  trajectory_topic=trajectory_topic if source == "trajectory" else data_cfg.trajectory_topic)
    images, image_topics = read_images(path, meta.observation.image_features)
    return ReplaySource(path, rec, cfg, source, goal_source, images, image_topics,
                        action_fallback(data_cfg, source, trajectory_topic))


# --------------------------------------------------------------------------- decisions and inference


@dataclass
class Decisions:
    """Decision points of one bag.

    Attributes:
        ticks_ns: (N,) int64, decision times.
        observations: (N, obs_dim) float32, raw units.
        targets: (N, H, A) float64, what followed each decision (rad); padded steps repeat the last action.
        valid: (N, H) bool, False where the step runs past the last recorded action (not scored).
        action_ticks_ns: (K,) int64 and actions (K, A) float64: the whole recorded action series.
        measured: (N, A) float64, measured positions of the action joints at the decisions (rad).
        images: image feature name -> (N, Hc, Wc, 3) uint8, the frame each decision pairs with.
        without_frame: decision ticks left out because a camera had no frame within its max age.
    """

    ticks_ns: np.ndarray
    observations: np.ndarray
    targets: np.ndarray
    valid: np.ndarray
    action_ticks_ns: np.ndarray
    actions: np.ndarray
    measured: np.ndarray
    images: dict[str, np.ndarray] = field(default_factory=dict)
    without_frame: int = 0


def build_decisions(src: ReplaySource, meta: PolicyMetadata) -> Decisions:
    """Observations and target chunks at every tick with a defined observation (dataset windowing)."""
    io = meta.io
    try:
        ticks, actions = action_ticks(src.recording, io, src.data_config, str(src.path))
        keep = np.flatnonzero(observable_mask(src.recording, ticks, io))
        if len(keep) == 0:
            raise BagError(f"{src.path}: no decision time: the observation is never defined on the action ticks")
        obs = observations_at(src.recording, ticks[keep], io, str(src.path))
        rec = src.recording
        cols = [rec.joint_names.index(n) for n in meta.action_joint_names]
        measured = resample_linear(rec.joint_times_ns, rec.positions[:, cols], ticks[keep])
    except TimeSeriesError as exc:
        raise BagError(f"{src.path}: {exc}") from exc
    if not (np.all(np.isfinite(obs)) and np.all(np.isfinite(measured))):
        raise BagError(f"{src.path}: the recorded joint states or goal hold NaN/inf where the policy observes them")
    h = meta.horizon
    idx = chunk_indices(int(keep[0]), len(keep), h, len(ticks))
    valid = (keep[:, None] + np.arange(h)[None, :]) < len(ticks)
    dec = Decisions(ticks[keep], obs.astype(np.float32), actions[idx], valid, ticks, actions, measured)
    return _with_frames(dec, src, meta) if meta.observation.image_features else dec


def _with_frames(dec: Decisions, src: ReplaySource, meta: PolicyMetadata) -> Decisions:
    """``dec`` restricted to the decisions every camera has a frame for, with those frames."""
    index = {f.name: frame_indices(src.images[f.name], dec.ticks_ns, f.max_age_s) for f in meta.observation.image_features}
    paired = np.all([i >= 0 for i in index.values()], axis=0)
    if not paired.any():
        ages = {name: src.images[name].times_ns for name in index}
        raise BagError(f"{src.path}: no decision has a frame of every camera within its max age "
                       f"({', '.join(f'{n}: {len(t)} frames' for n, t in ages.items())} over "
                       f"{(dec.ticks_ns[-1] - dec.ticks_ns[0]) * 1e-9:.2f} s of decisions)")
    return Decisions(dec.ticks_ns[paired], dec.observations[paired], dec.targets[paired], dec.valid[paired],
                     dec.action_ticks_ns, dec.actions, dec.measured[paired],
                     {name: src.images[name].frames[i[paired]] for name, i in index.items()}, int((~paired).sum()))


def decision_noise(seed: int, count: int, horizon: int, action_dim: int) -> np.ndarray:
    """(count, H, A) float32: block j is the j-th (H, A) draw of ``default_rng(seed)`` (see module docstring)."""
    return np.random.default_rng(seed).standard_normal((count, horizon, action_dim)).astype(np.float32)


@dataclass
class Predictions:
    """The policy's chunks for every decision of a bag.

    Attributes:
        chunks: (N, H, A) float32 joint targets (rad); NaN where the output was invalid.
        invalid: (N,) bool, the decision's output failed validation (InvalidOutputError).
        first_invalid: the first invalid output's one-line reason ("" = none).
        seconds: wall time of the batched inference.
        scores: (N,) observation log-likelihood per decision (models with a density; NaN where the
            output was invalid), else None.
    """

    chunks: np.ndarray
    invalid: np.ndarray
    first_invalid: str
    seconds: float
    scores: np.ndarray | None = None


def predict_batched(policy: Any, observations: np.ndarray, noise: np.ndarray, guidance: float | None,
                    batch_size: int = DEFAULT_BATCH, images: Mapping[str, np.ndarray] | None = None) -> Predictions:
    """Run ``policy.predict`` on (N, obs_dim) + (N, H, A) noise (+ ``images``: feature name -> (N, Hc, Wc, 3)
    uint8 for a camera model) in batches.

    A batch whose output fails validation is re-run one decision at a time, so exactly the
    invalid decisions are marked.
    """
    out = np.empty(noise.shape, np.float32)
    invalid = np.zeros(len(observations), bool)
    scores = np.full(len(observations), np.nan)
    first = ""
    start = time.perf_counter()
    for lo in range(0, len(observations), batch_size):
        hi = min(lo + batch_size, len(observations))
        try:
            out[lo:hi] = policy.predict(observations[lo:hi], noise=noise[lo:hi], guidance_scale=guidance,
                                        **_images_kw(images, slice(lo, hi)))
            scores[lo:hi] = _scores(policy, hi - lo)
            continue
        except InvalidOutputError:
            pass
        for i in range(lo, hi):
            try:
                out[i] = policy.predict(observations[i], noise=noise[i], guidance_scale=guidance, **_images_kw(images, i))
                scores[i] = _scores(policy, 1)[0]
            except InvalidOutputError as exc:
                out[i], invalid[i] = np.nan, True
                first = first or one_line(exc)
    has_density = getattr(policy.metadata, "density", None) is not None
    return Predictions(out, invalid, first, time.perf_counter() - start, scores if has_density else None)


def _scores(policy: Any, count: int) -> np.ndarray:
    """The last call's observation log-likelihood(s) (count,), NaN for a model without a density."""
    score = getattr(policy, "last_log_likelihood", None)
    return np.full(count, np.nan) if score is None else np.asarray(score, np.float64).reshape(-1)


def density_held(scores: np.ndarray | None, meta: PolicyMetadata, hold_after: int = DEFAULT_HOLD_AFTER) -> np.ndarray | None:
    """(N,) bool: the decisions the node's density guard would hold (k = ``hold_after`` below the
    threshold in a row; every decision scored in time order); None for a model without a density."""
    density = getattr(meta, "density", None)
    if scores is None or density is None:
        return None
    guard = DensityGuard(density.threshold, hold_after)
    return np.array([bool(guard.observe(float(s))) for s in scores], dtype=bool)


def density_report(scores: np.ndarray | None, meta: PolicyMetadata, hold_after: int = DEFAULT_HOLD_AFTER) -> dict[str, Any] | None:
    """Score distribution, flagged fraction (score < threshold) and the fraction of decisions the
    density guard would hold (:func:`density_held`)."""
    density = getattr(meta, "density", None)
    if scores is None or density is None:
        return None
    finite = scores[np.isfinite(scores)]
    mask = density_held(scores, meta, hold_after)
    held = int(mask.sum())
    holds = int(np.count_nonzero(np.diff(mask.astype(np.int8), prepend=0) == 1))  # hold spans entered
    quantiles = {f"p{q}": float(np.percentile(finite, q)) for q in (1, 5, 50)} if finite.size else {}
    return {"threshold": density.threshold, "hold_after": hold_after, "decisions": int(len(scores)),
            "min": float(finite.min()) if finite.size else None, **quantiles,
            "flagged": int(np.sum(~(scores >= density.threshold))), "flagged_fraction": float(np.mean(~(scores >= density.threshold))),
            "held_decisions": held, "held_fraction": held / max(1, len(scores)), "holds": holds}


def _images_kw(images: Mapping[str, np.ndarray] | None, index: int | slice | np.ndarray) -> dict[str, Any]:
    """``{'images': {name: frames[index]}}`` for a camera model, {} otherwise (state-only predict calls unchanged)."""
    return {"images": {name: frames[index] for name, frames in images.items()}} if images else {}


def single_latency_ms(policy: Any, observations: np.ndarray, noise: np.ndarray, guidance: float | None,
                      samples: int = 50, images: Mapping[str, np.ndarray] | None = None) -> dict[str, float | None]:
    """Unbatched latency (ms) of up to ``samples`` decisions: what a live node pays per decision
    (calls whose output is invalid are not timed)."""
    times = []
    for i in range(min(samples, len(observations))):
        start = time.perf_counter()
        try:
            policy.predict(observations[i], noise=noise[i], guidance_scale=guidance, **_images_kw(images, i))
        except InvalidOutputError:
            continue
        times.append((time.perf_counter() - start) * 1e3)
    if not times:
        return {"single_p50": None, "single_p99": None, "single_samples": 0}
    return {"single_p50": float(np.percentile(times, 50)), "single_p99": float(np.percentile(times, 99)),
            "single_samples": len(times)}


# --------------------------------------------------------------------------- metrics


def _jerk(seq: np.ndarray, period_s: float) -> np.ndarray:
    """Third finite difference (M-3, A) of positions (M, A) rad → rad/s³."""
    return np.diff(seq, n=3, axis=0) / period_s**3


def seam_jerk(predicted: np.ndarray, recorded: np.ndarray, period_s: float, replan_every: int) -> dict[str, Any]:
    """Jerk of executing predicted chunks open loop, ``replan_every`` ticks each, at seams vs inside.

    predicted: (N, H, A) chunks of consecutive ticks; recorded: (N, A) recorded actions of the same ticks.
    The executed sequence takes the first ``replan_every`` actions of the chunks at decisions
    0, R, 2R, ...; a jerk sample (window n..n+3) is at a seam when a chunk starts at n+1..n+3.
    Values are mean |jerk| over joints and samples (rad/s³).
    """
    r = max(1, min(replan_every, predicted.shape[1]))
    seq = np.concatenate([predicted[d, :r] for d in range(0, len(predicted), r)])[: len(predicted)]
    result: dict[str, Any] = {"replan_every": r, "seam_mean_abs_rad_s3": None, "inside_mean_abs_rad_s3": None,
                              "seam_to_inside_ratio": None, "recorded_mean_abs_rad_s3": None}
    if len(seq) < 4:
        return result
    jerk = np.abs(_jerk(seq, period_s)).mean(axis=1)
    n = np.arange(len(jerk))
    seam = ((n + 3) // r) > (n // r)
    if seam.any():
        result["seam_mean_abs_rad_s3"] = float(jerk[seam].mean())
    if (~seam).any():
        result["inside_mean_abs_rad_s3"] = float(jerk[~seam].mean())
    if seam.any() and (~seam).any() and jerk[~seam].mean() > 0:
        result["seam_to_inside_ratio"] = float(jerk[seam].mean() / jerk[~seam].mean())
    result["recorded_mean_abs_rad_s3"] = float(np.abs(_jerk(recorded, period_s)).mean())
    return result


def prefix_consistency(policy: Any, dec: Decisions, noise: np.ndarray, guidance: float | None, prefix_length: int,
                       batch_size: int = DEFAULT_BATCH) -> dict[str, Any]:
    """Seam of a real-time chunking model on recorded prefixes (see module docstring).

    Decisions with an invalid output are skipped (counted). Steps are in rad per tick; means are
    over decisions and joints, ``*_max_abs_rad`` the largest joint step of any decision.
    """
    meta: PolicyMetadata = policy.metadata
    d = int(prefix_length)
    if not 1 <= d <= meta.rtc_max_delay:
        raise UsageError(f"--rtc-prefix {d}: must be in [1, d_max={meta.rtc_max_delay}] for {meta.name}")
    usable = np.flatnonzero(dec.valid[:, d])  # rows 0..d recorded
    result: dict[str, Any] = {"prefix_length": d, "decisions": int(len(usable)), "invalid_outputs": 0,
                              "reproduced": None, "seam_step_mean_abs_rad": None, "seam_step_max_abs_rad": None,
                              "recorded_step_mean_abs_rad": None, "seam_step_error_mean_abs_rad": None,
                              "beyond_velocity_limit_fraction": None}
    if len(usable) == 0:
        return result
    step_limit = np.asarray(meta.limits.velocity) * meta.control_period_s
    prefix = dec.targets[usable].astype(np.float32)
    outs, keep = [], []
    for lo in range(0, len(usable), batch_size):
        idx = usable[lo:lo + batch_size]
        sl = slice(lo, lo + len(idx))
        try:
            outs.append(policy.predict(dec.observations[idx], noise=noise[idx], guidance_scale=guidance,
                                       prefix_actions=prefix[sl], prefix_length=np.full(len(idx), d, np.int64),
                                       **_images_kw(dec.images, idx)))
            keep.append(np.ones(len(idx), bool))
        except InvalidOutputError:  # count the batch as invalid; replay's main metrics find the culprits
            outs.append(np.full((len(idx),) + prefix.shape[1:], np.nan, np.float32))
            keep.append(np.zeros(len(idx), bool))
    out, ok = np.concatenate(outs), np.concatenate(keep)
    result["invalid_outputs"] = int((~ok).sum())
    if not ok.any():
        return result
    out, rec = out[ok], prefix[ok].astype(np.float64)
    seam = np.abs(out[:, d].astype(np.float64) - out[:, d - 1])
    recorded = np.abs(rec[:, d] - rec[:, d - 1])
    result.update({
        "reproduced": bool(np.array_equal(out[:, :d], prefix[ok][:, :d])),
        "seam_step_mean_abs_rad": float(seam.mean()),
        "seam_step_max_abs_rad": float(seam.max()),
        "recorded_step_mean_abs_rad": float(recorded.mean()),
        "seam_step_error_mean_abs_rad": float(np.abs(out[:, d] - rec[:, d]).mean()),
        "beyond_velocity_limit_fraction": float(np.mean(np.any(seam > step_limit[None, :] + 1e-9, axis=1))),
    })
    return result


def error_metrics(predicted: np.ndarray, targets: np.ndarray, valid: np.ndarray,
                  joint_names: Sequence[str], period_s: float) -> dict[str, Any]:
    """Errors (rad) of predicted (N, H, A) against targets (N, H, A) over ``valid`` (N, H) steps."""
    err = predicted.astype(np.float64) - targets
    mask = valid[:, :, None]
    count = int(valid.sum())  # scored (decision, step) pairs, the same for every joint
    abs_err = np.where(mask, np.abs(err), 0.0)
    sq_err = np.where(mask, err**2, 0.0)
    steps = valid.sum(axis=0)
    first = np.abs(err[:, 0, :])
    return {
        "first_action": {"mae_rad": float(first.mean()), "rmse_rad": float(np.sqrt((first**2).mean())),
                         "max_abs_rad": float(first.max()), "mae_rad_per_joint": first.mean(axis=0).tolist()},
        "per_joint": {name: {"mae_rad": float(abs_err[:, :, j].sum() / count),
                             "rmse_rad": float(np.sqrt(sq_err[:, :, j].sum() / count))}
                      for j, name in enumerate(joint_names)},
        "overall": {"mae_rad": float(abs_err.sum() / (count * err.shape[2])),
                    "rmse_rad": float(np.sqrt(sq_err.sum() / (count * err.shape[2])))},
        "horizon": {"step_time_s": [(i + 1) * period_s for i in range(valid.shape[1])],
                    "mae_rad": (abs_err.sum(axis=(0, 2)) / np.maximum(steps * err.shape[2], 1)).tolist(),
                    "rmse_rad": np.sqrt(sq_err.sum(axis=(0, 2)) / np.maximum(steps * err.shape[2], 1)).tolist(),
                    "scored_decisions": steps.tolist()},
    }


# --------------------------------------------------------------------------- safety


@dataclass
class SafetyReview:
    """What policy_node would have made of the predictions of one bag.

    Attributes:
        published: (N, H, A) float64, each chunk clamped as the node sends it (rad); NaN rows where held.
        held: (N,) bool, the node would hold instead (out of distribution, invalid, measured beyond limits).
        report: the JSON summary (fractions and counts; see :func:`safety_review`).
        ood: (N,) bool, the held decisions that are out of distribution (all False with the guard off).
    """

    published: np.ndarray
    held: np.ndarray
    report: dict[str, Any]
    ood: np.ndarray | None = None


def safety_review(predicted: np.ndarray, invalid: np.ndarray, dec: Decisions, meta: PolicyMetadata,
                  ood_margin: float = DEFAULT_OOD_MARGIN) -> SafetyReview:
    """Out-of-distribution decisions, predicted commands outside the limits, steps beyond the velocity
    limit, and the chunks as the node would publish them (see the module docstring).

    predicted: (N, H, A) rad (NaN rows where ``invalid``); invalid: (N,) bool. Fractions: OOD of
    decisions; outside limits of the valid decisions' predicted commands (N·H); velocity of their
    steps (point 0 from the measured position, then point to point: N·H).
    """
    limits = SafetyLimits.from_joint_limits(meta.limits)
    n, h, _ = predicted.shape
    rng = meta.observation_range
    report: dict[str, Any] = {"ood_margin": ood_margin, "ood_guard": "on" if rng is not None else
                              "off: no training range in metadata"}
    ood = np.zeros(n, bool)
    if rng is not None:
        scores = ood_scores(dec.observations, rng)
        levels = np.array([classify(v, ood_margin) for v in scores])
        ood = levels == "ood"
        worst = int(np.argmax(scores))
        report.update({"ood_decisions": int(ood.sum()), "ood_fraction": float(ood.mean()),
                       "ood_warn_fraction": float((levels == "warn").mean()),
                       "worst_ood": ood_score(dec.observations[worst], rng).describe() if scores[worst] > 0 else None})
    else:
        report.update({"ood_decisions": None, "ood_fraction": None, "ood_warn_fraction": None, "worst_ood": None})
    beyond = ((dec.measured < limits.lower - MEASURED_LIMIT_TOLERANCE_RAD)
              | (dec.measured > limits.upper + MEASURED_LIMIT_TOLERANCE_RAD)).any(axis=1)
    ok = ~invalid
    chunks = predicted[ok].astype(np.float64)
    outside = (chunks < limits.lower) | (chunks > limits.upper)
    steps = np.diff(np.concatenate([dec.measured[ok][:, None, :], chunks], axis=1), axis=1)
    too_fast = np.abs(steps) > limits.velocity * meta.control_period_s + 1e-9
    held = invalid | ood | beyond
    published = np.full(predicted.shape, np.nan)
    clamped = 0
    for i in np.flatnonzero(~held):
        published[i] = CommandLimiter(limits, meta.control_period_s).limit_trajectory(predicted[i], dec.measured[i])
        clamped += int(not np.allclose(published[i], predicted[i], rtol=0.0, atol=1e-9))
    commands = max(1, int(ok.sum()) * h)
    report.update({
        "outside_limits_commands": int(outside.any(axis=2).sum()),
        "outside_limits_fraction": float(outside.any(axis=2).sum() / commands),
        "velocity_violation_steps": int(too_fast.any(axis=2).sum()),
        "velocity_violation_fraction": float(too_fast.any(axis=2).sum() / commands),
        "measured_beyond_limits_decisions": int(beyond.sum()),
        "held_decisions": int(held.sum()),
        "clamped_decisions": clamped,
    })
    return SafetyReview(published, held, report, ood)


def safety_warning(report: dict[str, Any]) -> str:
    """One console line for a bag's report when anything would have alarmed the node, else ''."""
    safety = report["safety"]
    parts = []
    if report["invalid_outputs"]:
        parts.append(f"{report['invalid_outputs']} of {report['decisions']} model outputs invalid "
                     f"({report['first_invalid_output']})")
    if safety["ood_fraction"]:
        parts.append(f"{safety['ood_fraction']:.1%} of decisions out of distribution (worst: {safety['worst_ood']})")
    if safety["outside_limits_fraction"]:
        parts.append(f"{safety['outside_limits_fraction']:.1%} of predicted commands outside the joint limits")
    if safety["velocity_violation_fraction"]:
        parts.append(f"{safety['velocity_violation_fraction']:.1%} of predicted steps beyond the velocity limit")
    if safety["measured_beyond_limits_decisions"]:
        parts.append(f"{safety['measured_beyond_limits_decisions']} decisions with a measured position beyond the limits")
    return f"{report['bag']}: " + "; ".join(parts) if parts else ""


# --------------------------------------------------------------------------- one bag


@dataclass
class BagReplay:
    """Everything replay computed for one bag."""

    source: ReplaySource
    decisions: Decisions
    predicted: np.ndarray  # (N, H, A) float32, NaN rows where the output was invalid
    report: dict[str, Any] = field(default_factory=dict)
    invalid: np.ndarray | None = None  # (N,) bool
    safety: SafetyReview | None = None
    scores: np.ndarray | None = None  # (N,) observation log-likelihood (models with a density)


def replay_bag(path: Path, policy: Any, data_cfg: DataConfig = bagio.DEFAULT_DATA_CONFIG,
               joint_map: dict[str, str] | None = None, goal: Sequence[float] | None = None, seed: int = 0,
               guidance: float | None = None, batch_size: int = DEFAULT_BATCH, replan_every: int = DEFAULT_REPLAN_EVERY,
               trajectory_topic: str = DEFAULT_TRAJECTORY_TOPIC, latency_samples: int = 50,
               ood_margin: float = DEFAULT_OOD_MARGIN, rtc_prefix: int | None = None) -> BagReplay:
    """Read, rebuild decisions, predict (batched, seeded noise), score one bag and review its safety.

    Error metrics cover the decisions with a valid output (None when there is none); the seam
    jerk needs consecutive chunks and is None when any output is invalid. A real-time chunking
    model also gets ``prefix_consistency`` with d = ``rtc_prefix`` (None: its d_max).
    """
    meta: PolicyMetadata = policy.metadata
    t0 = time.perf_counter()
    src = read_source(path, meta, data_cfg, joint_map, goal, trajectory_topic)
    t1 = time.perf_counter()
    dec = build_decisions(src, meta)
    t2 = time.perf_counter()
    noise = decision_noise(seed, len(dec.ticks_ns), meta.horizon, meta.action_dim)
    pred = predict_batched(policy, dec.observations, noise, guidance, batch_size, dec.images)
    predicted, infer_s, ok = pred.chunks, pred.seconds, ~pred.invalid
    n = len(predicted)
    latency = {"batch_size": batch_size, "batched_per_decision_mean": infer_s * 1e3 / n,
               **single_latency_ms(policy, dec.observations[ok], noise[ok], guidance, latency_samples,
                                   {name: frames[ok] for name, frames in dec.images.items()})}
    if ok.any():
        metrics = error_metrics(predicted[ok], dec.targets[ok], dec.valid[ok], meta.action_joint_names,
                                meta.control_period_s)
    else:
        metrics = {"first_action": None, "per_joint": None, "overall": None, "horizon": None}
    review = safety_review(predicted, pred.invalid, dec, meta, ood_margin)
    wall_s = time.perf_counter() - t0  # all of this bag's work (the prefix check below excepted)
    report = {
        "bag": str(src.path), "action_source": src.action_source, "action_fallback": src.action_fallback,
        "goal_source": src.goal_source,
        "decisions": n, "duration_s": float((dec.ticks_ns[-1] - dec.ticks_ns[0]) * 1e-9),
        "first_decision_ns": int(dec.ticks_ns[0]),
        "skipped_joint_states": int(src.recording.metadata.get("skipped_joint_states", 0)),
        "image_topics": src.image_topics, "decisions_without_frame": dec.without_frame,
        "invalid_outputs": int(pred.invalid.sum()), "first_invalid_output": pred.first_invalid,
        **metrics,
        "seam_jerk": seam_jerk(predicted, dec.targets[:, 0, :], meta.control_period_s, replan_every) if ok.all() else None,
        "rtc_prefix": prefix_consistency(policy, dec, noise, guidance, rtc_prefix or meta.rtc_max_delay, batch_size)
        if meta.rtc else None,
        "safety": review.report,
        "density": density_report(pred.scores, meta),
        "latency_ms": latency,
        "timing_s": {"read": t1 - t0, "observations": t2 - t1, "inference": infer_s, "wall": wall_s},
        "decisions_per_s": {"inference": n / infer_s, "end_to_end": n / wall_s},  # end to end: on the wall clock
    }
    return BagReplay(src, dec, predicted, report, pred.invalid, review, pred.scores)


#: What --write-bag puts on the policy topic (repeated in the report).
WRITTEN_CONTENT = ("what policy_node would publish: each predicted chunk clamped by runtime.safety (joint limits, "
                   "velocity limit from the measured position); an empty JointTrajectory (hold) where the node would "
                   "hold: out of distribution, invalid model output, measured position beyond the limits")


def write_replay_bag(out: Path, replayed: BagReplay, meta: PolicyMetadata, topic: str = DEFAULT_POLICY_TOPIC) -> int:
    """New bag at ``out``: every original message copied plus one JointTrajectory per decision on ``topic``.

    Decision j's trajectory is :data:`WRITTEN_CONTENT` (the safety review's published chunk, or an
    empty trajectory where the node would hold), stamped and logged at its decision tick; point i
    at (i+1)·dt. Same storage as the input. Returns the number of trajectories written.
    """
    src = replayed.source.path
    if topic in bagio.list_topics(src):
        raise UsageError(f"{src}: already has a topic {topic}; choose another --policy-topic")
    storage = "mcap" if any(src.glob("*.mcap")) else "sqlite3"
    review = replayed.safety
    if review is None:
        raise UsageError(f"{src}: this replay has no safety review; replay_bag makes one")
    ticks = replayed.decisions.ticks_ns
    chunks = [np.zeros((0, meta.action_dim)) if held else chunk for chunk, held in zip(review.published, review.held)]
    names = list(meta.action_joint_names)
    j = 0
    with bagio.BagWriter(out, storage) as writer:
        def flush(until_ns: float) -> None:
            nonlocal j
            while j < len(ticks) and ticks[j] <= until_ns:
                t = int(ticks[j])
                writer.write(topic, bagio.JOINT_TRAJECTORY, bagio.joint_trajectory_msg(t, names, chunks[j], meta.control_period_s), t)
                j += 1
        for raw in bagio.iter_raw_messages(src):
            flush(raw.log_time_ns - 1)
            writer.write_raw(raw.topic, raw.msgtype, raw.data, raw.log_time_ns)
        flush(np.inf)
    return j


# --------------------------------------------------------------------------- CLI
