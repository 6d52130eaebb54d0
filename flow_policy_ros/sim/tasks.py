"""Tasks for the simulated iiwa: what an episode asks for, sampled from a seed.

World frame: robot base at the origin, x forward, y left, z up (m). The end effector (EE) is
the origin of ``lbr_iiwa_link_7``; in every task the arm starts near :data:`HOME_Q`, where the
EE is at :data:`NOMINAL_START_EE` = (0.40, 0.00, 0.45) m with the flange pointing down.

``reach``
    Start: ``HOME_Q`` plus independent uniform noise of +-:data:`START_NOISE_RAD` per joint.
    Goal: uniform in :data:`REACH_GOAL_BOX`, x in [0.45, 0.70], y in [-0.30, 0.30],
    z in [0.25, 0.55] m: in front of the robot, reachable with the flange pointing down, away
    from the base, the column above it and the fully stretched (singular) arm.
    Success: EE within :data:`SUCCESS_RADIUS_M` (2 cm) of the goal at some instant before
    :data:`TIME_LIMIT_S` (6 s), without self-collision up to then.

``reach_around``
    Start: as for ``reach``. Goal: uniform in :data:`REACH_AROUND_GOAL_BOX`, x in [0.70, 0.78],
    y in [-0.10, 0.10], z in [0.40, 0.50] m, i.e. straight ahead, 0.3-0.4 m from the start at
    about the start's height.
    Obstacle: a low post, a vertical cylinder standing on the floor, radius
    :data:`OBSTACLE_RADIUS_M` (4 cm), axis at the xy midpoint between ``NOMINAL_START_EE`` and
    the goal, top :data:`OBSTACLE_TOP_BELOW_PATH_M` (5 mm) below the lower of the start and goal
    EE heights (so 0.395-0.445 m). Why low: with the flange down, the wrist (link 5) hangs back
    ~0.24 m towards the base at about EE height, so at the goal pose it lies over the post; a
    post reaching above the EE would be hit by the goal pose itself. At this height the forearm
    clears it (>= 2.4 cm at the goal pose) while the flange, which reaches 4.8 cm below the EE
    point, hits it on the straight start->goal line (>= 2.4 cm penetration over the goal box;
    both checked with IK poses at the corners of the goal box).
    The obstacle is a pure function of the goal (:func:`obstacle_for_goal`), so a policy that
    observes joint state and goal (17 numbers) has everything it needs. The expert passes it
    on the left or right (0.17 m from its axis) with equal probability, a coin from the
    episode seed; the straight line, i.e. the average of the two routes, runs into the post.
    Success: goal reached (2 cm) before the time limit without touching the obstacle and
    without self-collision.

``reach_object``
    Start: as for ``reach``. Scene: a table top (visual only, grey, top at
    :data:`TABLE_TOP_Z_M` = 0.275 m) with a red cube (:data:`OBJECT_HALF_SIZE_M` = 2.25 cm half
    size, i.e. 4.5 cm) resting on it at a uniform random xy in :data:`OBJECT_XY_BOX`
    (x in [0.45, 0.70], y in [-0.25, 0.25] m), and :data:`DISTRACTORS` = 1 blue cube of the
    same size at a uniform random xy in the same box, at least :data:`DISTRACTOR_MIN_DISTANCE_M`
    (12 cm) from the red one (redrawn until it is). Goal: the red cube's centre (z = 0.2975 m,
    inside the reach goal box). Success: EE within 2 cm of it before the time limit, without
    self-collision. There is no goal topic: a policy must find the red cube in the camera image
    (:mod:`flow_policy_ros.sim.camera`); ``EpisodeSpec.goal`` still carries its position for
    the scripted expert and for an "oracle" policy given the true position as a vector.
    Table and cubes are visual-only bodies (:class:`~flow_policy_ros.sim.arm.VisualObject`):
    at the goal the flange, which reaches 4.8 cm below the EE point, dips 2.3 cm into the cube
    and the table, so collision shapes would make the task impossible as defined (EE point at
    the object's centre); visual-only bodies also leave the physics of the arm exactly as in
    ``reach``. The cost: the arm can pass through the distractor (nothing to avoid).

Route. :func:`classify_route` says on which side of the obstacle an EE path went, from the
path alone (for expert and policy alike): 'left' (+ side of the start->goal direction,
counter-clockwise seen from above), 'right', or 'none' if the EE never got past the obstacle.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flow_policy_ros.contract import IIWA_POSITION_LOWER, IIWA_POSITION_UPPER
from flow_policy_ros.sim.arm import Obstacle, VisualObject
from flow_policy_ros.sim.kinematics import HOME_Q

TASKS: tuple[str, ...] = ("reach", "reach_around", "reach_object")
#: Mixed into the seed so the tasks draw different goals from the same episode seed.
_TASK_STREAM = {"reach": 1, "reach_around": 2, "reach_object": 3}
#: Tasks whose policy sees the goal only through a camera: no goal topic, the camera on by default.
CAMERA_TASKS: frozenset[str] = frozenset({"reach_object"})

NOMINAL_START_EE: tuple[float, float, float] = (0.40, 0.0, 0.45)
START_NOISE_RAD = 0.05
SUCCESS_RADIUS_M = 0.02
TIME_LIMIT_S = 6.0
#: Goal sampling volumes: ((x_min, x_max), (y_min, y_max), (z_min, z_max)) in m, world frame.
REACH_GOAL_BOX: tuple[tuple[float, float], ...] = ((0.45, 0.70), (-0.30, 0.30), (0.25, 0.55))
REACH_AROUND_GOAL_BOX: tuple[tuple[float, float], ...] = ((0.70, 0.78), (-0.10, 0.10), (0.40, 0.50))
GOAL_BOXES = {"reach": REACH_GOAL_BOX, "reach_around": REACH_AROUND_GOAL_BOX}
OBSTACLE_RADIUS_M = 0.04
#: The post's top is this far (m) below the lower of start and goal EE heights.
OBSTACLE_TOP_BELOW_PATH_M = 0.005
SIDES: tuple[str, ...] = ("left", "right")
#: reach_object scene (m, world frame): table top height, its extent, the cubes' half size,
#: where the cubes may lie, and the distractors' minimum xy distance from the object.
TABLE_TOP_Z_M = 0.275
TABLE_CENTER_XY_M: tuple[float, float] = (0.575, 0.0)
TABLE_HALF_SIZE_XY_M: tuple[float, float] = (0.22, 0.36)
TABLE_THICKNESS_M = 0.02
OBJECT_HALF_SIZE_M = 0.0225
OBJECT_XY_BOX: tuple[tuple[float, float], ...] = ((0.45, 0.70), (-0.25, 0.25))
DISTRACTORS = 1
DISTRACTOR_MIN_DISTANCE_M = 0.12
OBJECT_RGBA: tuple[float, float, float, float] = (0.85, 0.10, 0.10, 1.0)
DISTRACTOR_RGBA: tuple[float, float, float, float] = (0.10, 0.25, 0.85, 1.0)
TABLE_RGBA: tuple[float, float, float, float] = (0.55, 0.55, 0.52, 1.0)
#: Where the reach_object goal (the object's centre) lies; flat in z, the cube rests on the table.
REACH_OBJECT_GOAL_BOX: tuple[tuple[float, float], ...] = (
    *OBJECT_XY_BOX, (TABLE_TOP_Z_M + OBJECT_HALF_SIZE_M, TABLE_TOP_Z_M + OBJECT_HALF_SIZE_M))
GOAL_BOXES["reach_object"] = REACH_OBJECT_GOAL_BOX


@dataclass(frozen=True)
class EpisodeSpec:
    """Everything that defines one episode.

    Attributes:
        task: one of ``TASKS``.
        seed: the episode seed (non-negative int).
        start_q: (7,) start joint positions (rad), arm at rest.
        goal: (3,) goal position of the EE (m, world frame).
        obstacle: the obstacle of ``reach_around``; None for ``reach``.
        expert_side: 'left'/'right', the side the expert takes around the obstacle; None for ``reach``.
        visuals: visual-only scene objects (table, object, distractors) of ``reach_object``; () otherwise.
        time_limit_s: episode length (s).
        success_radius_m: EE-goal distance (m) that counts as reached.
    """

    task: str
    seed: int
    start_q: np.ndarray
    goal: np.ndarray
    obstacle: Obstacle | None
    expert_side: str | None
    time_limit_s: float = TIME_LIMIT_S
    success_radius_m: float = SUCCESS_RADIUS_M
    visuals: tuple[VisualObject, ...] = ()

    @property
    def uses_camera(self) -> bool:
        """True if the goal is to be found in the camera image (no goal topic)."""
        return self.task in CAMERA_TASKS

    def to_metadata(self) -> dict[str, object]:
        """JSON-able summary for an episode's metadata."""
        obstacle = None
        if self.obstacle is not None:
            obstacle = {
                "type": "cylinder",
                "center_xy_m": [float(v) for v in self.obstacle.center_xy],
                "radius_m": self.obstacle.radius_m,
                "height_m": self.obstacle.height_m,
            }
        metadata: dict[str, object] = {
            "task": self.task,
            "seed": self.seed,
            "start_q_rad": [float(v) for v in self.start_q],
            "goal_m": [float(v) for v in self.goal],
            "obstacle": obstacle,
            "expert_side": self.expert_side,
            "time_limit_s": self.time_limit_s,
            "success_radius_m": self.success_radius_m,
        }
        if self.visuals:  # only camera tasks have them: the other tasks' metadata is unchanged
            metadata["visuals"] = [
                {"name": v.name, "type": "box", "center_m": list(v.center), "half_extents_m": list(v.half_extents),
                 "rgba": list(v.rgba)} for v in self.visuals
            ]
        return metadata


def check_task(task: str) -> str:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {list(TASKS)}")
    return task


def obstacle_for_goal(goal: np.ndarray) -> Obstacle:
    """The ``reach_around`` obstacle for ``goal`` (3,) m: a post halfway from the nominal start."""
    goal = np.asarray(goal, dtype=np.float64)
    center = (np.asarray(NOMINAL_START_EE[:2]) + goal[:2]) / 2.0
    height = min(float(goal[2]), NOMINAL_START_EE[2]) - OBSTACLE_TOP_BELOW_PATH_M
    return Obstacle(center_xy=(float(center[0]), float(center[1])), radius_m=OBSTACLE_RADIUS_M, height_m=height)


def sample_episode(task: str, seed: int) -> EpisodeSpec:
    """Draw start pose, goal, obstacle, expert side and scene objects of episode ``seed`` of ``task``."""
    check_task(task)
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"episode seed must be a non-negative int, got {seed!r}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), _TASK_STREAM[task]]))
    if task == "reach_object":
        noise = rng.uniform(-START_NOISE_RAD, START_NOISE_RAD, size=len(HOME_Q))
        goal, visuals = _sample_objects(rng)
    else:
        box = np.asarray(GOAL_BOXES[task])
        goal = rng.uniform(box[:, 0], box[:, 1])
        noise = rng.uniform(-START_NOISE_RAD, START_NOISE_RAD, size=len(HOME_Q))
        visuals = ()
    start_q = np.clip(np.asarray(HOME_Q) + noise, IIWA_POSITION_LOWER, IIWA_POSITION_UPPER)
    obstacle, side = None, None
    if task == "reach_around":
        obstacle = obstacle_for_goal(goal)
        side = SIDES[int(rng.integers(2))]
    return EpisodeSpec(task=task, seed=int(seed), start_q=start_q, goal=goal, obstacle=obstacle, expert_side=side,
                       visuals=visuals)


def table() -> VisualObject:
    """The reach_object table top (visual only)."""
    half = (*TABLE_HALF_SIZE_XY_M, TABLE_THICKNESS_M / 2.0)
    center = (*TABLE_CENTER_XY_M, TABLE_TOP_Z_M - TABLE_THICKNESS_M / 2.0)
    return VisualObject("table", center, half, TABLE_RGBA)


def _cube(name: str, xy: np.ndarray, rgba: tuple[float, float, float, float]) -> VisualObject:
    center = (float(xy[0]), float(xy[1]), TABLE_TOP_Z_M + OBJECT_HALF_SIZE_M)
    return VisualObject(name, center, (OBJECT_HALF_SIZE_M,) * 3, rgba)


def _sample_objects(rng: np.random.Generator) -> tuple[np.ndarray, tuple[VisualObject, ...]]:
    """reach_object: (goal (3,) m = the object's centre, (table, object, distractors...))."""
    box = np.asarray(OBJECT_XY_BOX)
    object_xy = rng.uniform(box[:, 0], box[:, 1])
    scene = [table(), _cube("object", object_xy, OBJECT_RGBA)]
    placed = [object_xy]
    for i in range(DISTRACTORS):
        for _ in range(1000):  # the box is 0.25 x 0.5 m: a 12 cm exclusion disc leaves most of it free
            xy = rng.uniform(box[:, 0], box[:, 1])
            if np.linalg.norm(xy - object_xy) >= DISTRACTOR_MIN_DISTANCE_M:
                break
        else:
            raise RuntimeError(f"reach_object: no place for distractor {i} at >= {DISTRACTOR_MIN_DISTANCE_M} m")
        placed.append(xy)
        scene.append(_cube(f"distractor_{i}", xy, DISTRACTOR_RGBA))
    return np.asarray(scene[1].center, dtype=np.float64), tuple(scene)


def route_frame(goal: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(center, along, left) in the xy plane: obstacle axis, unit start->goal, unit left normal."""
    start = np.asarray(NOMINAL_START_EE[:2])
    goal_xy = np.asarray(goal, dtype=np.float64)[:2]
    along = (goal_xy - start) / np.linalg.norm(goal_xy - start)
    left = np.array([-along[1], along[0]])
    return (start + goal_xy) / 2.0, along, left


def classify_route(ee_path: np.ndarray, goal: np.ndarray) -> str:
    """Side on which the EE passed the ``reach_around`` obstacle: 'left', 'right' or 'none'.

    Args:
        ee_path: (T, 3) or (T, 2) EE positions over time (m, world frame).
        goal: (3,) the episode's goal (m); fixes the obstacle and the start->goal direction.

    The EE passes the obstacle where its along-track coordinate (start->goal direction,
    origin at the obstacle axis) first changes sign from negative to non-negative; the sign of
    the lateral coordinate there (interpolated) gives the side.
    """
    path = np.asarray(ee_path, dtype=np.float64)
    if path.ndim != 2 or path.shape[1] not in (2, 3):
        raise ValueError(f"classify_route: ee_path must be (T, 2) or (T, 3), got {path.shape}")
    center, along, left = route_frame(goal)
    rel = path[:, :2] - center
    s, lateral = rel @ along, rel @ left
    crossings = np.flatnonzero((s[:-1] < 0.0) & (s[1:] >= 0.0))
    if crossings.size == 0:
        return "none"
    i = crossings[0]
    w = -s[i] / (s[i + 1] - s[i])
    side = (1.0 - w) * lateral[i] + w * lateral[i + 1]
    return "left" if side > 0.0 else "right"
