"""rosbag2 episodes ⇄ LeRobotDataset v3.0: joint states, vector features, actions and camera images.

The mapping (:class:`LeRobotMapping`, YAML: ``config/lerobot_mapping.yaml``) says which topics
become which features. Its ``data`` section is the training configs' :class:`DataConfig` (topics,
action source, command joint order) and its ``observation`` section the :class:`ObservationSpec`
(joints, fields), so a dataset's frames are exactly the training windows' ticks.

Features written:

- ``observation.state`` float32, the observation fields in order; ``names``: the spec's
  ``ObservationSpec.state_names()`` (the one convention): ``<joint>.pos`` for ``joint_positions``
  (rad), ``<joint>.vel`` for ``joint_velocities`` (rad/s), ``goal.x``, ``goal.y``, ``goal.z`` for
  ``goal`` (m, world frame). Reading, a bare ``<joint>`` is taken for ``<joint>.pos``.
- ``action`` float32, ``names``: ``action_joint_names`` (rad, position targets).
- ``observation.images.<camera>`` video (H, W, 3) for each camera of ``images``: sensor_msgs/Image
  rgb8/bgr8 frames, encoded by :mod:`flow_policy_ros.data.lerobot_video` (LeRobot's AV1 defaults).
- the default features; ``task`` from the mapping or the bag's ``episode.json`` ``task``.

Resampling rule (bag → dataset): the one of :mod:`flow_policy_ros.data.windows`, with the control
period 1/fps (rounded to whole ns). Frame k is the control tick t_k = t_0 + k·period:

- ``commands``: t_0 is the first command's stamp; the action of frame k is the last command
  stamped at or before t_k + period/2 (zero-order hold; a dropped command repeats the previous).
- ``joint_trajectory`` / ``controller_state``: the action of frame k is the controller's
  position target at t_{k+1} (trajectories spliced as a JTC executes them / its reference).
- ``joint_states``: the action of frame k is the measured position at t_{k+1}.
- the observation of frame k: joint positions and velocities linearly interpolated at t_k
  (a joint state stamped exactly at t_k is taken as is), the goal held from the last one at or
  before t_k. Frames where an observation field is undefined (before the first joint state or
  goal, after the last joint state) are dropped from the start and end.
- the image of frame k (per camera): the last frame stamped at or before t_k (held, like the goal:
  a 12.5 Hz camera repeats each frame for 4 frames at 50 fps); frames before a camera's first image
  are dropped from the start.
- ``timestamp`` = k·period (s, float32). Joint-state and command stamps must not decrease
  (an error names the bag, topic and message); gaps longer than :data:`GAP_PERIODS` periods are
  reported (count and the longest, in s) but do not stop the conversion.

Dataset → bags: one bag per episode, frame k stamped ``start_time_ns + round(timestamp·fps)·period``
(the timestamps must lie within 0.1 ms of the fps grid): a JointState (positions, velocities when
the state has them, names from the state's ``names``), the goal as a PointStamped when it changes,
and the action as a Float64MultiArray (``commands``) or a one-point JointTrajectory reaching the
action one period later (``joint_trajectory``), which the bag reader maps back to the same
frames, and per camera a sensor_msgs/Image (rgb8, frame_id ``<camera>_optical_frame``) decoded
from the video. ``episode.json`` carries the task and the source episode index.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from flow_policy_ros.contract import FeatureSpec, JointLimits, ModelIO, ObservationSpec
from flow_policy_ros.data import bag as bagio
from flow_policy_ros.data.config import DataConfig
from flow_policy_ros.data.images import IMAGE, image_topic
from flow_policy_ros.data.lerobot import INFO_PATH, LeRobotWriter, vector_feature
from flow_policy_ros.data.lerobot_reader import LeRobotDataset, read_dataset, state_joint_names
from flow_policy_ros.data.lerobot_video import IMAGES_PREFIX, VideoSettings, video_feature
from flow_policy_ros.data.timeseries import period_ns
from flow_policy_ros.data.windows import action_ticks, observable_mask, observations_at
from flow_policy_ros.errors import ConfigError, DatasetError, FlowPolicyError, TimeSeriesError

STATE = "observation.state"
ACTION = "action"
#: A stamp gap longer than this many periods is reported.
GAP_PERIODS = 1.5
#: Action sources --to-rosbag2 can write (a controller state or a measured next position cannot
#: be recreated from the dataset's actions alone).
WRITABLE_ACTION_SOURCES = ("commands", "joint_trajectory")


@dataclass(frozen=True)
class LeRobotMapping:
    """Which topics become which features, and the dataset's clock.

    Attributes:
        fps: dataset frame rate (Hz, integer as LeRobot requires); period 1/fps.
        task: task text of every episode; None reads each bag's ``episode.json`` ``task``.
        robot_type: stored in info.json.
        observation: ``joint_names``, ``fields`` and ``features`` of ``observation.state``, an
            :class:`ObservationSpec` (an empty joint list takes the joints of the first bag's first
            JointState message; ``features`` declares vector features other than the goal, each
            read from ``data.feature_topic``).
        action_joint_names: joints of ``action`` (empty: the observation joints).
        data: topics and action source, as in the training configs.
        storage: bag format written by --to-rosbag2 ('mcap' or 'sqlite3').
        start_time_ns: stamp (ns) of frame 0 in the bags written (non-zero: a zero header
            stamp means "use the receipt time" in ROS).
        images: camera name -> sensor_msgs/Image topic, each becoming ``observation.images.<camera>``;
            None (default) = every ``/camera/<name>/image_raw`` Image topic of the first bag, and
            every video feature of a dataset; {} = no images.
        video: encoder settings of the videos (:class:`VideoSettings` fields; LeRobot's defaults).
    """

    fps: int = 50
    task: str | None = None
    robot_type: str | None = "kuka_iiwa"
    observation: dict[str, Any] = field(default_factory=lambda: {"joint_names": [], "fields": ["joint_positions", "goal"]})
    action_joint_names: tuple[str, ...] = ()
    data: DataConfig = field(default_factory=DataConfig)
    storage: str = "mcap"
    start_time_ns: int = 1_000_000_000
    images: dict[str, str] | None = None
    video: VideoSettings = field(default_factory=VideoSettings)

    def __post_init__(self) -> None:
        if isinstance(self.video, dict):
            known = {f.name for f in fields(VideoSettings)}
            unknown = sorted(set(self.video) - known)
            if unknown:
                raise ConfigError(f"mapping.video: unknown key(s) {unknown}; expected some of {sorted(known)}")
            object.__setattr__(self, "video", VideoSettings(**self.video))
        if self.images is not None and (not isinstance(self.images, dict)
                                        or not all(isinstance(k, str) and k and isinstance(v, str) and v
                                                   for k, v in self.images.items())):
            raise ConfigError(f"mapping.images must map camera names to Image topics (or be null), got {self.images!r}")
        if isinstance(self.data, dict):
            try:
                object.__setattr__(self, "data", DataConfig(**self.data))
            except TypeError as exc:
                raise ConfigError(f"mapping.data: {exc}") from exc
        object.__setattr__(self, "action_joint_names", tuple(self.action_joint_names))
        if isinstance(self.fps, bool) or not isinstance(self.fps, int) or self.fps <= 0:
            raise ConfigError(f"mapping.fps must be a positive integer (Hz), got {self.fps!r}")
        if self.storage not in ("mcap", "sqlite3"):
            raise ConfigError(f"mapping.storage must be 'mcap' or 'sqlite3', got {self.storage!r}")
        if int(self.start_time_ns) <= 0:
            raise ConfigError(f"mapping.start_time_ns must be > 0, got {self.start_time_ns}")
        unknown = sorted(set(self.observation) - {"joint_names", "fields", "features"})
        if unknown:
            raise ConfigError(f"mapping.observation: unknown key(s) {unknown}; expected joint_names, fields, features")
        self.spec(["joint"])  # the fields and features are valid

    @property
    def period_s(self) -> float:
        return 1.0 / self.fps

    def spec(self, joint_names: Sequence[str]) -> ObservationSpec:
        """The observation spec with ``joint_names`` when the mapping leaves them empty."""
        names = tuple(self.observation.get("joint_names") or joint_names)
        return ObservationSpec(joint_names=names, fields=tuple(self.observation.get("fields", ())),
                               features=tuple(self.observation.get("features") or ()))

    def model_io(self, joint_names: Sequence[str]) -> ModelIO:
        """A ModelIO for :mod:`~flow_policy_ros.data.windows` (no limits: conversion clamps nothing)."""
        spec = self.spec(joint_names)
        actions = self.action_joint_names or spec.joint_names
        inf = (float("inf"),) * len(actions)
        return ModelIO(observation=spec, action_joint_names=actions, horizon=1, control_period_s=self.period_s,
                       limits=JointLimits(lower=tuple(-v for v in inf), upper=inf, velocity=inf))


def load_mapping(path: Path | None) -> LeRobotMapping:
    """The mapping in YAML file ``path`` (None: the defaults); unknown keys are a ConfigError naming the file."""
    if path is None:
        return LeRobotMapping()
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such mapping file")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    known = {f.name for f in fields(LeRobotMapping)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown}; expected some of {sorted(known)}")
    data_known = {f.name for f in fields(DataConfig)}
    bad = sorted(set(raw.get("data") or {}) - data_known)
    if bad:
        raise ConfigError(f"{path}: data: unknown key(s) {bad}; expected some of {sorted(data_known)}")
    try:
        return LeRobotMapping(**raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


# --------------------------------------------------------------------------- bags → dataset


@dataclass
class EpisodeFrames:
    """One bag resampled: its observation joints, ``state`` (K, S) and ``action`` (K, A) float64, the
    ticks (K,) int64 ns, its gaps, and per camera the frame of each tick (K, H, W, 3) uint8."""

    bag: Path
    task: str
    joint_names: list[str]
    ticks_ns: np.ndarray
    state: np.ndarray
    action: np.ndarray
    gaps: dict[str, dict[str, float]]
    images: dict[str, np.ndarray] = field(default_factory=dict)


def camera_topics(bag: Path, mapping: LeRobotMapping) -> dict[str, str]:
    """Camera name -> Image topic: the mapping's ``images``, or (None) every ``/camera/<name>/image_raw``
    sensor_msgs/Image topic of ``bag``, sorted by name."""
    if mapping.images is not None:
        return dict(mapping.images)
    try:
        topics = bagio.list_topics(bag)
    except FlowPolicyError as exc:
        raise DatasetError(str(exc)) from exc
    found = {}
    for topic, summary in topics.items():
        parts = topic.split("/")
        if summary.msgtype == IMAGE and len(parts) == 4 and parts[1] == "camera" and topic == image_topic(parts[2]):
            found[parts[2]] = topic
    return dict(sorted(found.items()))


def _camera_frames(bag: Path, topic: str, step: int) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """(stamps (F,), frames (F, H, W, 3), gaps) of one Image topic; stamps must increase."""
    try:
        stamps, frames = bagio.read_image_topic(bag, topic)
    except FlowPolicyError as exc:
        raise DatasetError(str(exc)) from exc
    spacing = int(np.median(np.diff(stamps))) if len(stamps) > 1 else step
    gaps = _check_stamps(bag, topic, stamps, max(step, spacing))
    if np.any(np.diff(stamps) == 0):
        i = int(np.flatnonzero(np.diff(stamps) == 0)[0]) + 1
        raise DatasetError(f"{bag}: {topic} message #{i} repeats the stamp of the one before")
    return stamps, frames, gaps


def _check_stamps(bag: Path, topic: str, times_ns: np.ndarray, period: int) -> dict[str, float]:
    """Stamps must not decrease; returns {'count', 'longest_s'} of gaps over GAP_PERIODS periods."""
    steps = np.diff(np.asarray(times_ns, np.int64))
    if np.any(steps < 0):
        i = int(np.flatnonzero(steps < 0)[0]) + 1
        raise DatasetError(f"{bag}: {topic} stamps go back at message #{i} "
                           f"({(times_ns[i] - times_ns[i - 1]) * 1e-9:.6f} s)")
    long = steps[steps > GAP_PERIODS * period]
    return {"count": int(len(long)), "longest_s": float(long.max() * 1e-9) if len(long) else 0.0}


def bag_frames(bag: Path, mapping: LeRobotMapping, joint_names: Sequence[str] | None = None,
               cameras: dict[str, str] | None = None) -> EpisodeFrames:
    """Resample one episode bag onto the dataset's frames (the rule in the module docstring).

    ``joint_names``: the observation joints when the mapping leaves them empty (those of the
    first bag); None takes this bag's first JointState message's. ``cameras``: camera -> Image
    topic (those of the first bag); None: :func:`camera_topics` of this bag.
    """
    cfg = mapping.data
    obs_joints = mapping.observation.get("joint_names") or joint_names
    try:
        rec = bagio.read_episode_bag(bag, cfg, joint_names=obs_joints or None,
                                     command_joint_names=cfg.command_joint_names or mapping.action_joint_names or None,
                                     vector_features=mapping.spec(obs_joints or ["joint"]).vector_features)
    except FlowPolicyError as exc:
        raise DatasetError(str(exc)) from exc
    io = mapping.model_io(rec.joint_names)
    step = period_ns(mapping.period_s)
    gaps = {cfg.joint_states_topic: _check_stamps(bag, cfg.joint_states_topic, rec.joint_times_ns, step)}
    if len(np.unique(rec.joint_times_ns)) != len(rec.joint_times_ns):
        i = int(np.flatnonzero(np.diff(rec.joint_times_ns) == 0)[0]) + 1
        raise DatasetError(f"{bag}: {cfg.joint_states_topic} message #{i} repeats the stamp of the one before")
    if cfg.action_source == "commands":
        gaps[cfg.command_topic] = _check_stamps(bag, cfg.command_topic, rec.command_times_ns, step)
    for feature in io.observation.vector_features:
        topic = cfg.feature_topic(feature)
        times, _ = rec.vector_series(feature.name, str(bag))
        _check_stamps(bag, topic, times, step)
        if len(times) == 0:
            raise DatasetError(f"{bag}: feature {STATE!r} needs {feature.name!r} but {topic} holds no message")
    cameras = camera_topics(bag, mapping) if cameras is None else cameras
    video = {camera: _camera_frames(bag, topic, step) for camera, topic in cameras.items()}
    gaps.update({cameras[camera]: g for camera, (_, _, g) in video.items()})
    try:
        ticks, actions = action_ticks(rec, io, cfg, str(bag))
        keep = observable_mask(rec, ticks, io)
        for stamps, _, _ in video.values():
            keep &= ticks >= stamps[0]  # an image is held from its stamp on, like a vector feature
        ticks, actions = ticks[keep], actions[keep]
        if len(ticks) == 0:
            raise DatasetError(f"{bag}: no frame has both an observation and an action at {mapping.fps} fps")
        state = observations_at(rec, ticks, io, str(bag))
    except TimeSeriesError as exc:
        raise DatasetError(f"{bag}: {exc}") from exc
    images = {camera: frames[np.searchsorted(stamps, ticks, side="right") - 1]
              for camera, (stamps, frames, _) in video.items()}
    task = mapping.task if mapping.task is not None else rec.metadata.get("task")
    if not isinstance(task, str) or not task:
        raise DatasetError(f"{bag}: no task text: set mapping.task or a 'task' string in {bagio.EPISODE_JSON}")
    return EpisodeFrames(bag, task, list(io.observation.joint_names), ticks, state, actions, gaps, images)


def bags_to_lerobot(bags: Sequence[Path], out: Path, mapping: LeRobotMapping,
                    progress: Callable[[EpisodeFrames], None] | None = None) -> dict[str, Any]:
    """Convert episode bags (one episode each, in the given order) into a new dataset at ``out``.

    Streams: one bag's frames in memory at a time. Returns a summary (episodes, frames, gaps per bag).
    """
    if not bags:
        raise DatasetError("no episode bags given")
    if Path(out).exists():
        raise DatasetError(f"{out}: already exists; refusing to overwrite")
    cameras = camera_topics(bags[0], mapping)
    first = bag_frames(bags[0], mapping, cameras=cameras)
    joints = first.joint_names
    io = mapping.model_io(joints)
    features = {STATE: vector_feature(io.observation.state_names()), ACTION: vector_feature(io.action_joint_names)}
    for camera, frames in first.images.items():
        features[IMAGES_PREFIX + camera] = video_feature(*frames.shape[1:3])
    summary: dict[str, Any] = {"episodes": 0, "frames": 0, "fps": mapping.fps, "gaps": {},
                               "cameras": {IMAGES_PREFIX + c: t for c, t in cameras.items()}}
    with LeRobotWriter(out, mapping.fps, features, robot_type=mapping.robot_type, video=mapping.video) as writer:
        for i, bag in enumerate(bags):
            frames = first if i == 0 else bag_frames(bag, mapping, joints, cameras)
            k = np.arange(len(frames.ticks_ns))
            columns = {STATE: frames.state, ACTION: frames.action,
                       **{IMAGES_PREFIX + c: f for c, f in frames.images.items()}}
            writer.add_episode(columns, frames.task, timestamps_s=k * period_ns(mapping.period_s) * 1e-9)
            summary["episodes"] += 1
            summary["frames"] += len(k)
            if any(g["count"] for g in frames.gaps.values()):
                summary["gaps"][str(bag)] = frames.gaps
            if progress is not None:
                progress(frames)
    return summary


# --------------------------------------------------------------------------- dataset → bags


def _state_layout(dataset: LeRobotDataset, mapping: LeRobotMapping) -> tuple[ObservationSpec, dict[str, np.ndarray]]:
    """The mapping's observation spec, and each of its fields' columns in the dataset's
    ``observation.state`` (matched by the spec's ``state_names()``; a bare '<joint>' stands for '<joint>.pos')."""
    info = dataset.root / INFO_PATH
    for name in (STATE, ACTION):
        if name not in dataset.features:
            raise DatasetError(f"{info}: the mapping needs feature {name!r}; the dataset has {sorted(dataset.features)}")
    joints = mapping.observation.get("joint_names") or state_joint_names(dataset.feature_names(STATE))
    spec = mapping.spec(joints)
    dataset.columns_of(STATE, spec.state_names())  # one error naming every missing value
    for feature in spec.vector_features:
        if feature.msg_type not in (bagio.POINT_STAMPED, bagio.FLOAT64_MULTI_ARRAY):
            raise DatasetError(f"mapping.observation: feature {feature.name!r} ({feature.msg_type}) cannot be written to a "
                               f"bag; --to-rosbag2 writes {bagio.POINT_STAMPED} and {bagio.FLOAT64_MULTI_ARRAY}")
    cols = {f.name: dataset.columns_of(STATE, ObservationSpec(spec.joint_names, (f.name,), (f,)).state_names())
            for f in spec.low_dim_features}
    return spec, cols


def lerobot_to_bags(root: Path, out_dir: Path, mapping: LeRobotMapping,
                    progress: Callable[[int, str], None] | None = None) -> list[Path]:
    """Write one bag per episode of the dataset at ``root`` into a new directory ``out_dir``; returns the bags.

    Bags are named ``episode_000000`` ... by episode_index. The dataset's fps must equal the
    mapping's; the action source must be one of :data:`WRITABLE_ACTION_SOURCES`. Atomic: the
    bags are written into a temp directory beside ``out_dir``, renamed at the end.
    """
    dataset = read_dataset(root)
    info = dataset.root / INFO_PATH
    if dataset.fps != mapping.fps:
        raise DatasetError(f"{info}: fps is {dataset.fps} but the mapping says {mapping.fps}")
    cfg = mapping.data
    if cfg.action_source not in WRITABLE_ACTION_SOURCES:
        raise DatasetError(f"mapping.data.action_source {cfg.action_source!r} cannot be written to a bag; "
                           f"use one of {list(WRITABLE_ACTION_SOURCES)}")
    spec, cols = _state_layout(dataset, mapping)
    cameras = _dataset_cameras(dataset, mapping)
    wanted = list(mapping.action_joint_names or spec.joint_names)
    action_cols = dataset.columns_of(ACTION, wanted).tolist()
    command_names = list(cfg.command_joint_names or wanted)
    if not set(command_names) <= set(wanted):
        raise DatasetError(f"mapping.data.command_joint_names {command_names} are not all action joints {wanted}")
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise DatasetError(f"{out_dir}: already exists; refusing to overwrite")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        names = _write_bags(dataset, tmp, mapping, spec, cols, wanted, action_cols, command_names, cameras, progress)
        os.rename(tmp / "out", out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [out_dir / n for n in names]


def _dataset_cameras(dataset: LeRobotDataset, mapping: LeRobotMapping) -> dict[str, str]:
    """Camera -> Image topic to write: the mapping's ``images`` (each must be a video feature of the
    dataset), or (None) every video feature on ``/camera/<name>/image_raw``."""
    keys = dataset.video_keys
    if mapping.images is None:
        return {key[len(IMAGES_PREFIX):]: image_topic(key[len(IMAGES_PREFIX):]) for key in keys if key.startswith(IMAGES_PREFIX)}
    missing = [IMAGES_PREFIX + c for c in mapping.images if IMAGES_PREFIX + c not in keys]
    if missing:
        raise DatasetError(f"{dataset.root / INFO_PATH}: the mapping's images need video feature(s) {missing}; "
                           f"the dataset has {keys}")
    return dict(mapping.images)


def _write_bags(dataset: LeRobotDataset, tmp: Path, mapping: LeRobotMapping, spec: ObservationSpec,
                cols: dict[str, np.ndarray], wanted: list[str], action_cols: list[int], command_names: list[str],
                cameras: dict[str, str], progress: Callable[[int, str], None] | None) -> list[str]:
    cfg = mapping.data
    step = period_ns(mapping.period_s)
    names: list[str] = []
    (tmp / "out").mkdir()
    for ep in dataset.iter_episodes([STATE, ACTION]):
        names.append(f"episode_{ep.episode_index:06d}")
        path = tmp / "out" / names[-1]
        stamps = mapping.start_time_ns + np.round(ep.columns["timestamp"].astype(np.float64) * mapping.fps).astype(np.int64) * step
        state = ep.columns[STATE].astype(np.float64)
        # fancy indexing may return a column-major array; CDR serialization needs contiguous rows
        actions = np.ascontiguousarray(ep.columns[ACTION].astype(np.float64)[:, action_cols])
        commands = np.ascontiguousarray(actions[:, [wanted.index(n) for n in command_names]])
        video = {camera: dataset.episode_frames(ep.episode_index, IMAGES_PREFIX + camera) for camera in cameras}
        with bagio.BagWriter(path, mapping.storage) as bag:
            last: dict[str, np.ndarray] = {}
            for k, t in enumerate(stamps):
                t = int(t)
                pos = state[k, cols["joint_positions"]] if "joint_positions" in cols else np.zeros(0)
                vel = state[k, cols["joint_velocities"]] if "joint_velocities" in cols else np.zeros(0)
                bag.write(cfg.joint_states_topic, bagio.JOINT_STATE, bagio.joint_state_msg(t, spec.joint_names, pos, vel), t)
                for feature in spec.vector_features:  # a message when the value changes (latched, like a goal)
                    value = state[k, cols[feature.name]]
                    if feature.name not in last or not np.array_equal(value, last[feature.name]):
                        last[feature.name] = value
                        bag.write(cfg.feature_topic(feature), feature.msg_type, _vector_msg(feature, t, value), t)
                if cfg.action_source == "commands":
                    bag.write(cfg.command_topic, bagio.FLOAT64_MULTI_ARRAY, bagio.float64_multi_array_msg(commands[k]), t)
                else:
                    msg = bagio.joint_trajectory_msg(t, command_names, commands[k:k + 1], mapping.period_s,
                                                     times_from_start_ns=[step])
                    bag.write(cfg.trajectory_topic, bagio.JOINT_TRAJECTORY, msg, t)
                for camera, frames in video.items():
                    bag.write(cameras[camera], IMAGE, bagio.image_msg(t, frames[k], f"{camera}_optical_frame"), t)
            (bag.directory / bagio.EPISODE_JSON).write_text(
                _episode_json(ep.task, ep.episode_index, dataset.root))
        if progress is not None:
            progress(ep.episode_index, names[-1])
    return names


def _vector_msg(feature: FeatureSpec, stamp_ns: int, value: np.ndarray) -> Any:
    if feature.msg_type == bagio.POINT_STAMPED:
        return bagio.point_stamped_msg(stamp_ns, value, feature.frame_id or "world")
    return bagio.float64_multi_array_msg(np.ascontiguousarray(value), label=feature.name)


def _episode_json(task: str, episode_index: int, root: Path) -> str:
    return json.dumps({"task": task, "lerobot_dataset": str(root), "lerobot_episode_index": episode_index},
                      indent=2, sort_keys=True) + "\n"

