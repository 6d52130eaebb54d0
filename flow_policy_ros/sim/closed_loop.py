"""The in-process closed loop: a :class:`~flow_policy_ros.runtime.policy.ChunkPolicy` driving :class:`SimEnv`.

The loop runs the same pieces as ``policy_node`` in stream mode, in the same order per tick::

    observe -> (chunk due?) predict, add chunk at this tick -> scheduler action -> CommandLimiter -> env.step

* chunk scheduling: :func:`flow_policy_ros.chunking.make_scheduler` (receding horizon or
  temporal ensembling), exactly as the node builds it;
* safety clamp: :class:`flow_policy_ros.safety.CommandLimiter` on the model's metadata limits;
* observation: built by joint NAME with :func:`flow_policy_ros.messages.build_observation` in
  the metadata's field/joint order, never by assuming the sim's joint order.

Inference is synchronous (the sim waits for it), so a chunk predicted from the observation of
tick k always starts at tick k; the per-call latency is measured and reported, not simulated.

Episode seeds (:func:`eval_episode_seeds`): ``900_000_000 + seed * 10_000 + i``. Training data
come from ``flow-policy collect``, whose episode i has seed ``collect_seed * 1_000_000 + i``
(``--seed 1`` for the shipped models, i.e. [1_000_000, 2_000_000)). Every evaluation seed lies in
[900_000_000, 901_000_000), so it can only coincide with a collection made with ``--seed 900``.

Noise: at the start of each episode the policy's own noise stream is reseeded with the episode
seed (``policy.reseed``), so an episode's result depends on its seed alone (not on which episodes ran before), and
two models or two guidance scales see the same start, goal and noise (common random numbers).

Invalid model outputs (wrong shape, NaN/inf: :class:`~flow_policy_ros.errors.InvalidOutputError`
from the policy's ``predict``) go to the controller as invalid results, exactly as the node's
inference worker hands them over: the arm holds, the controller retries, and the episode counts
them; an episode that fails after one is an ``invalid_output`` failure, not a timeout. Likewise
an episode whose goal the controller rejected (outside the training goal range + margin) is
``goal_rejected`` and one that failed after an out-of-distribution hold ``out_of_distribution``.

Camera models (image features in the metadata): the env renders the model's camera
(:func:`camera_for_model`: the default :class:`~flow_policy_ros.sim.camera.CameraSpec` pose at the
feature's name and size, or a given spec, e.g. a jittered pose for the robustness table, whose
name and size must match), and each inference request carries the frame in force at its tick
(the latest rendered, at most the feature's max age old), as ``InferenceRequest.images``. A
controller with ``on_image`` (the node's frame pairing, issue 19 item 4) gets every new frame,
stamped on the loop's clock with its true age, and pairs it itself; with a controller without
it, the loop attaches the frame in force to the request.

Units: rad, rad/s, m, s.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from flow_policy_ros.contract import IIWA_JOINT_NAMES, ObservationSpec
from flow_policy_ros.errors import ModelFileError
from flow_policy_ros.runtime.controller import Command, InferenceRequest, InferenceResult, PolicyController
from flow_policy_ros.runtime.metadata import PolicyMetadata
from flow_policy_ros.runtime.observation import observation_vector as build_observation_vector
from flow_policy_ros.runtime.observation import values_by_name
from flow_policy_ros.runtime.policy import ChunkPolicy, infer
from flow_policy_ros.runtime.safety import SafetyLimits, validate_guidance_scale
from flow_policy_ros.runtime.settings import DEFAULT_SETTINGS, ExecutionSettings, controller_config
from flow_policy_ros.sim.camera import CameraSpec
from flow_policy_ros.sim.env import STAMP_BASE_NS, Observation, SimEnv
from flow_policy_ros.sim.tasks import EpisodeSpec, sample_episode

#: First evaluation episode seed; see the module docstring for why it cannot hit training seeds.
EVAL_SEED_BASE = 900_000_000
#: Episode seeds reserved per ``--seed`` value.
EVAL_SEEDS_PER_BASE = 10_000
#: ``--seed`` values allowed: [0, MAX_EVAL_SEED].
MAX_EVAL_SEED = 99
#: Episode seeds per collection seed in ``flow-policy collect`` (kept equal to ``collect.SEEDS_PER_BASE``).
COLLECT_SEEDS_PER_BASE = 1_000_000
#: Collection ``--seed`` the evaluation block belongs to (900): no training set uses it.
EVAL_COLLECT_BLOCK = EVAL_SEED_BASE // COLLECT_SEEDS_PER_BASE
FAILURE_REASONS: tuple[str, ...] = ("timeout", "self_collision", "obstacle_contact", "invalid_output",
                                    "out_of_distribution", "goal_rejected")


def eval_episode_seeds(seed: int, episodes: int) -> list[int]:
    """Episode seeds of an evaluation: ``900_000_000 + seed * 10_000 + i`` for i < ``episodes``.

    Raises ValueError unless 0 <= seed <= 99 and 1 <= episodes <= 10_000, which keeps every seed
    inside [900_000_000, 901_000_000), disjoint from the collections made with ``--seed`` < 900.
    """
    if not 0 <= seed <= MAX_EVAL_SEED:
        raise ValueError(f"--seed must be in [0, {MAX_EVAL_SEED}], got {seed}")
    if not 1 <= episodes <= EVAL_SEEDS_PER_BASE:
        raise ValueError(f"--episodes must be in [1, {EVAL_SEEDS_PER_BASE}], got {episodes}")
    seeds = [EVAL_SEED_BASE + seed * EVAL_SEEDS_PER_BASE + i for i in range(episodes)]
    assert all(s // COLLECT_SEEDS_PER_BASE == EVAL_COLLECT_BLOCK for s in seeds), "evaluation seeds left their block"
    return seeds


#: How the policy is executed in the loop: the execution-settings table, the node's parameters of
#: the same names (:class:`~flow_policy_ros.runtime.settings.ExecutionSettings`; the loop runs stream
#: mode and ignores ``goal_frame`` and ``stale_timeout_s``: its goals carry no frame, its joint
#: states are never late). ``chunking`` 'auto' is resolved against the model.
LoopConfig = ExecutionSettings


@dataclass
class EpisodeResult:
    """One closed-loop episode.

    Attributes:
        seed: episode seed.
        success: goal reached in time without any collision.
        failure: None on success, else one of :data:`FAILURE_REASONS`.
        route: 'left'/'right'/'none' for reach_around, None for reach.
        reached_time_s: sim time (s) the EE first got within the success radius, or None.
        final_distance_m: EE-goal distance at the end (m).
        goal: (3,) goal (m).
        obstacle: (x, y, radius) of the post (m), or None.
        ee_path: (T, 3) EE positions (m), one per control tick (plus the final one).
        commands: (K, A) clamped commands sent (rad), action joint order, one per tick.
        chunk_ticks: ticks at which a new chunk took effect (0 is the first).
        latencies_s: wall time of each ``predict`` call (s).
        clipped_by_limiter: ticks where the limiter changed the scheduler's action.
        counters: the controller's counters at the end of the episode (invalid outputs, rtc, ...).
        first_invalid_output: the first invalid model output's reason ("" = none).
        invalid_outputs: ``predict`` calls whose output failed validation.
        ood_holds: times the controller held because the observation left the training range.
        goal_rejection: why the controller rejected the goal ("" = accepted).
        density_holds: holds by the observation density guard (models with a density).
        first_density_hold_tick: the tick of the first of them (None = none); the episode ends at a
            collision or the time limit, so a hold is always before the failure it may prevent.
        density_scores: the observation log-likelihood of every inference call (nats; empty
            without a density).
    """

    seed: int
    success: bool
    failure: str | None
    route: str | None
    reached_time_s: float | None
    final_distance_m: float
    goal: np.ndarray
    obstacle: tuple[float, float, float] | None
    ee_path: np.ndarray
    commands: np.ndarray
    chunk_ticks: list[int] = field(default_factory=list)
    latencies_s: list[float] = field(default_factory=list)
    clipped_by_limiter: int = 0
    counters: dict[str, int] = field(default_factory=dict)
    invalid_outputs: int = 0
    first_invalid_output: str = ""
    ood_holds: int = 0
    goal_rejection: str = ""
    density_holds: int = 0
    first_density_hold_tick: int | None = None
    density_scores: list[float] = field(default_factory=list)


def check_sim_joints(meta: PolicyMetadata) -> None:
    """Raise ModelFileError unless the model's action joints are exactly the sim arm's joints."""
    missing = [n for n in IIWA_JOINT_NAMES if n not in meta.action_joint_names]
    extra = [n for n in meta.action_joint_names if n not in IIWA_JOINT_NAMES]
    unobservable = [n for n in meta.observation.joint_names if n not in IIWA_JOINT_NAMES]
    if missing or extra or unobservable:
        raise ModelFileError(
            f"model {meta.name}: the sim arm has joints {list(IIWA_JOINT_NAMES)}; the model's action joints lack {missing}, "
            f"have unknown {extra}, observation has unknown {unobservable}"
        )


def validate_config(config: LoopConfig, meta: PolicyMetadata) -> float | None:
    """Check ``config`` against the model (ValueError/SafetyError naming the value); returns the guidance w or None."""
    if config.execution != "stream":
        raise ValueError(f"the in-process loop runs execution 'stream', got {config.execution!r}")
    SafetyLimits.from_joint_limits(meta.limits, config.max_velocity_scale)
    controller_config(config, meta)  # chunking 'rtc' needs an rtc model; replan_every <= H; ...
    return None if config.guidance_scale is None else validate_guidance_scale(config.guidance_scale)


def observation_vector(meta: PolicyMetadata, obs: Observation) -> np.ndarray:
    """(obs_dim,) float32 observation in the metadata's feature and joint order, matched by name."""
    return build_observation_vector(meta.observation, sim_features(meta.observation, obs))


def sim_features(spec: ObservationSpec, obs: Observation) -> dict[str, np.ndarray]:
    """The simulation's named features with joint values in the model's joint order (by name)."""
    features = obs.features()
    for kind in spec.joint_kinds:
        features[kind] = values_by_name(IIWA_JOINT_NAMES, features[kind], spec.joint_names,
                                        "position" if kind == "joint_positions" else "velocity")
    return features


def camera_for_model(meta: PolicyMetadata, camera: CameraSpec | None = None) -> CameraSpec | None:
    """The sim camera a model's image feature needs, or None for a state-only model.

    Without ``camera``: the default camera pose and rate, named and sized as the model's feature.
    With one: it must have the feature's camera name and frame size (ModelFileError otherwise).
    The sim has one camera: a model observing several is refused.
    """
    features = meta.observation.image_features
    if not features:
        if camera is not None:
            raise ModelFileError(f"model {meta.name} observes no camera, but camera {camera.name!r} was given")
        return None
    if len(features) > 1:
        raise ModelFileError(f"model {meta.name} observes cameras {[f.camera for f in features]}; the sim renders one")
    feature = features[0]
    height, width = feature.image_shape[:2]
    if camera is None:
        return CameraSpec(name=feature.camera, width=width, height=height)
    if camera.name != feature.camera or (camera.height, camera.width) != (height, width):
        raise ModelFileError(f"model {meta.name}: its {feature.name} is camera {feature.camera!r} at {height}x{width} "
                             f"(H x W), the given sim camera is {camera.name!r} at {camera.height}x{camera.width}")
    return camera


def frames_in_force(meta: PolicyMetadata, obs: Observation) -> dict[str, np.ndarray] | None:
    """Image feature name -> the latest frame of its camera at ``obs`` (None for a state-only model).

    Raises RuntimeError when a camera has no frame yet or its frame is older than the feature's
    max age (the sim renders on a fixed schedule, so either is a bug in the loop, not a hold).
    """
    features = meta.observation.image_features
    if not features:
        return None
    frames = {}
    for feature in features:
        if feature.camera not in obs.images:
            raise RuntimeError(f"camera {feature.camera!r}: no frame rendered by t = {obs.time_s:.3f} s")
        stamp_ns, frame = obs.images[feature.camera]
        age_s = obs.time_s - (stamp_ns - STAMP_BASE_NS) * 1e-9
        if feature.max_age_s is not None and age_s > feature.max_age_s + 1e-9:
            raise RuntimeError(f"camera {feature.camera!r}: frame {age_s * 1e3:.1f} ms old at t = {obs.time_s:.3f} s, "
                               f"max age {feature.max_age_s * 1e3:.0f} ms")
        frames[feature.name] = frame
    return frames


def _failure(env: SimEnv, invalid_outputs: int = 0, ood_holds: int = 0, goal_rejected: bool = False) -> str | None:
    """Why an episode failed: a collision first (physical), then what the guards saw, else a timeout."""
    status = env.status()
    if status.success:
        return None
    if status.self_collision:
        return "self_collision"
    if status.obstacle_contact:
        return "obstacle_contact"
    if goal_rejected:
        return "goal_rejected"
    if invalid_outputs:
        return "invalid_output"
    if ood_holds:
        return "out_of_distribution"
    return "timeout"


class ClosedLoop:
    """Runs episodes of one policy in one :class:`SimEnv` (its PyBullet client is reused).

    Args:
        policy: the loaded ONNX policy.
        config: execution settings.
        camera: the sim camera for a camera model (default: :func:`camera_for_model`'s); its name
            and size must match the model's image feature.
    """

    def __init__(self, policy: ChunkPolicy, config: LoopConfig = DEFAULT_SETTINGS, camera: CameraSpec | None = None) -> None:
        self.policy = policy
        self.meta = meta = policy.metadata
        check_sim_joints(meta)
        self.config = config
        self.guidance = validate_config(config, meta)
        self.limits = SafetyLimits.from_joint_limits(meta.limits, config.max_velocity_scale)
        self.controller_config = controller_config(config, meta)
        self.camera = camera_for_model(meta, camera)
        self.env = SimEnv(control_period_s=meta.control_period_s, record=False, camera=self.camera)

    def close(self) -> None:
        self.env.close()

    def __enter__(self) -> ClosedLoop:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run_episode(self, task: str, seed: int) -> EpisodeResult:
        """Episode ``seed`` of ``task`` from reset until the env is done (time limit or collision)."""
        return self.run_spec(sample_episode(task, seed))

    def run_spec(self, spec: EpisodeSpec) -> EpisodeResult:
        """The episode described by ``spec``."""
        meta, env = self.meta, self.env
        controller = PolicyController(self.controller_config, self.limits)
        self.policy.reseed(spec.seed)
        env.reset_to(spec)
        begin = getattr(self.policy, "begin_episode", None)
        if begin is not None:  # a reference chunk source (the scripted expert) plans the episode
            begin(spec, env)
        first = sim_features(meta.observation, env.observe())
        for feature in meta.observation.vector_features:  # the task's values (the goal), known at reset
            controller.on_feature(feature.name, first[feature.name])
        delay_ns = round(self.config.inject_delay_ms * 1e6)
        pending: list[tuple[int, InferenceResult]] = []  # (available at, result): injected delay
        period_ns = self.controller_config.period_ns
        joints = meta.observation.joint_names
        commands: list[np.ndarray] = []
        ee_path = [env.arm.end_effector_position()]
        chunk_ticks: list[int] = []
        latencies: list[float] = []
        first_invalid = ""
        first_density_hold: int | None = None
        scores: list[float] = []

        def joint_state(now_ns: int) -> tuple[list, np.ndarray]:
            obs = env.observe()
            positions = values_by_name(IIWA_JOINT_NAMES, obs.positions, joints, "position")
            velocities = values_by_name(IIWA_JOINT_NAMES, obs.velocities, joints, "velocity")
            measured = values_by_name(IIWA_JOINT_NAMES, obs.positions, meta.action_joint_names)
            return controller.on_joint_state(now_ns, positions, velocities, measured, now_ns), measured

        on_image = getattr(controller, "on_image", None)
        offered: dict[str, int] = {}  # image feature -> stamp of the last frame offered

        def offer_frames(now_ns: int) -> list:
            """New frames to a controller that pairs them (on_image), stamped on the loop's clock."""
            if on_image is None or not meta.observation.image_features:
                return []
            obs, out = env.observe(), []
            for feature in meta.observation.image_features:
                stamp_ns, frame = obs.images[feature.camera]
                if offered.get(feature.name) != stamp_ns:
                    offered[feature.name] = stamp_ns
                    age_ns = max(0, round(obs.time_s * 1e9) - (stamp_ns - STAMP_BASE_NS))
                    out += on_image(feature.name, frame, now_ns - age_ns, now_ns)
            return out

        offer_frames(0)
        joint_state(0)  # the driver's first joint state arrives before the first tick
        tick = 0
        while not env.done:
            now_ns = tick * period_ns
            decisions = controller.on_tick(now_ns)
            ready = [r for t, r in pending if t <= now_ns]
            pending = [(t, r) for t, r in pending if t > now_ns]
            decisions += offer_frames(now_ns)
            more, measured = joint_state(now_ns)
            decisions += more
            for request in [d for d in decisions if isinstance(d, InferenceRequest)]:
                if meta.observation.image_features and request.images is None:
                    # A controller without frame pairing (before issue 19 item 4's on_image): the
                    # loop attaches the frame in force at this tick itself.
                    request = replace(request, images=frames_in_force(meta, env.observe()))
                # as the node's worker: an invalid output is an invalid result, the arm holds; any
                # other failure of an in-process call is a bug and ends the evaluation
                result = infer(self.policy.predict, request, hold_on_error=False)
                latencies.append(result.latency_s)
                if result.log_likelihood is not None:
                    scores.append(result.log_likelihood)
                if result.invalid_output:
                    first_invalid = first_invalid or result.error
                if delay_ns > 0:
                    pending.append((request.received_ns + delay_ns, result))
                else:
                    ready.append(result)
            for result in ready:
                received = controller.counters.chunks_received
                decisions += controller.on_inference_result(result)
                if first_density_hold is None and controller.guard.density.holds:
                    first_density_hold = tick
                if controller.counters.chunks_received > received:
                    chunk_ticks.append(tick + max(0, result.prefix_length - (tick - result.tick)))
            sent = [d for d in decisions if isinstance(d, Command)]
            if sent:
                command = sent[-1].positions
            else:  # nothing new this tick: a forward position controller keeps its last command
                last = controller.last_command
                command = measured if last is None else last
            commands.append(command)
            env.step(values_by_name(meta.action_joint_names, command, IIWA_JOINT_NAMES, "command"))
            ee_path.append(env.arm.end_effector_position())
            tick += 1
        counters = controller.counters
        clipped = counters.limiter_clipped
        status = env.status()
        obstacle = None if spec.obstacle is None else (*spec.obstacle.center_xy, spec.obstacle.radius_m)
        return EpisodeResult(
            seed=spec.seed, success=status.success,
            failure=_failure(env, counters.invalid_outputs, counters.ood_holds, bool(controller.goal_rejection)),
            route=status.route,
            reached_time_s=status.reached_time_s, final_distance_m=status.final_distance_m,
            goal=np.asarray(spec.goal, dtype=np.float64), obstacle=obstacle, ee_path=np.asarray(ee_path),
            commands=np.asarray(commands).reshape(-1, meta.action_dim), chunk_ticks=chunk_ticks,
            latencies_s=latencies, clipped_by_limiter=clipped, counters=controller.counters.as_dict(),
            invalid_outputs=counters.invalid_outputs, first_invalid_output=first_invalid, ood_holds=counters.ood_holds,
            goal_rejection=controller.goal_rejection, density_holds=controller.guard.density.holds,
            first_density_hold_tick=first_density_hold, density_scores=scores,
        )


def run_episodes(
    policy: ChunkPolicy,
    task: str,
    seeds: Sequence[int],
    config: LoopConfig = DEFAULT_SETTINGS,
    on_episode: Callable[[EpisodeResult], None] | None = None,
    camera: CameraSpec | None = None,
) -> list[EpisodeResult]:
    """Run ``task`` on every episode seed in ``seeds``; ``on_episode`` is called after each (progress).
    ``camera``: the sim camera of a camera model (default :func:`camera_for_model`)."""
    results = []
    with ClosedLoop(policy, config, camera) as loop:
        for seed in seeds:
            result = loop.run_episode(task, int(seed))
            results.append(result)
            if on_episode is not None:
                on_episode(result)
    return results
