"""The simulated arm: a KUKA LBR iiwa in PyBullet under joint position control.

Timing. Physics runs at a fixed 240 Hz (``PHYSICS_HZ``); the controller runs at
``1 / control_period_s`` (50 Hz by default). 240 / 50 = 4.8 is not an integer, so a control
tick does not always take the same number of physics steps: tick k happens at the first
physics step n_k with n_k / 240 >= k * control_period_s, i.e. n_k = ceil(4.8 k), and ticks
take 5, 5, 5, 5, 4 physics steps in turn (every 5 ticks = 24 steps = exactly 0.1 s). The sim
time of tick k is therefore n_k / 240 s, up to one physics step (4.2 ms) after the nominal
k * period; all stamps the simulation produces are this true sim time.

Commands. :meth:`IiwaArm.step_control` takes a position command issued at tick k and moves the
joint position targets linearly from the previous command to it over the physics steps of the
tick (with the matching feed-forward velocity), so the arm arrives at the command at tick
k + 1: the project-wide convention "the command issued at t_k is the target for t_{k+1}".
Commands are clipped to the URDF position limits (``config.IIWA_POSITION_LOWER/UPPER``) and
rate-limited to ``config.IIWA_VELOCITY_LIMIT`` (1.5 rad/s; the URDF's 10 rad/s is far above
what the real arm is rated for), like a robot driver would; :attr:`IiwaArm.clipped_commands`
counts commands that were changed this way. A ROS driver that interpolates trajectories
itself uses :meth:`IiwaArm.set_position_targets` and :meth:`IiwaArm.step_until` instead.

Scene objects. :class:`Obstacle` is a collision body (touching it fails an episode);
:class:`VisualObject` is a visual-only box (no collision shape: it never touches, pushes or
blocks the arm and never changes the physics, only what a camera sees).

Determinism. Every instance has its own DIRECT client (never GUI; several coexist in one
process). :meth:`IiwaArm.reset` rebuilds the whole world (resetSimulation + reload), so a
trajectory depends only on the start pose, the obstacles and the commands: the same inputs
give bitwise-identical trajectories, whatever ran before.

Units: rad, rad/s, m, s; joint vectors are (7,) in ``config.IIWA_JOINT_NAMES`` order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import pybullet
from pybullet_utils import bullet_client

from flow_policy_ros.contract import IIWA_POSITION_LOWER, IIWA_POSITION_UPPER, IIWA_VELOCITY_LIMIT
from flow_policy_ros.sim.camera import CameraSpec, render_rgb
from flow_policy_ros.sim.kinematics import EE_LINK, HOME_Q, NUM_JOINTS, check_joint_order, load_iiwa, min_self_distance

PHYSICS_HZ = 240
PHYSICS_DT_S = 1.0 / PHYSICS_HZ
GRAVITY_M_S2 = 9.81
#: Maximum motor torques (Nm), those of the LBR iiwa 14 R820 (joints 1-7).
MOTOR_FORCE_NM: tuple[float, ...] = (320.0, 320.0, 176.0, 176.0, 110.0, 40.0, 40.0)
#: PyBullet POSITION_CONTROL gains (dimensionless, per physics step). With the feed-forward
#: velocity the arm follows smooth motions with about one physics step of lag (~6 mrad at
#: 1.4 rad/s) and settles to within 1e-5 rad at rest.
POSITION_GAIN = 0.6
VELOCITY_GAIN = 1.0


@dataclass(frozen=True)
class ArmState:
    """Joint state at one instant.

    Attributes:
        positions: (7,) joint positions (rad).
        velocities: (7,) joint velocities (rad/s).
        time_s: sim time (s) since reset, = physics_step / 240.
        physics_step: physics steps since reset.
    """

    positions: np.ndarray
    velocities: np.ndarray
    time_s: float
    physics_step: int


@dataclass(frozen=True)
class Obstacle:
    """A static vertical cylinder standing on the floor (z = 0).

    Attributes:
        center_xy: (2,) axis position (m, world frame).
        radius_m: cylinder radius (m).
        height_m: height of the top above the floor (m).
    """

    center_xy: tuple[float, float]
    radius_m: float
    height_m: float

    def __post_init__(self) -> None:
        if self.radius_m <= 0 or self.height_m <= 0:
            raise ValueError(f"Obstacle: radius {self.radius_m} m and height {self.height_m} m must be positive")


@dataclass(frozen=True)
class VisualObject:
    """A static, visual-only box: drawn by cameras, invisible to physics and collision checks.

    Attributes:
        name: what it is in the task ('table', 'object', 'distractor_0', ...).
        center: (3,) box centre (m, world frame).
        half_extents: (3,) half sizes along the world axes (m).
        rgba: colour, each channel in [0, 1].
    """

    name: str
    center: tuple[float, float, float]
    half_extents: tuple[float, float, float]
    rgba: tuple[float, float, float, float]

    def __post_init__(self) -> None:
        if len(self.center) != 3 or len(self.half_extents) != 3 or min(self.half_extents) <= 0:
            raise ValueError(f"VisualObject {self.name!r}: center {self.center} and positive half_extents "
                             f"{self.half_extents} must both have 3 values (m)")
        if len(self.rgba) != 4 or not all(0.0 <= c <= 1.0 for c in self.rgba):
            raise ValueError(f"VisualObject {self.name!r}: rgba {self.rgba} must be 4 values in [0, 1]")


class IiwaArm:
    """A PyBullet iiwa at the world origin, position-controlled at a fixed control rate.

    Args:
        control_period_s: time between control ticks (s); 0.02 = 50 Hz. Must be at least one
            physics step (1/240 s).
    """

    def __init__(self, control_period_s: float = 0.02) -> None:
        if not control_period_s >= PHYSICS_DT_S:
            raise ValueError(f"control_period_s must be >= 1/{PHYSICS_HZ} s, got {control_period_s}")
        self.control_period_s = float(control_period_s)
        # Exact rational arithmetic for the tick schedule: float 0.02 * 240 is not exactly 4.8.
        self._steps_per_tick = Fraction(str(control_period_s)) * PHYSICS_HZ
        self._client = bullet_client.BulletClient(connection_mode=pybullet.DIRECT)
        self._lower = np.asarray(IIWA_POSITION_LOWER)
        self._upper = np.asarray(IIWA_POSITION_UPPER)
        self._velocity_limit = np.asarray(IIWA_VELOCITY_LIMIT)
        self._body = -1
        self._obstacle_bodies: list[int] = []
        self._visual_bodies: list[int] = []
        self._step = 0
        self._tick = 0
        self._target = np.zeros(NUM_JOINTS)
        self.clipped_commands = 0
        self.reset(HOME_Q)

    # -- lifecycle -------------------------------------------------------------------------
    def close(self) -> None:
        """Disconnect this instance's PyBullet client (idempotent)."""
        if self._client is not None:
            self._client.disconnect()
            self._client = None

    def __enter__(self) -> IiwaArm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def reset(
        self, start_q: Sequence[float], obstacles: Sequence[Obstacle] = (), visuals: Sequence[VisualObject] = ()
    ) -> ArmState:
        """Rebuild the world: arm at rest at ``start_q`` (7,) rad, the given obstacles and visual objects, time 0."""
        q0 = np.asarray(start_q, dtype=np.float64)
        if q0.shape != (NUM_JOINTS,) or not np.all(np.isfinite(q0)):
            raise ValueError(f"reset: start_q must be {NUM_JOINTS} finite joint positions (rad), got {start_q!r}")
        if np.any(q0 < self._lower) or np.any(q0 > self._upper):
            raise ValueError(f"reset: start_q {q0.round(4).tolist()} outside the joint limits")
        client = self._client
        client.resetSimulation()
        client.setPhysicsEngineParameter(fixedTimeStep=PHYSICS_DT_S, deterministicOverlappingPairs=1)
        client.setGravity(0.0, 0.0, -GRAVITY_M_S2)
        self._body = load_iiwa(client)
        check_joint_order(client, self._body)
        for i, value in enumerate(q0):
            client.resetJointState(self._body, i, float(value), 0.0)
        self._obstacle_bodies = [self._add_obstacle(obstacle) for obstacle in obstacles]
        self._visual_bodies = [self._add_visual(visual) for visual in visuals]
        self._step = 0
        self._tick = 0
        self.clipped_commands = 0
        self._target = q0.copy()
        self.set_position_targets(q0)
        return self.observe()

    def _add_obstacle(self, obstacle: Obstacle) -> int:
        client = self._client
        shape = client.createCollisionShape(pybullet.GEOM_CYLINDER, radius=obstacle.radius_m, height=obstacle.height_m)
        visual = client.createVisualShape(
            pybullet.GEOM_CYLINDER, radius=obstacle.radius_m, length=obstacle.height_m, rgbaColor=(0.8, 0.2, 0.2, 1.0)
        )
        x, y = obstacle.center_xy
        return client.createMultiBody(
            baseMass=0.0,
            baseCollisionShapeIndex=shape,
            baseVisualShapeIndex=visual,
            basePosition=(float(x), float(y), obstacle.height_m / 2.0),
        )

    def _add_visual(self, visual: VisualObject) -> int:
        client = self._client
        shape = client.createVisualShape(pybullet.GEOM_BOX, halfExtents=visual.half_extents, rgbaColor=visual.rgba)
        return client.createMultiBody(baseMass=0.0, baseCollisionShapeIndex=-1, baseVisualShapeIndex=shape,
                                      basePosition=tuple(float(v) for v in visual.center))

    def render(self, camera: CameraSpec) -> np.ndarray:
        """The scene now as seen by ``camera``: (H, W, 3) uint8 RGB (CPU renderer, no physics step)."""
        return render_rgb(self._client, camera)

    # -- state -----------------------------------------------------------------------------
    @property
    def time_s(self) -> float:
        """Sim time (s) since reset."""
        return self._step / PHYSICS_HZ

    @property
    def physics_step(self) -> int:
        return self._step

    @property
    def tick(self) -> int:
        """Index of the current control tick (0 at reset)."""
        return self._tick

    def tick_step(self, k: int) -> int:
        """Physics step at which control tick ``k`` happens: ceil(k * period * 240)."""
        return math.ceil(k * self._steps_per_tick)

    def tick_time_s(self, k: int) -> float:
        """Sim time (s) of control tick ``k`` (up to one physics step after k * period)."""
        return self.tick_step(k) / PHYSICS_HZ

    @property
    def next_tick_time_s(self) -> float:
        """Sim time (s) of the next control tick: when a command issued now should be reached."""
        return self.tick_time_s(self._tick + 1)

    def observe(self) -> ArmState:
        """Current joint positions (7,) rad, velocities (7,) rad/s and sim time."""
        states = self._client.getJointStates(self._body, range(NUM_JOINTS))
        return ArmState(
            positions=np.array([s[0] for s in states], dtype=np.float64),
            velocities=np.array([s[1] for s in states], dtype=np.float64),
            time_s=self.time_s,
            physics_step=self._step,
        )

    def end_effector_position(self) -> np.ndarray:
        """(3,) world position (m) of the end-effector point (origin of lbr_iiwa_link_7)."""
        state = self._client.getLinkState(self._body, EE_LINK, computeForwardKinematics=True)
        return np.asarray(state[4], dtype=np.float64)

    def in_self_collision(self) -> bool:
        """True if two non-adjacent links touch or interpenetrate now."""
        return min_self_distance(self._client, self._body) <= 0.0

    def in_obstacle_contact(self) -> bool:
        """True if any link touches or penetrates any obstacle now."""
        return any(
            point[8] <= 0.0
            for obstacle in self._obstacle_bodies
            for point in self._client.getClosestPoints(self._body, obstacle, 0.0)
        )

    # -- control ---------------------------------------------------------------------------
    def set_position_targets(self, positions: Sequence[float], velocities: Sequence[float] | None = None) -> None:
        """Set the joint motor targets now (7,) rad, optional feed-forward (7,) rad/s.

        The low-level interface for drivers that interpolate themselves; positions are clipped
        to the joint limits, with no rate limit.
        """
        q = np.clip(np.asarray(positions, dtype=np.float64), self._lower, self._upper)
        qd = np.zeros(NUM_JOINTS) if velocities is None else np.asarray(velocities, dtype=np.float64)
        if q.shape != (NUM_JOINTS,) or qd.shape != (NUM_JOINTS,):
            raise ValueError(f"set_position_targets: expected ({NUM_JOINTS},) arrays, got {q.shape} and {qd.shape}")
        self._client.setJointMotorControlArray(
            self._body,
            list(range(NUM_JOINTS)),
            pybullet.POSITION_CONTROL,
            targetPositions=q.tolist(),
            targetVelocities=qd.tolist(),
            forces=list(MOTOR_FORCE_NM),
            positionGains=[POSITION_GAIN] * NUM_JOINTS,
            velocityGains=[VELOCITY_GAIN] * NUM_JOINTS,
        )

    def step_physics(self, on_physics_step: Callable[[IiwaArm], None] | None = None) -> None:
        """Advance one physics step (1/240 s) with the current motor targets."""
        self._client.stepSimulation()
        self._step += 1
        if on_physics_step is not None:
            on_physics_step(self)

    def step_until(self, time_s: float, on_physics_step: Callable[[IiwaArm], None] | None = None) -> int:
        """Step physics until sim time >= ``time_s`` (s); returns the number of steps taken.

        Tick bookkeeping follows: afterwards :attr:`tick` is the last tick at or before now.
        """
        target_step = math.ceil(time_s * PHYSICS_HZ - 1e-9)
        taken = 0
        while self._step < target_step:
            self.step_physics(on_physics_step)
            taken += 1
        while self.tick_step(self._tick + 1) <= self._step:
            self._tick += 1
        return taken

    def limit_command(self, command: Sequence[float]) -> np.ndarray:
        """``command`` (7,) rad clipped to the position limits and rate-limited for one tick."""
        q = np.asarray(command, dtype=np.float64)
        if q.shape != (NUM_JOINTS,):
            raise ValueError(f"command must have shape ({NUM_JOINTS},), got {q.shape}")
        if not np.all(np.isfinite(q)):
            raise ValueError(f"command has non-finite values: {q.tolist()}")
        duration = (self.tick_step(self._tick + 1) - self._step) / PHYSICS_HZ
        max_delta = self._velocity_limit * duration
        limited = np.clip(np.clip(q, self._lower, self._upper), self._target - max_delta, self._target + max_delta)
        return limited

    def step_control(
        self,
        command: Sequence[float],
        on_physics_step: Callable[[IiwaArm], None] | None = None,
    ) -> ArmState:
        """Apply position ``command`` (7,) rad issued at this tick and run until the next tick.

        Targets move linearly from the previous command to ``command`` over the tick's physics
        steps (4 or 5 at 50 Hz), so the arm reaches it at the next tick. ``on_physics_step`` is
        called after each physics step (for recording). Returns the state at the new tick.
        """
        limited = self.limit_command(command)
        if not np.array_equal(limited, np.asarray(command, dtype=np.float64)):
            self.clipped_commands += 1
        start_step, end_step = self._step, self.tick_step(self._tick + 1)
        n_steps = end_step - start_step
        previous = self._target
        velocity = (limited - previous) * (PHYSICS_HZ / n_steps)
        for i in range(1, n_steps + 1):
            self.set_position_targets(previous + (limited - previous) * (i / n_steps), velocity)
            self.step_physics(on_physics_step)
        self._target = limited
        self._tick += 1
        return self.observe()
