"""ROS messages ↔ numpy: joints matched by NAME, observation vectors, camera frames, chunks as trajectories.

The numpy core (:func:`values_by_name`, :func:`build_observation`) lives in
:mod:`flow_policy_ros.runtime.observation`; the helpers here wrap it for sensor_msgs/JointState,
geometry_msgs/PointStamped, trajectory_msgs/JointTrajectory and std_msgs/Float64MultiArray.
No rclpy here: stamps are passed in as integer nanoseconds.

Units: joint positions in rad, velocities in rad/s, goal in m, periods in s, stamps in ns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from builtin_interfaces.msg import Duration, Time
from geometry_msgs.msg import PointStamped, PoseStamped
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Float64MultiArray, MultiArrayDimension
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from flow_policy_ros.contract import IMAGE_MESSAGE_TYPES, FeatureSpec, ObservationSpec
from flow_policy_ros.data.images import ENCODINGS, ImageDecodeError, decode_compressed, decode_image
from flow_policy_ros.errors import ConfigError
from flow_policy_ros.runtime.observation import (  # noqa: F401 - re-exported for the nodes
    MalformedMessageError,
    MissingJointError,
    NonFiniteValueError,
    build_observation,
    values_by_name,
    vector_values,
)


def joint_state_arrays(
    msg: JointState, joint_names: Sequence[str], need_velocity: bool = True
) -> tuple[np.ndarray, np.ndarray | None]:
    """Positions (rad) and velocities (rad/s) of ``joint_names`` from a JointState, by name.

    Velocities are None when ``need_velocity`` is False; when needed, an empty velocity
    array raises :class:`MissingJointError`.
    """
    positions = values_by_name(msg.name, msg.position, joint_names, "position")
    if not need_velocity:
        return positions, None
    if len(msg.velocity) == 0:
        raise MissingJointError("JointState has no velocity values but the model observes joint velocities")
    return positions, values_by_name(msg.name, msg.velocity, joint_names, "velocity")


class JointStateReader:
    """Reads what the policy needs from each JointState, by name, at message rate.

    Same results and errors as :func:`joint_state_arrays` + :func:`values_by_name`, faster on
    the common case of a driver that sends the same joint names in every message: the name ->
    index mapping is computed once per distinct ``msg.name`` list and the values are gathered
    with one numpy fancy index from the message's array (rclpy gives ``array.array('d')``, read
    without a copy). Any inconsistency (sizes, a missing joint, NaN/inf) takes the reference
    path, which raises the usual :class:`~flow_policy_ros.errors.ObservationError` naming it.

    Args:
        observed: the observation's joint names (model order).
        action: the action joints' names (model order), whose measured positions are read too.
        need_velocity: read observed velocities as well.
    """

    def __init__(self, observed: Sequence[str], action: Sequence[str], need_velocity: bool) -> None:
        self.observed, self.action, self.need_velocity = tuple(observed), tuple(action), need_velocity
        self._names: list[str] | None = None
        self._observed_index = self._action_index = np.zeros(0, dtype=np.intp)

    def read(self, msg: JointState) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """(positions (J,) rad, velocities (J,) rad/s or None, measured action positions (A,) rad), float64."""
        names = msg.name
        if names != self._names and not self._index(names):
            return self._reference(msg)  # names repeat or lack a joint: raises the error naming it
        position = np.asarray(msg.position, dtype=np.float64)
        velocity = np.asarray(msg.velocity, dtype=np.float64) if self.need_velocity else None
        if (position.shape != (len(names),) or (velocity is not None and velocity.shape != (len(names),))
                or not np.isfinite(position[self._observed_index]).all()
                or not np.isfinite(position[self._action_index]).all()
                or (velocity is not None and not np.isfinite(velocity[self._observed_index]).all())):
            return self._reference(msg)  # raises the error that names the problem
        return (position[self._observed_index], None if velocity is None else velocity[self._observed_index],
                position[self._action_index])

    def _index(self, names: list[str]) -> bool:
        """Cache the name -> index mapping of ``names``; False (nothing cached) if it has none."""
        index = {name: i for i, name in enumerate(names)}
        self._names = None
        if len(index) != len(names) or any(n not in index for n in self.observed + self.action):
            return False
        self._names = list(names)
        self._observed_index = np.array([index[n] for n in self.observed], dtype=np.intp)
        self._action_index = np.array([index[n] for n in self.action], dtype=np.intp)
        return True

    def _reference(self, msg: JointState) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        positions, velocities = joint_state_arrays(msg, self.observed, self.need_velocity)
        return positions, velocities, values_by_name(msg.name, msg.position, self.action, "position")


def point_array(msg: PointStamped) -> np.ndarray:
    """(3,) goal position (m) from a PointStamped; NaN/inf raise :class:`NonFiniteValueError`."""
    goal = np.array([msg.point.x, msg.point.y, msg.point.z], dtype=np.float64)
    if not np.all(np.isfinite(goal)):
        raise NonFiniteValueError(f"goal point {goal.tolist()} has NaN/inf")
    return goal


#: The rclpy class of each vector feature message type (values are read by runtime.observation).
VECTOR_MESSAGE_CLASSES: dict[str, type] = {
    "geometry_msgs/msg/PointStamped": PointStamped,
    "geometry_msgs/msg/PoseStamped": PoseStamped,
    "std_msgs/msg/Float64MultiArray": Float64MultiArray,
}


def joint_states_topic(spec: ObservationSpec) -> str:
    """The JointState topic: the joint features' (one topic for all), 'joint_states' if none is observed
    (the measured action joints come from there all the same)."""
    topics = {f.topic for f in spec.features if f.kind in ("joint_positions", "joint_velocities")}
    if len(topics) > 1:
        raise ValueError(f"observation: joint features on different topics {sorted(topics)}; one JointState topic is read")
    return topics.pop() if topics else "joint_states"


def vector_message_class(feature: FeatureSpec) -> type:
    """The rclpy message class a vector feature is subscribed with."""
    return VECTOR_MESSAGE_CLASSES[feature.msg_type]


#: The rclpy class of each image message type.
IMAGE_MESSAGE_CLASSES: dict[str, type] = {IMAGE_MESSAGE_TYPES[0]: Image, IMAGE_MESSAGE_TYPES[1]: CompressedImage}


@dataclass(frozen=True)
class CameraTopic:
    """Where policy_node reads one image feature: ``topic`` (relative: remappable) as ``msg_type``
    (sensor_msgs/msg/Image, or CompressedImage for a topic ending in ``/compressed``)."""

    feature: FeatureSpec
    topic: str
    msg_type: str

    @property
    def message_class(self) -> type:
        return IMAGE_MESSAGE_CLASSES[self.msg_type]


def camera_topics(spec: ObservationSpec, entries: Sequence[str]) -> list[CameraTopic]:
    """The topic of each image feature of ``spec``, from the ``camera_topics`` parameter.

    ``entries``: ``'<camera>=<topic>'`` strings. Empty: every camera on its spec topic
    (``camera/<name>/image_raw``, or ``.../compressed`` for a model trained on CompressedImage).
    Given: they must name every camera of the model, each once, and no other (ConfigError in
    one line naming the camera otherwise); a topic ending in ``/compressed`` is read as
    CompressedImage, any other as Image.
    """
    features = {f.camera: f for f in spec.image_features}
    if not entries:
        return [CameraTopic(f, f.topic, f.msg_type) for f in features.values()]
    mapped: dict[str, str] = {}
    for entry in entries:
        camera, sep, topic = (part.strip() for part in entry.partition("="))
        if not sep or not camera or not topic:
            raise ConfigError(f"parameter camera_topics: entry {entry!r} is not '<camera>=<topic>'")
        if camera not in features:
            raise ConfigError(f"parameter camera_topics names camera {camera!r}, the model has cameras {sorted(features)}")
        if camera in mapped:
            raise ConfigError(f"parameter camera_topics names camera {camera!r} twice")
        mapped[camera] = topic
    missing = [c for c in features if c not in mapped]
    if missing:
        raise ConfigError(f"the model needs camera(s) {missing} but parameter camera_topics does not name them "
                          f"(it maps {sorted(mapped)}); add '<camera>=<topic>' entries or leave it empty")
    return [CameraTopic(f, mapped[c], IMAGE_MESSAGE_TYPES[1 if mapped[c].rstrip("/").endswith("/compressed") else 0])
            for c, f in features.items()]


def image_frame(camera: CameraTopic, msg: Image | CompressedImage) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a frame for ``camera.feature``, decoded without cv_bridge.

    Image: rgb8/bgr8 with numpy; CompressedImage: jpeg/png with Pillow. The frame must have the
    model's size exactly (no resizing). Raises MalformedMessageError in one line naming the topic,
    what the model expects and what was received (wrong encoding or format, wrong size, corrupt data).
    """
    feature = camera.feature
    height, width, _ = feature.image_shape
    try:
        if camera.msg_type == IMAGE_MESSAGE_TYPES[1]:
            frame = decode_compressed(msg.format, msg.data)
        else:
            if msg.encoding not in ENCODINGS:
                raise ImageDecodeError(f"encoding {msg.encoding!r}, expected one of {list(ENCODINGS)}")
            if (msg.height, msg.width) != (height, width):
                raise ImageDecodeError(f"frame {msg.width}x{msg.height}, expected {width}x{height} (width x height)")
            frame = decode_image(msg.height, msg.width, msg.encoding, msg.step, np.frombuffer(msg.data, np.uint8))
    except ImageDecodeError as exc:
        raise MalformedMessageError(f"{camera.topic}: {exc} for {feature.name}") from exc
    if frame.shape != feature.image_shape:
        raise MalformedMessageError(f"{camera.topic}: frame {frame.shape[1]}x{frame.shape[0]}, expected {width}x{height} "
                                    f"(width x height) for {feature.name}")
    return frame


def time_msg(stamp_ns: int) -> Time:
    """builtin_interfaces/Time from integer nanoseconds."""
    sec, nanosec = divmod(int(stamp_ns), 1_000_000_000)
    return Time(sec=sec, nanosec=nanosec)


def duration_msg(seconds: float) -> Duration:
    """builtin_interfaces/Duration from seconds (rounded to ns)."""
    sec, nanosec = divmod(round(seconds * 1e9), 1_000_000_000)
    return Duration(sec=int(sec), nanosec=int(nanosec))


def chunk_to_trajectory_msg(
    actions: np.ndarray, joint_names: Sequence[str], dt: float, stamp_ns: int, frame_id: str = ""
) -> JointTrajectory:
    """A chunk (H, A) as a JointTrajectory.

    Point i (position targets in rad) has ``time_from_start = (i + 1)·dt``: it is the target
    to reach one period after it is commanded. ``header.stamp`` (``stamp_ns``) is the time at
    which point 0 is commanded, i.e. the control tick it applies to.
    """
    actions = np.asarray(actions, dtype=np.float64)
    if actions.ndim != 2 or actions.shape[1] != len(joint_names):
        raise ValueError(f"actions must have shape (H, {len(joint_names)}), got {actions.shape}")
    msg = JointTrajectory()
    msg.header.stamp = time_msg(stamp_ns)
    msg.header.frame_id = frame_id
    msg.joint_names = list(joint_names)
    msg.points = [
        JointTrajectoryPoint(positions=row.tolist(), time_from_start=duration_msg((i + 1) * dt))
        for i, row in enumerate(actions)
    ]
    return msg


def action_to_multiarray_msg(action: np.ndarray, joint_names: Sequence[str] | None = None) -> Float64MultiArray:
    """One action (A,) (rad, model joint order) as a Float64MultiArray for a forward position controller.

    When ``joint_names`` are given, the layout has one dimension labelled with them (joined by ',').
    """
    action = np.asarray(action, dtype=np.float64).reshape(-1)
    msg = Float64MultiArray(data=action.tolist())
    label = ",".join(joint_names) if joint_names is not None else "joints"
    msg.layout.dim = [MultiArrayDimension(label=label, size=int(action.size), stride=int(action.size))]
    return msg
