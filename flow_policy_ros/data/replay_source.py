"""Reading a rosbag2 recording for replay: the bag's topics into the model's recording.

The joint map renames the bag's joints onto the model's; the action source (with its fallback),
the vector features and the camera frames are read from their topics into a :class:`ReplaySource`
(:func:`read_source`), whose recording :mod:`flow_policy_ros.data.replay_decisions` turns into
decisions.

Conventions:

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
- Joint map (YAML mapping ``driver_name: model_name``): renames the bag's joints onto the
  model's; it must name every model joint.
"""

from __future__ import annotations

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
from flow_policy_ros.errors import BagError, UsageError
from flow_policy_ros.runtime.image_inputs import FUTURE_TOLERANCE_S
from flow_policy_ros.runtime.metadata import PolicyMetadata
from flow_policy_ros.runtime.observation import VECTOR_READERS, MalformedMessageError, NonFiniteValueError, vector_values

DEFAULT_TRAJECTORY_TOPIC = "/joint_trajectory"


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
