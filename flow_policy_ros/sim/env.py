"""Closed-loop episode environment: task + arm + success/collision monitoring + recording.

Drive it with any controller (scripted expert, in-process policy)::

    env = SimEnv()
    spec = env.reset("reach_around", seed=3)
    while not env.done:
        obs = env.observe()                 # joint state at tick k (time t_k) and the goal
        env.step(controller(obs))           # command for t_{k+1}; runs to tick k+1
    env.status()                            # success, route, collisions, ...
    env.recording()                         # EpisodeRecording (-> bag.write_episode_bag)

Monitoring runs after every physics step (240 Hz): EE-goal distance, self-collision
(non-adjacent links touching), obstacle contact. An episode is done when the time limit is
reached or on the first collision (a failure). Success = the EE came within the task's radius
of the goal before the time limit and no collision happened up to then.

Camera (off unless a :class:`~flow_policy_ros.sim.camera.CameraSpec` is given): frame k is
rendered after physics step ``camera.frame_step(k)`` (12.5 Hz by default: every 4th 50 Hz
tick); :meth:`SimEnv.observe` carries the latest frame, and recording keeps every frame
(uint8) stamped with its step's sim time. Rendering never steps or changes the physics.

Recording (on by default) keeps the joint state at every physics step (240 Hz, so the
observation of every tick is in the recording with the tick's exact stamp), the goal at t = 0
and then every second, and each command at the sim time of the tick that issued it. Stamps
are integer ns: :data:`STAMP_BASE_NS` (2026-01-01T00:00:00Z) + sim time, so bags carry
realistic wall-clock-like times.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from flow_policy_ros.contract import IIWA_JOINT_NAMES, IMAGE_PREFIX
from flow_policy_ros.data.images import ImageSeries
from flow_policy_ros.data.recording import EpisodeRecording
from flow_policy_ros.sim.arm import PHYSICS_HZ, IiwaArm
from flow_policy_ros.sim.camera import CameraSpec
from flow_policy_ros.sim.tasks import EpisodeSpec, classify_route, sample_episode

#: Clock origin of recorded stamps (ns): 2026-01-01T00:00:00Z.
STAMP_BASE_NS = 1_767_225_600 * 1_000_000_000
#: Period of the repeated goal message (s).
GOAL_REPEAT_S = 1.0


def sim_time_ns(physics_step: int) -> int:
    """Exact integer-ns sim time of ``physics_step`` (rounded to the nearest ns)."""
    return (physics_step * 1_000_000_000 + PHYSICS_HZ // 2) // PHYSICS_HZ


@dataclass(frozen=True)
class Observation:
    """What a policy sees at a control tick.

    Attributes:
        positions: (7,) joint positions (rad), ``IIWA_JOINT_NAMES`` order.
        velocities: (7,) joint velocities (rad/s).
        goal: (3,) goal (m, world frame); for a camera task the object's true position (oracle only).
        time_s: sim time (s) of the tick.
        images: camera name -> (stamp ns, (H, W, 3) uint8 RGB) of its latest frame; empty without a camera.
    """

    positions: np.ndarray
    velocities: np.ndarray
    goal: np.ndarray
    time_s: float
    images: dict[str, tuple[int, np.ndarray]] = field(default_factory=dict)

    def vector(self) -> np.ndarray:
        """(17,) [positions, velocities, goal]: the default observation layout of ``ObservationSpec``."""
        return np.concatenate([self.positions, self.velocities, self.goal])

    def features(self) -> dict[str, np.ndarray]:
        """The named observation features the simulation offers (joint values in
        ``IIWA_JOINT_NAMES`` order; a policy picks its own joints from them by name; camera frames
        as ``image.<camera>``)."""
        features = {"joint_positions": self.positions, "joint_velocities": self.velocities, "goal": self.goal}
        features.update({IMAGE_PREFIX + name: frame for name, (_, frame) in self.images.items()})
        return features


@dataclass(frozen=True)
class EpisodeStatus:
    """Outcome so far.

    Attributes:
        success: goal reached before the time limit without any collision so far.
        reached_time_s: sim time (s) the EE first came within the success radius, or None.
        min_distance_m: closest EE-goal distance so far (m).
        final_distance_m: EE-goal distance now (m).
        self_collision: non-adjacent links touched at some physics step.
        obstacle_contact: the arm touched the obstacle at some physics step.
        route: 'left'/'right'/'none' for reach_around (from the EE path), None for reach.
        time_s: sim time now (s).
        clipped_commands: commands the arm had to clip to limits or rate-limit.
    """

    success: bool
    reached_time_s: float | None
    min_distance_m: float
    final_distance_m: float
    self_collision: bool
    obstacle_contact: bool
    route: str | None
    time_s: float
    clipped_commands: int


class SimEnv:
    """Episodes of the sim tasks on one :class:`IiwaArm` (its own PyBullet client).

    Args:
        control_period_s: control period (s), 0.02 = 50 Hz.
        record: keep the time series for :meth:`recording`.
        camera: render this camera's frames on its schedule; None = no rendering at all.
    """

    def __init__(self, control_period_s: float = 0.02, record: bool = True, camera: CameraSpec | None = None) -> None:
        self.arm = IiwaArm(control_period_s)
        self.record = record
        self.camera = camera
        self.spec: EpisodeSpec | None = None

    def close(self) -> None:
        self.arm.close()

    def __enter__(self) -> SimEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def control_period_s(self) -> float:
        return self.arm.control_period_s

    def reset(self, task: str, seed: int) -> EpisodeSpec:
        """Start episode ``seed`` of ``task``: returns its spec (start pose, goal, obstacle)."""
        return self.reset_to(sample_episode(task, seed))

    def reset_to(self, spec: EpisodeSpec) -> EpisodeSpec:
        """Start the episode described by ``spec``."""
        self.spec = spec
        obstacles = () if spec.obstacle is None else (spec.obstacle,)
        self.arm.reset(spec.start_q, obstacles, spec.visuals)
        self._goal = np.asarray(spec.goal, dtype=np.float64)
        self._ee_path: list[np.ndarray] = []
        self._min_distance = np.inf
        self._reached_time: float | None = None
        self._self_collision = False
        self._obstacle_contact = False
        self._joint_steps: list[int] = []
        self._positions: list[np.ndarray] = []
        self._velocities: list[np.ndarray] = []
        self._command_steps: list[int] = []
        self._commands: list[np.ndarray] = []
        self._frame_index = 0
        self._frame_steps: list[int] = []
        self._frames: list[np.ndarray] = []
        self._latest_frame: tuple[int, np.ndarray] | None = None
        self._monitor(self.arm)
        return spec

    def _require_episode(self) -> EpisodeSpec:
        if self.spec is None:
            raise RuntimeError("SimEnv: call reset() before stepping or querying an episode")
        return self.spec

    def _monitor(self, arm: IiwaArm) -> None:
        spec = self._require_episode()
        ee = arm.end_effector_position()
        self._ee_path.append(ee)
        distance = float(np.linalg.norm(ee - self._goal))
        self._min_distance = min(self._min_distance, distance)
        collided = self._self_collision or self._obstacle_contact
        if self._reached_time is None and not collided and distance <= spec.success_radius_m:
            self._reached_time = arm.time_s
        self._self_collision |= arm.in_self_collision()
        if spec.obstacle is not None:
            self._obstacle_contact |= arm.in_obstacle_contact()
        if self.record:
            state = arm.observe()
            self._joint_steps.append(state.physics_step)
            self._positions.append(state.positions)
            self._velocities.append(state.velocities)
        if self.camera is not None and arm.physics_step >= self.camera.frame_step(self._frame_index):
            self._render_frame(arm)

    def _render_frame(self, arm: IiwaArm) -> None:
        """Render the camera now as the next frame: kept as the latest and, when recording, recorded."""
        frame = arm.render(self.camera)
        self._frame_index += 1
        self._latest_frame = (STAMP_BASE_NS + sim_time_ns(arm.physics_step), frame)
        if self.record:
            self._frame_steps.append(arm.physics_step)
            self._frames.append(frame)

    def observe(self) -> Observation:
        """Joint state now (the current tick) and the goal."""
        self._require_episode()
        state = self.arm.observe()
        images = {} if self._latest_frame is None else {self.camera.name: self._latest_frame}
        return Observation(state.positions, state.velocities, self._goal.copy(), state.time_s, images)

    @property
    def next_tick_time_s(self) -> float:
        """Sim time (s) of the next tick: when the command issued now should be reached."""
        return self.arm.next_tick_time_s

    def step(self, command: np.ndarray) -> Observation:
        """Issue position ``command`` (7,) rad at this tick and run to the next tick."""
        self._require_episode()
        if self.done:
            raise RuntimeError(f"SimEnv.step: episode is over at t = {self.arm.time_s:.3f} s; reset() first")
        if self.record:
            self._command_steps.append(self.arm.physics_step)
            self._commands.append(np.asarray(command, dtype=np.float64).copy())
        self.arm.step_control(command, on_physics_step=self._monitor)
        return self.observe()

    @property
    def collided(self) -> bool:
        return self._self_collision or self._obstacle_contact

    @property
    def done(self) -> bool:
        """Time limit reached, or a collision happened."""
        spec = self._require_episode()
        return self.collided or self.arm.time_s >= spec.time_limit_s - 1e-9

    @property
    def success(self) -> bool:
        return self._reached_time is not None and not self.collided

    def ee_path(self) -> np.ndarray:
        """(T, 3) EE positions (m) at every physics step since reset."""
        return np.asarray(self._ee_path)

    def route(self) -> str | None:
        """Side taken around the obstacle ('left'/'right'/'none'); None without an obstacle."""
        spec = self._require_episode()
        return None if spec.obstacle is None else classify_route(self.ee_path(), spec.goal)

    def status(self) -> EpisodeStatus:
        self._require_episode()
        return EpisodeStatus(
            success=self.success,
            reached_time_s=self._reached_time,
            min_distance_m=self._min_distance,
            final_distance_m=float(np.linalg.norm(self._ee_path[-1] - self._goal)),
            self_collision=self._self_collision,
            obstacle_contact=self._obstacle_contact,
            route=self.route(),
            time_s=self.arm.time_s,
            clipped_commands=self.arm.clipped_commands,
        )

    def recording(self, metadata: dict[str, object] | None = None) -> EpisodeRecording:
        """The episode so far as an :class:`EpisodeRecording` (needs ``record=True``).

        Metadata holds the spec, the status and the timing facts, updated by ``metadata``.
        """
        spec = self._require_episode()
        if not self.record:
            raise RuntimeError("SimEnv.recording: this env was created with record=False")
        status = self.status()
        goal_steps = [
            round(k * GOAL_REPEAT_S * PHYSICS_HZ) for k in range(int(self.arm.time_s / GOAL_REPEAT_S + 1e-9) + 1)
        ]
        joint_times = [STAMP_BASE_NS + sim_time_ns(n) for n in self._joint_steps]
        info: dict[str, object] = spec.to_metadata()
        info.update(
            success=status.success,
            route=status.route,
            reached_time_s=status.reached_time_s,
            min_distance_m=status.min_distance_m,
            final_distance_m=status.final_distance_m,
            self_collision=status.self_collision,
            obstacle_contact=status.obstacle_contact,
            clipped_commands=status.clipped_commands,
            duration_s=status.time_s,
            control_period_s=self.control_period_s,
            physics_hz=PHYSICS_HZ,
            joint_state_rate_hz=PHYSICS_HZ,
            stamp_base_ns=STAMP_BASE_NS,
            command_convention="command stamped t_k is the position target for t_{k+1}",
        )
        if self.camera is not None:
            info.update(camera={"name": self.camera.name, "rate_hz": self.camera.rate_hz,
                                "width": self.camera.width, "height": self.camera.height})
        info.update(metadata or {})
        return EpisodeRecording(
            joint_names=list(IIWA_JOINT_NAMES),
            joint_times_ns=np.asarray(joint_times, dtype=np.int64),
            positions=np.asarray(self._positions),
            velocities=np.asarray(self._velocities),
            goal_times_ns=np.asarray([STAMP_BASE_NS + sim_time_ns(n) for n in goal_steps], dtype=np.int64),
            goals=np.repeat(self._goal[None, :], len(goal_steps), axis=0),
            command_joint_names=list(IIWA_JOINT_NAMES),
            command_times_ns=np.asarray([STAMP_BASE_NS + sim_time_ns(n) for n in self._command_steps], dtype=np.int64),
            commands=np.asarray(self._commands).reshape(-1, len(IIWA_JOINT_NAMES)),
            metadata=info,
            images=self._image_series(),
        )

    def _image_series(self) -> dict[str, ImageSeries]:
        if self.camera is None:
            return {}
        height, width = self.camera.height, self.camera.width
        frames = np.stack(self._frames) if self._frames else np.zeros((0, height, width, 3), np.uint8)
        times = [STAMP_BASE_NS + sim_time_ns(n) for n in self._frame_steps]
        return {self.camera.name: ImageSeries(self.camera.optical_frame, np.asarray(times, np.int64), frames)}
