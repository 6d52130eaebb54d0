"""``sim_node``: the PyBullet iiwa (``sim.SimEnv``) as a real-time ROS 2 driver.

Thin rclpy glue: physics, tasks and success monitoring come from ``sim/``; the
JointTrajectoryController-like setpoint generator is the pure ``sim.trajectory``.

Timing. Physics runs at 240 Hz in its own thread, stepped against the wall clock: physics step
n of an episode is published at wall time ``t_start + n / 240`` and stamped with exactly that
time (sim-synchronised wall time, the same clock as ``policy_node``'s stamps). If the machine
falls behind by more than 50 ms the schedule is re-anchored (counted as ``realtime_resyncs``).
Each physics step the setpoint (and feed-forward velocity) is sampled from the trajectory
follower at the step's end time; with no input the arm holds its last setpoint (never drifts).

Topics (all remappable):

| dir | topic | type | QoS |
|---|---|---|---|
| out | ``joint_states`` | sensor_msgs/JointState (``joint_state_rate_hz``, default 120 Hz) | sensor data (best effort) |
| out | ``goal`` | geometry_msgs/PointStamped, frame ``world``, once per episode; not for camera tasks | reliable, transient local |
| out | ``camera/<name>/image_raw`` | sensor_msgs/Image rgb8, ``<name>_optical_frame``, 12.5 Hz, camera on | sensor data |
| out | ``episode_outcome`` | std_msgs/String, JSON ``{episode, seed, task, success, route, time_to_goal_s}`` | latched, depth 100 |
| out | ``/diagnostics`` | diagnostic_msgs/DiagnosticArray at 1 Hz (``sim_node: sim``) | default |
| in | ``joint_trajectory`` | trajectory_msgs/JointTrajectory: JTC semantics (see ``sim.trajectory``) | reliable |
| in | ``commands`` | std_msgs/Float64MultiArray, ``command_joint_names`` order, reached one control period later | reliable |

Episodes. The first episode starts once a publisher on ``commands`` or ``joint_trajectory``
is matched (``wait_for_commander``). Each episode: reset the world to the task's seed, publish
the goal, hold still for ``reset_pause_s`` (joint states published, commands ignored, so the
commander can settle onto the new episode), then run in real time until the time limit, a
collision or (``end_on_success``) success, and publish the outcome. Sim time 0 of the episode
(``time_to_goal_s``) is the end of the pause. After the last of a finite number of episodes
(``episodes`` or ``seeds``) the node waits until every subscriber has acknowledged the outcomes
(at most ``FINISH_ACK_TIMEOUT_S``), holds the arm for ``FINISH_HOLD_S`` and ends the process with
exit status 0, so a launch file or ``flow-policy demo`` ends with it. With neither set it runs
until stopped.

Resets are driver restarts. To the policy, a reset teleports the arm away from its last command:
the policy node holds ("not tracking") and restarts from the arm only when its lifecycle is
re-activated (``runtime/tracking.py``). So each reset re-activates ``reactivate_node`` (default
``/flow_policy_node``, the policy node of ``flow-policy demo`` and the launch files) through its
``change_state`` service (deactivate, then activate) at the start of the reset pause, when that
node is there and active; with the parameter empty, or no such service, nothing is called.

Camera. ``camera`` = ``auto`` (default) turns the camera on for camera tasks (``reach_object``)
only, so the other tasks render nothing; ``enabled``/``disabled`` force it. Its pose, field of
view, size and rate are the ``camera_*`` parameters (:class:`~flow_policy_ros.sim.camera.CameraSpec`).
Frame k of an episode is rendered in the physics thread at physics step ``camera.frame_step(k)``
(episode-relative, the schedule of ``SimEnv``), after that step's joint state is published, and
stamped with the step's time (the joint states' clock); during the reset pause the (static)
scene is rendered once and republished at the camera rate with fresh stamps. Rendering takes
~10 ms per 96 x 96 frame on this machine (more under load), so an image arrives about one render
time after its stamp, like a real camera's transfer delay, and the physics steps after a frame
run that much late until they catch up (stamps stay exact). Camera tasks have no goal topic: the
policy must find the object in the image.

Recording. With ``record_path`` set, each episode is written to
``<record_path>/episode_<NNNN>_seed<S>`` (rosbag2, via ``bag.BagWriter``) with
``/joint_states``, ``/goal`` (``/object_position`` for camera tasks), the camera's images,
``/commands``, ``/joint_trajectory``, ``/diagnostics`` and an
``episode.json`` holding the outcome; ``flow-policy replay`` reads these directories.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PointStamped
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState
from rcl_interfaces.msg import ParameterType
from rclpy.duration import Duration
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.serialization import serialize_message
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float64MultiArray, String
from trajectory_msgs.msg import JointTrajectory

from flow_policy_ros.contract import IIWA_JOINT_NAMES
from flow_policy_ros.data import bag as bagio
from flow_policy_ros.data.images import IMAGE, image_fields
from flow_policy_ros.errors import FlowPolicyError
from flow_policy_ros.ros.diagnostics import diagnostic_array
from flow_policy_ros.ros.messages import time_msg
from flow_policy_ros.ros.node_runner import spin_node
from flow_policy_ros.ros.parameters import ParameterSpec, declare_all
from flow_policy_ros.ros.realtime import set_thread_priority
from flow_policy_ros.runtime.observation import stamp_to_ns, trajectory_arrays
from flow_policy_ros.sim.arm import PHYSICS_HZ
from flow_policy_ros.sim.camera import CAMERA_MODES, CameraSpec, camera_enabled, camera_from_parameters
from flow_policy_ros.sim.collect import OBJECT_POSITION_TOPIC
from flow_policy_ros.sim.env import SimEnv, sim_time_ns
from flow_policy_ros.sim.tasks import CAMERA_TASKS, TASKS, EpisodeSpec, sample_episode
from flow_policy_ros.sim.trajectory import TrajectoryFollower

NODE_NAME = "sim_node"
#: Falling further behind the wall clock than this (ns) re-anchors the real-time schedule.
MAX_LAG_NS = 50_000_000
#: After the last episode: wait this long at most for a subscriber of the outcomes to match, then
#: as long for the subscribers to acknowledge them (s); then hold the arm (publishing joint
#: states) FINISH_HOLD_S before the process ends.
FINISH_ACK_TIMEOUT_S = 2.0
#: How long a lifecycle transition of ``reactivate_node`` may take (s) before the reset goes on without it.
REACTIVATE_TIMEOUT_S = 2.0
FINISH_HOLD_S = 0.2
DIAGNOSTIC_STRING = "diagnostic_msgs/msg/DiagnosticArray"


@dataclass(frozen=True)
class SimNodeParams:
    """The node's parameters after declaration (see ``PARAMETERS`` for descriptions)."""

    task: str
    seeds: tuple[int, ...]
    episodes: int
    control_rate_hz: float
    joint_state_rate_hz: float
    command_joint_names: tuple[str, ...]
    end_on_success: bool
    time_limit_s: float
    reset_pause_s: float
    wait_for_commander: bool
    record_path: str
    record_storage: str
    thread_priority: int
    camera: str
    camera_name: str
    camera_eye: tuple[float, ...]
    camera_target: tuple[float, ...]
    camera_up: tuple[float, ...]
    camera_fov_deg: float
    camera_width: int
    camera_height: int
    camera_rate_hz: float
    reactivate_node: str

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"parameter task must be one of {TASKS}, got {self.task!r}")
        if self.camera not in CAMERA_MODES:
            raise ValueError(f"parameter camera must be one of {CAMERA_MODES}, got {self.camera!r}")
        self.camera_spec  # noqa: B018 - validates the camera_* parameters now, with the parameter's name
        if sorted(self.command_joint_names) != sorted(IIWA_JOINT_NAMES):
            raise ValueError(f"parameter command_joint_names must be a permutation of {list(IIWA_JOINT_NAMES)}, "
                             f"got {list(self.command_joint_names)}")
        if self.seeds and self.episodes > len(self.seeds):
            raise ValueError(f"parameter episodes={self.episodes} exceeds the {len(self.seeds)} given seeds")
        if self.record_storage not in ("mcap", "sqlite3"):
            raise ValueError(f"parameter record_storage must be 'mcap' or 'sqlite3', got {self.record_storage!r}")

    @property
    def camera_spec(self) -> CameraSpec | None:
        """The camera when it is on (``camera`` mode and task), else None."""
        if not camera_enabled(self.camera, self.task in CAMERA_TASKS):
            return None
        try:
            return camera_from_parameters({f: getattr(self, f) for f in PARAMETERS if f.startswith("camera_")})
        except (TypeError, ValueError) as exc:
            raise ValueError(f"parameters camera_*: {exc}") from exc

    @property
    def publishes_goal(self) -> bool:
        """Camera tasks have no goal topic."""
        return self.task not in CAMERA_TASKS

    @property
    def episode_count(self) -> int | None:
        """Episodes to run; None = forever."""
        if self.episodes > 0:
            return self.episodes
        return len(self.seeds) if self.seeds else None

    def seed(self, episode: int) -> int:
        return self.seeds[episode] if self.seeds else episode

    @property
    def publish_every(self) -> int:
        """Physics steps between joint state messages."""
        return max(1, round(PHYSICS_HZ / self.joint_state_rate_hz))


_T = ParameterType
#: The node's parameters, all read-only (fixed for the node's lifetime).
PARAMETERS: dict[str, ParameterSpec] = {
    "task": ParameterSpec("reach", _T.PARAMETER_STRING, f"sim task, one of {TASKS}"),
    "seeds": ParameterSpec(Parameter.Type.INTEGER_ARRAY, _T.PARAMETER_INTEGER_ARRAY,
                           "episode seeds in order; unset = 0, 1, 2, ..."),
    "episodes": ParameterSpec(0, _T.PARAMETER_INTEGER, "episodes to run; 0 = len(seeds), or forever without seeds",
                              low=0, high=1_000_000),
    "control_rate_hz": ParameterSpec(50.0, _T.PARAMETER_DOUBLE,
                                     "rate of stream commands (Hz): a command is reached 1/rate s later", low=1.0, high=240.0),
    "joint_state_rate_hz": ParameterSpec(120.0, _T.PARAMETER_DOUBLE, "joint_states publish rate (Hz), rounded to 240/n",
                                         low=10.0, high=240.0),
    "command_joint_names": ParameterSpec(list(IIWA_JOINT_NAMES), _T.PARAMETER_STRING_ARRAY,
                                         "joint order of the Float64MultiArray on commands (the model's action joints)"),
    "end_on_success": ParameterSpec(True, _T.PARAMETER_BOOL, "end an episode as soon as the goal is reached"),
    "time_limit_s": ParameterSpec(0.0, _T.PARAMETER_DOUBLE, "episode time limit (s); 0 = the task's (6 s)",
                                  low=0.0, high=3600.0),
    "reset_pause_s": ParameterSpec(0.3, _T.PARAMETER_DOUBLE, "hold after each reset, commands ignored (s)", low=0.0, high=10.0),
    "wait_for_commander": ParameterSpec(True, _T.PARAMETER_BOOL,
                                        "start the first episode only once a commands/joint_trajectory publisher is matched"),
    "record_path": ParameterSpec("", _T.PARAMETER_STRING, "directory for one rosbag2 per episode; empty = no recording"),
    "record_storage": ParameterSpec("mcap", _T.PARAMETER_STRING, "rosbag2 storage: 'mcap' or 'sqlite3'"),
    "thread_priority": ParameterSpec(0, _T.PARAMETER_INTEGER, "SCHED_FIFO priority of the physics and executor threads; "
                                     "0 = normal scheduling (falls back with a warning when not permitted)", low=0, high=99),
    "camera": ParameterSpec("auto", _T.PARAMETER_STRING,
                            f"RGB camera, one of {CAMERA_MODES}: auto = on for camera tasks {sorted(CAMERA_TASKS)} only"),
    "camera_name": ParameterSpec(CameraSpec.name, _T.PARAMETER_STRING,
                                 "camera name: topic camera/<name>/image_raw, frame <name>_optical_frame"),
    "camera_eye": ParameterSpec(list(CameraSpec.eye), _T.PARAMETER_DOUBLE_ARRAY, "camera position (m, world frame)"),
    "camera_target": ParameterSpec(list(CameraSpec.target), _T.PARAMETER_DOUBLE_ARRAY,
                                   "point on the optical axis (m, world frame)"),
    "camera_up": ParameterSpec(list(CameraSpec.up), _T.PARAMETER_DOUBLE_ARRAY, "world direction that is up in the image"),
    "camera_fov_deg": ParameterSpec(CameraSpec.fov_deg, _T.PARAMETER_DOUBLE, "vertical field of view (deg)",
                                    low=1.0, high=170.0),
    "camera_width": ParameterSpec(CameraSpec.width, _T.PARAMETER_INTEGER, "image width (pixels)", low=8, high=1024),
    "camera_height": ParameterSpec(CameraSpec.height, _T.PARAMETER_INTEGER, "image height (pixels)", low=8, high=1024),
    "camera_rate_hz": ParameterSpec(CameraSpec.rate_hz, _T.PARAMETER_DOUBLE,
                                    "frame rate (Hz); frame k at physics step ceil(k * 240 / rate)", low=0.1, high=240.0),
    "reactivate_node": ParameterSpec("/flow_policy_node", _T.PARAMETER_STRING,
                                     "lifecycle node re-activated after each reset, when it is there and active: a reset "
                                     "is a driver restart to it, and re-activation its explicit restart; empty = none"),
}


def declare_parameters(node: Node) -> SimNodeParams:
    """Declare every parameter with its descriptor, once, and freeze the values."""
    return SimNodeParams(**declare_all(node, PARAMETERS))


def canonical_cdr(raw: bytes, msgtype: str) -> bytes:
    """rclpy's CDR bytes re-serialized by rosbags: Fast CDR may append bytes after the message,
    which rosbags' reader (and so ``flow-policy replay``) rejects as a size mismatch."""
    msgdef = bagio.TYPESTORE.get_msgdef(msgtype)
    decode = msgdef.deserialize_cdr_le if raw[1] else msgdef.deserialize_cdr_be
    message, _ = decode(raw[4:], 0, msgdef.cls, bagio.TYPESTORE)
    return bytes(bagio.TYPESTORE.serialize_cdr(message, msgtype))


class EpisodeRecorder:
    """One rosbag2 per episode (``bag.BagWriter``), written from several threads (locked)."""

    def __init__(self, root: Path, storage: str) -> None:
        self.root, self.storage = root, storage
        self._lock = threading.Lock()
        self._bag: bagio.BagWriter | None = None

    def open(self, name: str) -> None:
        with self._lock:
            self._bag = bagio.BagWriter(self.root / name, self.storage).__enter__()

    def write(self, topic: str, msgtype: str, msg: Any, log_time_ns: int) -> None:
        with self._lock:
            if self._bag is not None:
                self._bag.write_raw(topic, msgtype, canonical_cdr(serialize_message(msg), msgtype), log_time_ns)

    def close(self, info: dict[str, Any]) -> None:
        with self._lock:
            if self._bag is not None:
                (self._bag.directory / bagio.EPISODE_JSON).write_text(json.dumps(info, indent=2) + "\n")
                self._bag.__exit__(None, None, None)
                self._bag = None


class SimNode(Node):
    """The simulated arm as a ROS 2 driver; see the module docstring."""

    def __init__(self) -> None:
        super().__init__(NODE_NAME)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.recorder: EpisodeRecorder | None = None
        self.env: SimEnv | None = None
        self.params = p = declare_parameters(self)
        self.env = SimEnv(control_period_s=1.0 / PHYSICS_HZ * round(PHYSICS_HZ / p.control_rate_hz), record=False)
        self.follower = TrajectoryFollower(self.env.arm.observe().positions)
        self._follower_lock = threading.Lock()
        self._command_index = [p.command_joint_names.index(n) for n in IIWA_JOINT_NAMES]
        self.recorder = EpisodeRecorder(Path(p.record_path), p.record_storage) if p.record_path else None
        self.state = "waiting"  # waiting | pause | running | done
        self.episode = -1
        self.spec: EpisodeSpec | None = None
        self._accept_after_ns = 2**62  # commands received before this (ns) are ignored
        self.rejected = 0
        self.commands_received = 0
        self.trajectories_received = 0
        self.resyncs = 0
        self.joint_states_sent = 0
        self.images_sent = 0
        self.camera = p.camera_spec
        self.outcomes: list[dict[str, Any]] = []
        self.reactivations = 0
        self._lifecycle = (self.create_client(ChangeState, f"{p.reactivate_node.rstrip('/')}/change_state")
                           if p.reactivate_node else None)

        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        outcomes = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self._joint_pub = self.create_publisher(JointState, "joint_states", qos_profile_sensor_data)
        self._goal_pub = self.create_publisher(PointStamped, "goal", latched) if p.publishes_goal else None
        self._image_pub = (None if self.camera is None else
                           self.create_publisher(Image, self.camera.topic, qos_profile_sensor_data))
        self._outcome_pub = self.create_publisher(String, "episode_outcome", outcomes)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._cmd_sub = self.create_subscription(Float64MultiArray, "commands", self._on_command, reliable)
        self._traj_sub = self.create_subscription(JointTrajectory, "joint_trajectory", self._on_trajectory, reliable)
        if self.recorder is not None:
            self.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        self.create_timer(1.0, self._publish_diagnostics)
        self._finished = self.create_guard_condition(self.context.try_shutdown)
        self._thread = threading.Thread(target=self._run, name="physics", daemon=True)
        self._thread.start()
        cam = self.camera
        camera_info = "off" if cam is None else f"{cam.topic} {cam.width}x{cam.height} at {cam.rate_hz:g} Hz"
        self.get_logger().info(
            f"task {p.task}, episodes {p.episode_count or 'forever'}, joint states at {PHYSICS_HZ / p.publish_every:g} Hz, "
            f"camera {camera_info}, "
            f"goal topic {'on' if p.publishes_goal else 'off'}, recording to {p.record_path or '(off)'}")

    # -- commands (executor thread) -----------------------------------------------------------
    def _reject(self, reason: str) -> None:
        self.rejected += 1
        self.get_logger().warning(f"rejected message ({self.rejected} so far): {reason}", throttle_duration_sec=1.0)

    def _on_command(self, msg: Float64MultiArray) -> None:
        now_ns = time.time_ns()
        if now_ns < self._accept_after_ns:
            return
        values = np.asarray(msg.data, dtype=np.float64)
        if values.shape != (len(self._command_index),) or not np.all(np.isfinite(values)):
            self._reject(f"commands: expected {len(self._command_index)} finite values, got {values.tolist()}")
            return
        self.commands_received += 1
        with self._follower_lock:
            self.follower.command(values[self._command_index], now_ns, 1.0 / self.params.control_rate_hz)
        if self.recorder is not None:
            self.recorder.write(self._cmd_sub.topic_name, bagio.FLOAT64_MULTI_ARRAY, msg, now_ns)

    def _on_trajectory(self, msg: JointTrajectory) -> None:
        now_ns = time.time_ns()
        if now_ns < self._accept_after_ns:
            return
        try:
            stamp_ns, offsets_ns, positions = trajectory_arrays(msg, IIWA_JOINT_NAMES)
            with self._follower_lock:
                self.follower.set_trajectory(stamp_ns, (offsets_ns * 1e-9).tolist(), positions, now_ns)
        except ValueError as exc:  # TrajectoryError (one class for message and follower errors) is a ValueError
            self._reject(f"joint_trajectory: {exc}")
            return
        self.trajectories_received += 1
        if self.recorder is not None:
            self.recorder.write(self._traj_sub.topic_name, bagio.JOINT_TRAJECTORY, msg, now_ns)

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        self.recorder.write("/diagnostics", DIAGNOSTIC_STRING, msg, time.time_ns())

    # -- real-time loop (physics thread) --------------------------------------------------------
    def _joint_state(self, stamp_ns: int) -> JointState:
        state = self.env.arm.observe()
        msg = JointState(name=list(IIWA_JOINT_NAMES), position=state.positions.tolist(), velocity=state.velocities.tolist())
        msg.header.stamp = time_msg(stamp_ns)
        return msg

    def _publish_joint_state(self, msg: JointState) -> None:
        self._joint_pub.publish(msg)
        self.joint_states_sent += 1
        if self.recorder is not None and self.state == "running":
            stamp_ns = stamp_to_ns(msg.header.stamp)
            self.recorder.write(self._joint_pub.topic_name, bagio.JOINT_STATE, msg, stamp_ns)

    def _image(self, stamp_ns: int, frame: np.ndarray | None = None) -> Image:
        """The camera's view now (or ``frame``) as an rgb8 Image stamped ``stamp_ns``."""
        frame = self.env.arm.render(self.camera) if frame is None else frame
        fields = image_fields(frame, "rgb8")
        msg = Image(height=fields["height"], width=fields["width"], encoding="rgb8", is_bigendian=0,
                    step=fields["step"])
        msg.data = fields["data"].tobytes()
        msg.header.stamp = time_msg(stamp_ns)
        msg.header.frame_id = self.camera.optical_frame
        return msg

    def _publish_image(self, msg: Image) -> None:
        self._image_pub.publish(msg)
        self.images_sent += 1
        if self.recorder is not None and self.state == "running":
            self.recorder.write(self._image_pub.topic_name, IMAGE, msg, stamp_to_ns(msg.header.stamp))

    def _sleep_until(self, t_ns: int) -> None:
        delay = t_ns - time.time_ns()
        if delay > 0:
            self._stop.wait(delay * 1e-9)

    def _hold_for(self, duration_ns: int) -> None:
        """Publish the resting arm's joint states for ``duration_ns`` without stepping physics."""
        period_ns = self.params.publish_every * 1_000_000_000 // PHYSICS_HZ
        end = time.time_ns() + duration_ns
        t = time.time_ns()
        frame = None if self.camera is None else self.env.arm.render(self.camera)  # the scene is still: render once
        frame_period_ns = 0 if self.camera is None else round(1e9 / self.camera.rate_hz)
        next_frame = t
        while t < end and not self._stop.is_set():
            self._publish_joint_state(self._joint_state(t))
            if frame is not None and t >= next_frame:
                self._publish_image(self._image(t, frame))
                next_frame += frame_period_ns
            t += period_ns
            self._sleep_until(t)

    def _commander_matched(self) -> bool:
        return self._cmd_sub.get_publisher_count() + self._traj_sub.get_publisher_count() > 0

    def _run(self) -> None:
        scheduling = set_thread_priority(self.params.thread_priority)
        if self.params.thread_priority and not scheduling.startswith("SCHED_FIFO"):
            self.get_logger().warning(f"physics thread: {scheduling}")
        try:
            self._run_episodes()
        except Exception:  # noqa: BLE001 - at shutdown rclpy invalidates the context under this thread
            if self._stop.is_set() or not self.context.ok():
                return
            raise

    def _run_episodes(self) -> None:
        p = self.params
        while self.params.wait_for_commander and not self._commander_matched() and not self._stop.is_set():
            self._hold_for(100_000_000)
        count = p.episode_count
        episode = 0
        while not self._stop.is_set() and (count is None or episode < count):
            self._run_episode(episode)
            episode += 1
        if self._stop.is_set():
            return
        self.state = "done"
        # an episode shorter than discovery (a good policy reaches the cube in ~1.5 s) can end before
        # a listener such as `flow-policy demo` has matched: wait for one (bounded), then for its ack
        waited_until = time.monotonic() + FINISH_ACK_TIMEOUT_S
        while self._outcome_pub.get_subscription_count() == 0 and time.monotonic() < waited_until \
                and not self._stop.is_set():
            self._hold_for(50_000_000)
        self._outcome_pub.wait_for_all_acked(Duration(seconds=FINISH_ACK_TIMEOUT_S))
        self._hold_for(round(FINISH_HOLD_S * 1e9))
        self.get_logger().info(f"all {count} episodes done ({sum(o['success'] for o in self.outcomes)} successes): "
                               "shutting down")
        self._finished.trigger()  # the executor thread shuts the context down: main() exits 0, as after SIGINT

    def _run_episode(self, episode: int) -> None:
        p = self.params
        self.episode, seed = episode, p.seed(episode)
        self.spec = spec = sample_episode(p.task, seed)
        self._accept_after_ns = 2**62
        self.env.reset_to(spec)
        with self._follower_lock:
            self.follower.reset(spec.start_q)
        self.state = "pause"
        goal = PointStamped()
        goal.header.frame_id = "world"
        goal.header.stamp = time_msg(time.time_ns())
        goal.point.x, goal.point.y, goal.point.z = (float(v) for v in spec.goal)
        if self._goal_pub is not None:
            self._goal_pub.publish(goal)
        self._reactivate_commander()
        self._hold_for(round(p.reset_pause_s * 1e9))
        start_ns = time.time_ns()
        if self.recorder is not None:
            self.recorder.open(f"episode_{episode:04d}_seed{seed}")
            # camera tasks: the object's true position, for checks and oracles only (never published)
            goal_topic = self._goal_pub.topic_name if self._goal_pub is not None else OBJECT_POSITION_TOPIC
            self.recorder.write(goal_topic, bagio.POINT_STAMPED, goal, start_ns)
        self._accept_after_ns = start_ns
        self.state = "running"
        limit_s = p.time_limit_s or spec.time_limit_s
        env = self.env

        def finished() -> bool:
            return env.collided or env.arm.time_s >= limit_s - 1e-9 or (p.end_on_success and env.success)

        self._run_realtime(finished, monitor=True, start_ns=start_ns)
        if self._stop.is_set() and not finished():
            if self.recorder is not None:
                self.recorder.close({"episode": episode, "seed": seed, "task": p.task, "interrupted": True})
            return
        status = env.status()
        outcome = {"episode": episode, "seed": seed, "task": p.task, "success": status.success, "route": status.route,
                   "time_to_goal_s": status.reached_time_s, "duration_s": status.time_s,
                   "final_distance_m": status.final_distance_m, "min_distance_m": status.min_distance_m,
                   "collision": status.self_collision or status.obstacle_contact}
        self.outcomes.append(outcome)
        self._outcome_pub.publish(String(data=json.dumps(outcome)))
        self.get_logger().info(f"episode {episode} (seed {seed}): {'success' if status.success else 'failure'} "
                               f"after {status.time_s:.2f} s, final distance {status.final_distance_m * 100:.1f} cm")
        if self.recorder is not None:
            self.recorder.close({**spec.to_metadata(), **outcome, "physics_hz": PHYSICS_HZ,
                                 "joint_state_rate_hz": PHYSICS_HZ / p.publish_every})

    def _reactivate_commander(self) -> None:
        """After a reset: deactivate, then activate ``reactivate_node`` if it is active (see the module
        docstring); a node that is not active, or no answer, leaves it as it is (one warning)."""
        client = self._lifecycle
        if client is None or not client.service_is_ready():
            return
        for transition in (Transition.TRANSITION_DEACTIVATE, Transition.TRANSITION_ACTIVATE):
            future = client.call_async(ChangeState.Request(transition=Transition(id=transition)))
            deadline = time.monotonic() + REACTIVATE_TIMEOUT_S
            while not future.done() and time.monotonic() < deadline and not self._stop.is_set():
                self._stop.wait(0.002)
            if not future.done():
                self.get_logger().warning(f"{client.srv_name}: no answer within {REACTIVATE_TIMEOUT_S} s; "
                                          "the policy node was not re-activated after the reset")
                return
            if not future.result().success:  # deactivate refused: the node is not active, nothing to restart
                if transition == Transition.TRANSITION_ACTIVATE:
                    self.get_logger().warning(f"{client.srv_name}: activate refused after the reset; the node is inactive")
                return
        self.reactivations += 1

    def _run_realtime(self, finished: Any, monitor: bool, start_ns: int | None = None) -> None:
        """Step physics at 240 Hz against the wall clock until ``finished()``; publish joint states."""
        arm, env = self.env.arm, self.env
        anchor_ns = time.time_ns() if start_ns is None else start_ns
        first_step = arm.physics_step
        every = self.params.publish_every
        frame_index = 0
        while not self._stop.is_set() and not finished():
            n = arm.physics_step + 1
            t_ns = anchor_ns + sim_time_ns(n - first_step)
            with self._follower_lock:
                q, qd = self.follower.sample(t_ns)
                self.follower.prune(t_ns)
            arm.set_position_targets(q, qd)
            arm.step_physics(env._monitor if monitor else None)  # SimEnv's per-step success/collision monitor
            lag = time.time_ns() - t_ns
            if lag > MAX_LAG_NS:
                anchor_ns += lag
                t_ns += lag
                self.resyncs += 1
            msg = self._joint_state(t_ns) if n % every == 0 else None  # built before the wait: sent on time
            self._sleep_until(t_ns)
            if msg is not None:
                self._publish_joint_state(msg)
            if self.camera is not None and n - first_step >= self.camera.frame_step(frame_index):
                # rendered after the joint state went out (the arm is still at step n): the render delays
                # the next steps, not this step's joint state; the image leaves one render time after its stamp
                self._publish_image(self._image(t_ns))
                frame_index += 1

    # -- diagnostics / shutdown ---------------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        values = {"state": self.state, "episode": str(self.episode), "task": self.params.task,
                  "seed": str(self.params.seed(self.episode)) if self.episode >= 0 else "",
                  "episodes_done": str(len(self.outcomes)),
                  "successes": str(sum(o["success"] for o in self.outcomes)),
                  "joint_states_sent": str(self.joint_states_sent), "images_sent": str(self.images_sent),
                  "commands_received": str(self.commands_received),
                  "trajectories_received": str(self.trajectories_received), "rejected_messages": str(self.rejected),
                  "realtime_resyncs": str(self.resyncs), "reactivations": str(self.reactivations)}
        self._diag_pub.publish(diagnostic_array(self.get_clock().now().to_msg(), f"{self.get_name()}: sim",
                                                "OK" if self.resyncs == 0 else "WARN", self.state, "pybullet_iiwa", values))

    def destroy_node(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        if self.recorder is not None:  # an episode cut short by shutdown keeps its bag, marked as such
            self.recorder.close({"episode": self.episode, "task": self.params.task, "interrupted": True})
        if self.env is not None:
            self.env.close()
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    """Entry point of ``ros2 run flow_policy_ros sim_node``."""
    # the executor thread handles commands: give it the configured priority
    return spin_node(NODE_NAME, SimNode, (FlowPolicyError, ValueError), lambda node: set_thread_priority(node.params.thread_priority), args)


if __name__ == "__main__":
    sys.exit(main())
