"""rosbag2 episodes on disk, read and written with the ``rosbags`` library (no ROS install needed).

An episode bag is a rosbag2 directory (``metadata.yaml`` + one ``.mcap`` or ``.db3`` file) with

| topic | type | content |
|---|---|---|
| ``/joint_states`` | sensor_msgs/msg/JointState | name, position (rad), velocity (rad/s); header.stamp = sample time |
| ``/goal`` | geometry_msgs/msg/PointStamped | goal point (m), frame ``world`` |
| ``/commands`` | std_msgs/msg/Float64MultiArray | per-tick position commands (rad), layout.dim[0] = ('joints', J, J) |

and, from a robot with a JointTrajectoryController, instead of ``/commands`` (``DataConfig.action_source``):

| topic | type | content |
|---|---|---|
| ``/joint_trajectory_controller/joint_trajectory`` | trajectory_msgs/msg/JointTrajectory | the controller's trajectory commands |
| ``/joint_trajectory_controller/controller_state`` | control_msgs/msg/JointTrajectoryControllerState | reference (set point), feedback |

plus ``episode.json`` (the episode's metadata: task, seed, success, ...) beside ``metadata.yaml``.
Topic names come from :class:`~flow_policy_ros.config.DataConfig`.

Conventions fixed here:

- Time: a message's time is its ``header.stamp``; a zero stamp falls back to the log (receive)
  time. Float64MultiArray has no header, so commands use the log time. Writers log every
  message at its stamp.
- JointTrajectory commands and controller states become a
  :class:`~flow_policy_ros.data.targets.TargetSeries` (the recording's ``targets``): trajectories
  spliced as a JTC executes them, starting at header.stamp (the log time when it is zero), the
  controller's reference (``desired`` in Foxy and Galactic bags) linear between
  its stamps. Both match joints by name in every message; a message that lacks a requested
  joint is an error naming the joint and the topic.
- Joints are matched by name in every JointState message (drivers publish any order). A message
  that lacks one of the requested joints is skipped and counted in the returned recording's
  ``metadata['skipped_joint_states']`` (key present only when the count is > 0); a requested
  joint that no message carries is an error.
- The command joint order is a configuration fact (``DataConfig.command_joint_names``; empty
  means "the same joints as the joint states"), because Float64MultiArray carries no names.
- Reading never modifies the bag; writing is atomic (temp dir beside the target, then rename)
  and refuses to overwrite.

Every bad input raises :class:`~flow_policy_ros.errors.BagError` with a one-line message naming
the bag and the problem. A corrupt file (flipped bytes, truncation) anywhere, in the index, a
chunk (plain, zstd- or lz4-compressed) or one message's CDR bytes, names the bag, the topic and
the message index. This module is the boundary: whatever the libraries under it raise while
opening, reading or decoding (rosbags' SerdeError, a decompressor's ZstdError or LZ4 RuntimeError,
struct errors, short reads, invalid UTF-8, apsw/sqlite corruption, ...) is caught there as
``Exception`` and re-raised as one BagError, rather than by a list of exception types that the
next library version or compression format outgrows.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

import numpy as np
from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import CompressionFormat, CompressionMode, StoragePlugin, Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

from flow_policy_ros.contract import FeatureSpec, goal_feature
from flow_policy_ros.data.config import ACTION_TOPIC_KEYS, DEFAULT_DATA_CONFIG, DataConfig
from flow_policy_ros.data.images import IMAGE, ImageDecodeError, ImageSeries, decode_image, image_fields, image_topic
from flow_policy_ros.data.recording import GOAL_FEATURE, EpisodeRecording
from flow_policy_ros.data.targets import TargetSeries, sampled_targets, spliced_trajectories
from flow_policy_ros.errors import BagError, TimeSeriesError, TrajectoryError
from flow_policy_ros.runtime.observation import VECTOR_READERS, stamp_to_ns, trajectory_arrays

#: Message definitions used for writing and as fallback for reading (bags embed their own).
TYPESTORE = get_typestore(Stores.ROS2_KILTED)
#: Episode metadata file inside the bag directory.
EPISODE_JSON = "episode.json"
#: Default topics (DataConfig is frozen, so one shared instance is safe).

JOINT_STATE = "sensor_msgs/msg/JointState"
POINT_STAMPED = "geometry_msgs/msg/PointStamped"
FLOAT64_MULTI_ARRAY = "std_msgs/msg/Float64MultiArray"
JOINT_TRAJECTORY = "trajectory_msgs/msg/JointTrajectory"
CONTROLLER_STATE = "control_msgs/msg/JointTrajectoryControllerState"

#: control_msgs/msg/JointTrajectoryControllerState as control_msgs >= 5.3 defines it (ROS 2 Jazzy
#: since late 2024, Kilted, Rolling; comments dropped). rosbags' typestores carry no control_msgs,
#: so it is registered here, the one place, for writing and as the fallback for reading. A bag
#: that embeds the definitions it was recorded with (mcap does; sqlite3 from Iron on) decodes
#: with its own; one that embeds none (a Humble sqlite3 bag) and does not match this layout is
#: decoded with the first of :data:`CONTROLLER_STATE_OLDER_MSGS` whose size matches exactly
#: (rosbags refuses a size mismatch, so a wrong layout never decodes silently).
CONTROLLER_STATE_MSG = """\
std_msgs/Header header
string[] joint_names
trajectory_msgs/JointTrajectoryPoint reference
trajectory_msgs/JointTrajectoryPoint feedback
trajectory_msgs/JointTrajectoryPoint error
trajectory_msgs/JointTrajectoryPoint output
string[] multi_dof_joint_names
trajectory_msgs/MultiDOFJointTrajectoryPoint multi_dof_reference
trajectory_msgs/MultiDOFJointTrajectoryPoint multi_dof_feedback
trajectory_msgs/MultiDOFJointTrajectoryPoint multi_dof_error
trajectory_msgs/MultiDOFJointTrajectoryPoint multi_dof_output
float64 speed_scaling_factor
"""
TYPESTORE.register(get_types_from_msg(CONTROLLER_STATE_MSG, CONTROLLER_STATE))


def _state_layout(points: str, multi_dof: str | None, tail: str = "") -> str:
    lines = ["std_msgs/Header header", "string[] joint_names",
             *(f"trajectory_msgs/JointTrajectoryPoint {p}" for p in points.split())]
    if multi_dof is not None:
        lines += ["string[] multi_dof_joint_names",
                  *(f"trajectory_msgs/MultiDOFJointTrajectoryPoint multi_dof_{p}" for p in multi_dof.split())]
    return "\n".join([*lines, *([tail] if tail else [])]) + "\n"


#: The earlier layouts of JointTrajectoryControllerState in control_msgs' history, newest first.
#: Every one starts with header, joint_names and the set point (``reference``, formerly ``desired``).
CONTROLLER_STATE_OLDER_MSGS = {
    "control_msgs 5.0-5.2 (Iron, Jazzy before 5.3)": _state_layout(
        "reference feedback error output", "reference feedback error output"),
    "control_msgs 4.4-4.x (Humble since 2023)": _state_layout(
        "reference feedback error output desired actual", "reference feedback error output desired actual"),
    "control_msgs 4.0-4.3 (Humble before 2023)": _state_layout("desired actual error", "desired actual error"),
    "control_msgs 2-3 (Foxy, Galactic)": _state_layout("desired actual error", None),
}


def _older_typestore(definition: str) -> Any:
    store = get_typestore(Stores.ROS2_KILTED)
    store.register(get_types_from_msg(definition, CONTROLLER_STATE))
    return store


#: msgtype -> [(label, typestore)] tried, in order, when a message does not decode with the bag's definitions.
_OLDER_LAYOUTS = {CONTROLLER_STATE: [(label, _older_typestore(text)) for label, text in CONTROLLER_STATE_OLDER_MSGS.items()]}
#: Message type of each action source's topic.
ACTION_TOPIC_TYPES = {"commands": FLOAT64_MULTI_ARRAY, "joint_trajectory": JOINT_TRAJECTORY,
                      "controller_state": CONTROLLER_STATE}

_STORAGE_PLUGINS = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
#: Compression of written bags: none, or zstd (mcap: each chunk, as rosbag2's default mcap
#: writer profile does; sqlite3: each message).
COMPRESSIONS = ("none", "zstd")


class RawMessage(NamedTuple):
    """One serialized message: topic, type name, log time (ns) and CDR bytes (publishable by rclpy)."""

    topic: str
    msgtype: str
    log_time_ns: int
    data: bytes


class TopicSummary(NamedTuple):
    """A topic of a bag: its message type and message count."""

    msgtype: str
    count: int


# --------------------------------------------------------------------------- messages


def _time(stamp_ns: int) -> Any:
    sec, nanosec = divmod(int(stamp_ns), 1_000_000_000)
    return TYPESTORE.types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec)


def _header(stamp_ns: int, frame_id: str) -> Any:
    return TYPESTORE.types["std_msgs/msg/Header"](stamp=_time(stamp_ns), frame_id=frame_id)




def joint_state_msg(stamp_ns: int, names: Sequence[str], position: np.ndarray, velocity: np.ndarray) -> Any:
    """sensor_msgs/msg/JointState with (J,) positions (rad) and velocities (rad/s), frame ''."""
    return TYPESTORE.types[JOINT_STATE](
        header=_header(stamp_ns, ""),
        name=list(names),
        position=np.asarray(position, dtype=np.float64),
        velocity=np.asarray(velocity, dtype=np.float64),
        effort=np.zeros(0, dtype=np.float64),
    )


def point_stamped_msg(stamp_ns: int, point: np.ndarray, frame_id: str = "world") -> Any:
    """geometry_msgs/msg/PointStamped from a (3,) point (m)."""
    x, y, z = (float(v) for v in point)
    return TYPESTORE.types[POINT_STAMPED](
        header=_header(stamp_ns, frame_id), point=TYPESTORE.types["geometry_msgs/msg/Point"](x=x, y=y, z=z)
    )


def float64_multi_array_msg(values: np.ndarray, label: str = "joints") -> Any:
    """std_msgs/msg/Float64MultiArray of a (J,) vector, layout.dim[0] = (label, J, J)."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    dim = TYPESTORE.types["std_msgs/msg/MultiArrayDimension"](label=label, size=len(values), stride=len(values))
    layout = TYPESTORE.types["std_msgs/msg/MultiArrayLayout"](dim=[dim], data_offset=0)
    return TYPESTORE.types[FLOAT64_MULTI_ARRAY](layout=layout, data=values)


def _point(positions: np.ndarray, time_from_start_ns: int = 0) -> Any:
    sec, nanosec = divmod(int(time_from_start_ns), 1_000_000_000)
    empty = np.zeros(0, dtype=np.float64)
    return TYPESTORE.types["trajectory_msgs/msg/JointTrajectoryPoint"](
        positions=np.array(positions, dtype=np.float64).reshape(-1), velocities=empty, accelerations=empty,
        effort=empty, time_from_start=TYPESTORE.types["builtin_interfaces/msg/Duration"](sec=sec, nanosec=nanosec))


def joint_trajectory_msg(stamp_ns: int, names: Sequence[str], positions: np.ndarray, period_s: float,
                         times_from_start_ns: Sequence[int] | None = None) -> Any:
    """trajectory_msgs/msg/JointTrajectory of one chunk: (H, A) positions (rad), point i at (i+1)·period_s.

    ``times_from_start_ns`` (H,) replaces the regular point times (e.g. a recorded robot's).
    """
    positions = np.asarray(positions, dtype=np.float64)
    offsets = ([round((i + 1) * period_s * 1e9) for i in range(len(positions))] if times_from_start_ns is None
               else list(times_from_start_ns))
    points = [_point(row, t) for row, t in zip(positions, offsets)]
    return TYPESTORE.types[JOINT_TRAJECTORY](header=_header(stamp_ns, ""), joint_names=list(names), points=points)


def controller_state_msg(stamp_ns: int, names: Sequence[str], reference: np.ndarray,
                         feedback: np.ndarray | None = None) -> Any:
    """control_msgs/msg/JointTrajectoryControllerState: (J,) reference positions (rad), optional feedback.

    ``error`` is reference − feedback when feedback is given; ``output`` is left empty.
    """
    reference = np.asarray(reference, dtype=np.float64)
    fb = np.zeros(0) if feedback is None else np.asarray(feedback, dtype=np.float64)
    multi = TYPESTORE.types["trajectory_msgs/msg/MultiDOFJointTrajectoryPoint"]
    duration = TYPESTORE.types["builtin_interfaces/msg/Duration"]
    no_multi = multi(transforms=[], velocities=[], accelerations=[], time_from_start=duration(sec=0, nanosec=0))
    return TYPESTORE.types[CONTROLLER_STATE](
        header=_header(stamp_ns, ""), joint_names=list(names), reference=_point(reference), feedback=_point(fb),
        error=_point(reference - fb if feedback is not None else np.zeros(0)), output=_point(np.zeros(0)),
        multi_dof_joint_names=[], multi_dof_reference=no_multi, multi_dof_feedback=no_multi,
        multi_dof_error=no_multi, multi_dof_output=no_multi, speed_scaling_factor=1.0)


def deserialize(data: bytes, msgtype: str) -> Any:
    """CDR bytes → rosbags message object (standard ROS 2 types)."""
    return TYPESTORE.deserialize_cdr(data, msgtype)


# --------------------------------------------------------------------------- writing


class BagWriter:
    """Write messages of any standard type into a new rosbag2 directory, atomically.

    Use as a context manager: the bag is written into a temp directory beside ``path`` and
    renamed to ``path`` on a clean exit; on an exception nothing is left behind. Topics are
    registered on first use.

    Example::

        with BagWriter(out, "mcap") as bag:
            bag.write("/policy/chunk", JOINT_TRAJECTORY, joint_trajectory_msg(t, names, chunk, 0.02), t)
    """

    def __init__(self, path: Path, storage: str = "mcap", compression: str = "none") -> None:
        self.path = Path(path)
        if storage not in _STORAGE_PLUGINS:
            raise BagError(f"{self.path}: unknown storage {storage!r}; expected one of {sorted(_STORAGE_PLUGINS)}")
        if compression not in COMPRESSIONS:
            raise BagError(f"{self.path}: unknown compression {compression!r}; expected one of {COMPRESSIONS}")
        self.storage, self.compression = storage, compression
        self._tmp_dir: Path | None = None
        self._writer: Writer | None = None
        self._connections: dict[str, Any] = {}

    def __enter__(self) -> BagWriter:
        if self.path.exists():
            raise BagError(f"{self.path}: already exists; refusing to overwrite")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp_dir = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent))
        try:
            self._writer = Writer(self.directory, version=9, storage_plugin=_STORAGE_PLUGINS[self.storage])
            if self.compression == "zstd":
                mode = CompressionMode.STORAGE if self.storage == "mcap" else CompressionMode.MESSAGE
                self._writer.set_compression(mode, CompressionFormat.ZSTD)
            self._writer.open()
        except BaseException:
            shutil.rmtree(self._tmp_dir, ignore_errors=True)
            raise
        return self

    @property
    def directory(self) -> Path:
        """The (temporary) bag directory being written; extra files may be added to it."""
        assert self._tmp_dir is not None, "BagWriter is not open"
        return self._tmp_dir / self.path.name

    def write(self, topic: str, msgtype: str, msg: Any, log_time_ns: int) -> None:
        """Serialize ``msg`` (a rosbags message of ``msgtype``) and log it on ``topic`` at ``log_time_ns``."""
        self.write_raw(topic, msgtype, TYPESTORE.serialize_cdr(msg, msgtype), log_time_ns)

    def write_raw(self, topic: str, msgtype: str, data: bytes, log_time_ns: int) -> None:
        """Log already-serialized CDR bytes on ``topic``."""
        assert self._writer is not None, "BagWriter is not open"
        conn = self._connections.get(topic)
        if conn is None:
            conn = self._writer.add_connection(topic, msgtype, typestore=TYPESTORE)
            self._connections[topic] = conn
        elif conn.msgtype != msgtype:
            raise BagError(f"{self.path}: topic {topic} already has type {conn.msgtype}, not {msgtype}")
        self._writer.write(conn, int(log_time_ns), data)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        assert self._writer is not None and self._tmp_dir is not None
        try:
            if exc_type is None:
                self._writer.close()
                if self.path.exists():
                    raise BagError(f"{self.path}: appeared while writing; refusing to overwrite")
                os.rename(self.directory, self.path)
            else:
                self._writer.abort()
        finally:
            shutil.rmtree(self._tmp_dir, ignore_errors=True)
            self._writer = None


def write_episode_bag(path: Path, recording: EpisodeRecording, storage: str = "mcap",
                      data_config: DataConfig = DEFAULT_DATA_CONFIG, compression: str = "none") -> None:
    """Write one episode as a rosbag2 directory at ``path`` ('mcap' or 'sqlite3'), plus ``episode.json``.

    ``compression`` is one of :data:`COMPRESSIONS`.
    Each message is logged at its stamp. Commands are written in ``recording.command_joint_names``
    order. Refuses to overwrite ``path``; the write is atomic.
    """
    cfg = data_config
    rec = recording
    with BagWriter(Path(path), storage, compression) as bag:
        for t, pos, vel in zip(rec.joint_times_ns, rec.positions, rec.velocities):
            bag.write(cfg.joint_states_topic, JOINT_STATE, joint_state_msg(t, rec.joint_names, pos, vel), t)
        for t, goal in zip(rec.goal_times_ns, rec.goals):
            bag.write(cfg.goal_topic, POINT_STAMPED, point_stamped_msg(t, goal), t)
        for t, cmd in zip(rec.command_times_ns, rec.commands):
            bag.write(cfg.command_topic, FLOAT64_MULTI_ARRAY, float64_multi_array_msg(cmd), t)
        write_image_series(bag, rec.images)
        (bag.directory / EPISODE_JSON).write_text(json.dumps(rec.metadata, indent=2, sort_keys=True) + "\n")


# --------------------------------------------------------------------------- camera images (data/images.py)


def image_msg(stamp_ns: int, frame: np.ndarray, frame_id: str, encoding: str = "rgb8") -> Any:
    """sensor_msgs/msg/Image of an (H, W, 3) uint8 RGB frame, as ``encoding`` (rgb8 or bgr8), step 3·W."""
    return TYPESTORE.types[IMAGE](header=_header(stamp_ns, frame_id), **image_fields(frame, encoding))


def write_image_series(bag: BagWriter, images: dict[str, ImageSeries]) -> None:
    """Log each camera's frames (rgb8) on ``/camera/<name>/image_raw``, each at its stamp."""
    for camera, series in images.items():
        topic = image_topic(camera)
        for t, frame in zip(series.times_ns, series.frames):
            bag.write(topic, IMAGE, image_msg(int(t), frame, series.frame_id), int(t))


def read_image_topic(path: Path, topic: str) -> tuple[np.ndarray, np.ndarray]:
    """All frames of one sensor_msgs/msg/Image topic: (stamps ns (N,) int64, frames (N, H, W, 3) uint8 RGB).

    rgb8 and bgr8 are decoded with numpy (no cv_bridge); stamps are header stamps (the log time
    when zero). A wrong encoding, a data size other than height·step, or a frame whose size
    differs from the first is a BagError naming the bag, the topic and the message index.
    """
    path = Path(path)
    messages = read_topics(path, {topic: IMAGE})[topic]
    stamps = np.empty(len(messages), np.int64)
    frames: np.ndarray | None = None
    for i, (log_time, msg) in enumerate(messages):
        try:
            frame = decode_image(msg.height, msg.width, msg.encoding, msg.step, msg.data)
        except ImageDecodeError as exc:
            raise BagError(f"{path}: {topic} message #{i}: {exc}") from exc
        if frames is None:
            frames = np.empty((len(messages), *frame.shape), np.uint8)
        elif frame.shape != frames.shape[1:]:
            raise BagError(f"{path}: {topic} message #{i}: frame is {frame.shape[1]}x{frame.shape[0]}, "
                           f"the topic's first frame {frames.shape[2]}x{frames.shape[1]}")
        frames[i] = frame
        stamps[i] = stamp_or_log(msg, log_time)
    if frames is None:
        raise BagError(f"{path}: {topic} has no messages")
    return stamps, frames


# --------------------------------------------------------------------------- reading


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def _check_bag_dir(path: Path) -> None:
    if not path.exists():
        raise BagError(f"{path}: no such bag")
    if not path.is_dir() or not (path / "metadata.yaml").is_file():
        raise BagError(f"{path}: not a rosbag2 directory (no metadata.yaml)")


def _open_reader(path: Path) -> AnyReader:
    _check_bag_dir(path)
    try:
        reader = AnyReader([path], default_typestore=TYPESTORE)
        reader.open()
    except Exception as exc:  # the boundary: whatever the storage libraries raise (see the module docstring)
        raise BagError(f"{path}: corrupt or truncated bag, cannot open it ({_one_line(exc)})") from exc
    return reader


def list_topics(path: Path) -> dict[str, TopicSummary]:
    """Topics of a bag: {topic: (msgtype, message count)} from its metadata."""
    path = Path(path)
    reader = _open_reader(path)
    try:
        topics = {topic: TopicSummary(str(info.msgtype), int(info.msgcount)) for topic, info in reader.topics.items()}
    except Exception as exc:  # the boundary
        _close(reader, path, failed=True)
        raise BagError(f"{path}: corrupt bag metadata, cannot list its topics ({_one_line(exc)})") from exc
    _close(reader, path)
    return topics


def _close(reader: AnyReader, path: Path, failed: bool = False) -> None:
    """Close ``reader``; after a read failure (``failed``) a second failure on close is dropped,
    because the first one is what the caller reports; otherwise it is a BagError."""
    try:
        reader.close()
    except Exception as exc:  # the boundary
        if not failed:
            raise BagError(f"{path}: corrupt bag, cannot close it ({_one_line(exc)})") from exc


def _iter_messages(path: Path, topics: Sequence[str] | None) -> Iterator[tuple[RawMessage, Callable[[], Any]]]:
    """(raw message, a function decoding it with the bag's own type definitions) in log-time order."""
    reader = _open_reader(path)
    count, per_topic, last = 0, {}, "none"
    failed = True  # until the loop ends normally (a consumer may also stop early: GeneratorExit)
    try:
        conns = [c for c in reader.connections if topics is None or c.topic in topics]
        if topics is not None and not conns:
            failed = False
            return
        messages = reader.messages(connections=conns)
        while True:
            try:  # only the read is guarded: the consumer's code runs outside while this generator is suspended
                item = next(messages, None)
                if item is None:
                    break
                conn, log_time, data = item
                raw = RawMessage(conn.topic, conn.msgtype, int(log_time), bytes(data))
            except Exception as exc:  # the boundary: a corrupt chunk fails in its decompressor, parser, ...
                which = "" if topics is None else f" of {', '.join(sorted(set(topics)))}"
                raise BagError(f"{path}: corrupt or truncated bag: cannot read message {count}{which} "
                               f"(the last one read: {last}) ({_one_line(exc)})") from exc
            index = per_topic[conn.topic] = per_topic.get(conn.topic, -1) + 1
            last = f"{conn.topic} #{index}"
            count += 1
            yield raw, lambda raw=raw: reader.deserialize(raw.data, raw.msgtype)
        failed = False
    finally:
        _close(reader, path, failed)


def iter_raw_messages(path: Path, topics: Sequence[str] | None = None) -> Iterator[RawMessage]:
    """Yield the bag's messages in log-time order, optionally only on ``topics``, as raw CDR bytes.

    A read failure is a BagError naming the bag, the index of the message that could not be read
    (over the selected topics) and the last message read before it (topic and per-topic index).
    """
    for raw, _ in _iter_messages(Path(path), topics):
        yield raw


def read_topics(path: Path, wanted: dict[str, str], optional: Sequence[str] = (),
                roles: dict[str, str] | None = None) -> dict[str, list[tuple[int, Any]]]:
    """Deserialize all messages of the ``wanted`` {topic: msgtype}; checks presence and types.

    A topic in ``optional`` may be absent (it then maps to an empty list). ``roles`` names what
    sets a topic (e.g. ``{'/x': 'data.trajectory_topic'}``) in the missing-topic error. Messages
    are decoded with the definitions the bag embeds (:data:`TYPESTORE`'s when it has none).
    """
    path = Path(path)
    topics = list_topics(path)
    if not topics or sum(t.count for t in topics.values()) == 0:
        raise BagError(f"{path}: empty bag (no messages)")
    for topic, msgtype in wanted.items():
        if topic not in topics and topic in optional:
            continue
        if topic not in topics:
            role = f" ({roles[topic]})" if roles and topic in roles else ""
            raise BagError(f"{path}: missing topic {topic}{role}; the bag has {sorted(topics)}")
        if topics[topic].msgtype != msgtype:
            raise BagError(f"{path}: topic {topic} has type {topics[topic].msgtype}, expected {msgtype}")
    out: dict[str, list[tuple[int, Any]]] = {topic: [] for topic in wanted}
    for raw, decode in _iter_messages(path, list(wanted)):
        try:
            msg = decode()
        except Exception as exc:  # the boundary: what the CDR deserializer raises on damaged bytes
            msg = _decode_older_layout(raw)
            if msg is None:
                raise BagError(f"{path}: cannot decode message #{len(out[raw.topic])} on {raw.topic} ({raw.msgtype}): "
                               f"{_one_line(exc)}") from exc
        out[raw.topic].append((raw.log_time_ns, msg))
    return out


def _decode_older_layout(raw: RawMessage) -> Any | None:
    """``raw`` decoded with the first older layout of its type that fits it exactly, else None."""
    for _, store in _OLDER_LAYOUTS.get(raw.msgtype, []):
        try:
            return store.deserialize_cdr(raw.data, raw.msgtype)
        except Exception:  # noqa: BLE001 - not this layout; the caller reports the current layout's error
            continue
    return None


def action_topic_roles(cfg: DataConfig) -> dict[str, str]:
    """``{action topic: 'data.<key> for data.action_source <source>'}`` for :func:`read_topics`' errors."""
    key = ACTION_TOPIC_KEYS.get(cfg.action_source)
    return {} if key is None else {str(cfg.action_topic): f"data.{key} for data.action_source {cfg.action_source!r}"}


def stamp_or_log(msg: Any, log_time_ns: int) -> int:
    """The message's header stamp (ns), or its log time when it has no header or a zero stamp."""
    header = getattr(msg, "header", None)
    stamp = 0 if header is None else stamp_to_ns(header.stamp)
    return stamp if stamp != 0 else log_time_ns


def joint_arrays(path: Path, messages: list[tuple[int, Any]], joint_names: Sequence[str] | None
                  ) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, int]:
    """JointState messages → (names, times (T,), positions (T, J), velocities (T, J), skipped count)."""
    if not messages:
        raise BagError(f"{path}: no JointState messages")
    names = list(joint_names) if joint_names is not None else list(messages[0][1].name)
    seen: set[str] = set()
    for _, msg in messages:
        seen.update(msg.name)
    unknown = [n for n in names if n not in seen]
    if unknown:
        raise BagError(f"{path}: unknown joint name(s) {unknown}; the bag has {sorted(seen)}")
    times, pos, vel, skipped = [], [], [], 0
    for log_time, msg in messages:
        index = {n: i for i, n in enumerate(msg.name)}
        # An empty velocity array is legal in JointState (drivers without velocity); it becomes
        # NaN, and only an observation that needs velocities rejects it (dataset.observations_at).
        if any(n not in index for n in names) or len(msg.position) != len(msg.name) or len(msg.velocity) not in (0, len(msg.name)):
            skipped += 1
            continue
        cols = [index[n] for n in names]
        times.append(stamp_or_log(msg, log_time))
        pos.append(np.asarray(msg.position, dtype=np.float64)[cols])
        vel.append(np.asarray(msg.velocity, dtype=np.float64)[cols] if len(msg.velocity) else np.full(len(cols), np.nan))
    if not times:
        raise BagError(f"{path}: no JointState message carries positions for all of {names}")
    return names, np.array(times, np.int64), np.array(pos), np.array(vel), skipped


def trajectory_targets(path: Path, topic: str, messages: list[tuple[int, Any]], joint_names: Sequence[str]
                       ) -> TargetSeries:
    """JointTrajectory messages (log time ns, msg), in receipt order, → the targets a JTC executing them holds.

    Each trajectory starts at its header.stamp (its log time when the stamp is zero) and is
    spliced onto the previous ones (:func:`~flow_policy_ros.data.targets.spliced_trajectories`);
    columns follow ``joint_names``, matched by name in every message.

    Raises BagError naming the bag, ``topic`` and the message: no message, no point at all, a
    missing joint, a start more than a second before the previous one's (another clock), point
    times that do not increase.
    """
    if not messages:
        raise BagError(f"{path}: {topic} holds no messages")
    starts, offsets, positions = [], [], []
    for i, (log_time, msg) in enumerate(messages):
        try:
            _, point_offsets, points = trajectory_arrays(msg, joint_names)
        except TrajectoryError as exc:
            raise BagError(f"{path}: {topic} message #{i}: {exc}") from exc
        starts.append(stamp_or_log(msg, log_time))
        offsets.append(point_offsets)
        positions.append(points)
    try:
        return spliced_trajectories(joint_names, starts, offsets, positions)
    except TimeSeriesError as exc:
        raise BagError(f"{path}: {topic}: {exc}") from exc


def _reference_positions(msg: Any) -> np.ndarray:
    """A controller state's reference positions; ``desired`` where ``reference`` is absent or empty (Foxy, Galactic)."""
    for field in ("reference", "desired"):
        point = getattr(msg, field, None)
        if point is not None and len(point.positions):
            return np.asarray(point.positions, np.float64)
    return np.zeros(0)


def controller_state_targets(path: Path, topic: str, messages: list[tuple[int, Any]], joint_names: Sequence[str]
                             ) -> TargetSeries:
    """JointTrajectoryControllerState messages (log time ns, msg) → their reference positions over time.

    Times are header.stamp (log time when zero), which must increase; values are
    ``reference.positions`` (``desired.positions`` where that is empty: Foxy, Galactic), columns
    in ``joint_names`` order, matched by name in every message; linear between the samples.

    Raises BagError naming the bag, ``topic`` and the message: no message, a message without
    reference positions or with a missing joint, stamps that do not increase.
    """
    if not messages:
        raise BagError(f"{path}: {topic} holds no messages")
    times, values = [], []
    for i, (log_time, msg) in enumerate(messages):
        names = list(msg.joint_names)
        ref = _reference_positions(msg)
        if len(ref) == 0:
            raise BagError(f"{path}: {topic} message #{i} has no reference positions")
        if len(ref) != len(names):
            raise BagError(f"{path}: {topic} message #{i} has {len(ref)} reference positions for the "
                           f"{len(names)} joints {names}")
        index = {n: j for j, n in enumerate(names)}
        missing = [n for n in joint_names if n not in index]
        if missing:
            raise BagError(f"{path}: {topic} message #{i} lacks joint(s) {missing}; it has {names}")
        times.append(stamp_or_log(msg, log_time))
        values.append(ref[[index[n] for n in joint_names]])
    try:
        return sampled_targets(joint_names, np.array(times, np.int64), np.array(values))
    except TimeSeriesError as exc:
        raise BagError(f"{path}: {topic}: {exc}") from exc


def _read_metadata(path: Path) -> dict[str, Any]:
    file = path / EPISODE_JSON
    if not file.is_file():
        return {}
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise BagError(f"{file}: cannot read it ({_one_line(exc)})") from exc
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError; nesting too deep
        raise BagError(f"{file}: not valid JSON ({_one_line(exc)})") from exc
    if not isinstance(data, dict):
        raise BagError(f"{file}: expected a JSON object, got {type(data).__name__}")
    return data


def read_episode_bag(path: Path, data_config: DataConfig = DEFAULT_DATA_CONFIG,
                     joint_names: Sequence[str] | None = None,
                     command_joint_names: Sequence[str] | None = None,
                     vector_features: Sequence[FeatureSpec] | None = None) -> EpisodeRecording:
    """Read one episode bag (mcap or sqlite3) into an :class:`EpisodeRecording`.

    Args:
        path: rosbag2 directory.
        data_config: topic names and the command joint order.
        joint_names: joint order of the returned positions/velocities (default: the names of
            the first JointState message). Matched by name in every message.
        command_joint_names: joint order of the command arrays; default
            ``data_config.command_joint_names``, else the joint-state joint order.
        vector_features: the vector observation features to read, each from
            ``data_config.feature_topic(feature)`` (None: the goal, as the default spec observes).

    Returns:
        The recording; times are int ns (stamp, or log time when the stamp is zero).

    Raises:
        BagError: missing path, not a bag, corrupt/truncated file, empty bag, missing topic,
            wrong message type, unknown joint, command width differing from the command joints.
            The command topic is read only for ``data_config.action_source == 'commands'`` and
            may be absent for 'joint_states'; 'joint_trajectory' and 'controller_state' read
            their topic into ``targets`` (joints ``command_joint_names``, matched by name).
    """
    path = Path(path)
    cfg = data_config
    action_topic = cfg.action_topic or cfg.command_topic
    vectors_wanted = (goal_feature(),) if vector_features is None else tuple(vector_features)
    vector_topics = {f.name: cfg.feature_topic(f) for f in vectors_wanted}
    wanted = {cfg.joint_states_topic: JOINT_STATE, **{vector_topics[f.name]: f.msg_type for f in vectors_wanted},
              action_topic: ACTION_TOPIC_TYPES.get(cfg.action_source, FLOAT64_MULTI_ARRAY)}
    msgs = read_topics(path, wanted, optional=[action_topic] if cfg.action_topic is None else [],
                       roles=action_topic_roles(cfg))
    names, times, pos, vel, skipped = joint_arrays(path, msgs[cfg.joint_states_topic], joint_names)
    vectors = {f.name: _vector_arrays(path, vector_topics[f.name], f, msgs[vector_topics[f.name]]) for f in vectors_wanted}
    goal_times, goals = vectors.pop(GOAL_FEATURE, (np.zeros(0, np.int64), np.zeros((0, 3))))
    cmd_names = list(command_joint_names or cfg.command_joint_names or names)
    targets = None
    if cfg.action_source == "joint_trajectory":
        targets = trajectory_targets(path, action_topic, msgs[action_topic], cmd_names)
    elif cfg.action_source == "controller_state":
        targets = controller_state_targets(path, action_topic, msgs[action_topic], cmd_names)
    cmd_msgs = msgs[action_topic] if targets is None else []
    for _, m in cmd_msgs:
        if len(m.data) != len(cmd_names):
            raise BagError(f"{path}: {cfg.command_topic} has {len(m.data)} values per message, "
                           f"expected {len(cmd_names)} for command joints {cmd_names}")
    cmd_times = np.array([t for t, _ in cmd_msgs], np.int64)
    commands = np.array([m.data for _, m in cmd_msgs], np.float64).reshape(len(cmd_msgs), len(cmd_names))
    metadata = _read_metadata(path)
    if skipped:
        metadata["skipped_joint_states"] = skipped
    return EpisodeRecording(
        joint_names=names, joint_times_ns=times, positions=pos, velocities=vel,
        goal_times_ns=goal_times, goals=goals, command_joint_names=cmd_names,
        command_times_ns=cmd_times, commands=commands, metadata=metadata, targets=targets, vectors=vectors,
    )


def _vector_arrays(path: Path, topic: str, feature: FeatureSpec, msgs: list[tuple[int, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """(times (V,) ns, values (V, size)) of a vector feature's messages; NaN values are kept (the
    dataset's checks name them), a wrong size is a BagError."""
    values_of = VECTOR_READERS[feature.msg_type][0]
    values = [np.asarray(values_of(m), np.float64).reshape(-1) for _, m in msgs]
    for i, row in enumerate(values):
        if row.size != feature.size:
            raise BagError(f"{path}: {topic} message {i} carries {row.size} values, the model's {feature.name} takes {feature.size}")
    times = np.array([stamp_or_log(m, t) for t, m in msgs], np.int64)
    return times, np.array(values, np.float64).reshape(len(msgs), feature.size)


def find_episodes(root: Path) -> list[Path]:
    """rosbag2 directories (with metadata.yaml) at or under ``root``, sorted; hidden dirs are skipped."""
    if (root / "metadata.yaml").is_file():
        return [root]
    found = [p.parent for p in root.rglob("metadata.yaml")]
    return sorted(p for p in found if not any(part.startswith(".") for part in p.relative_to(root).parts))
