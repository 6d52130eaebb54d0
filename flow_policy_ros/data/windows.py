"""Recording → control-grid windows: the one definition of how a recording maps to decisions.

Used by training (:mod:`flow_policy_ros.policy.dataset`) and offline replay
(:mod:`flow_policy_ros.data.replay_decisions`), so both see the same observations and action chunks.

Conventions (shared with the runtime and offline replay):

- Control grid: ticks t_k = t_0 + k·dt with dt = ``ModelIO.control_period_s``. With
  ``DataConfig.action_source == 'commands'`` t_0 is the first command's stamp and the grid runs
  to the last command (within dt/2); the command of tick k is the last one stamped at or before
  t_k + dt/2, so stamp jitter below dt/2 maps each command to its own tick and a dropped
  command repeats the previous one (zero-order hold). With ``'joint_states'`` the grid starts at
  the first joint state and ends at the last, and the "command" of tick k is the measured
  position at t_{k+1} (so the last tick has no action and starts no window). With
  ``'joint_trajectory'`` and ``'controller_state'`` the recording carries the controller's
  position targets over time (:class:`~flow_policy_ros.data.targets.TargetSeries`: the spliced
  JointTrajectory commands as a JTC executes them, or its published reference), and the action
  of tick k is the target at t_{k+1}; the grid starts one period before the first defined target
  and ends one period before the last (so a policy's own chunk stream, point i at
  stamp + (i+1)·dt, gives exactly the per-tick commands it executed).
- Observation at tick k: the low-dimensional features of ``ModelIO.observation`` in order, each
  built by its kind (:data:`FEATURE_BUILDERS`): joint positions (rad) and velocities (rad/s)
  linearly interpolated at t_k in ``observation.joint_names`` order; a vector feature (e.g. the
  goal, m) held from its last message at or before t_k. Ticks where an observation is undefined
  (before the first joint state or vector message, after the last joint state) start no window.
- Image features (``image.<camera>``): the frame in force at tick k, i.e. the latest frame of
  ``EpisodeRecording.images[camera]`` stamped at or before t_k (:func:`frame_indices`); a tick
  before the camera's first frame starts no window. Frames are not copied per window: a window
  stores the index of its frame in the episode's (F, H, W, 3) uint8 array.
- Action chunk at tick k: the actions of ticks k, k+1, ..., k+H-1 in
  ``ModelIO.action_joint_names`` order (matched by name to ``DataConfig.command_joint_names``,
  which default to the action joints). The action of tick k is the position target to reach
  by t_{k+1}.
- End of an episode: a chunk that runs past the last action tick is padded by repeating the
  last action (the robot holds its final target). Windows never cross episodes.
- Windows per episode: one per tick with a defined observation and action; for a clean
  recording that is the number of commands K ('commands') or joint-state ticks − 1
  ('joint_states'), or the ticks the targets cover ('joint_trajectory', 'controller_state').

Arrays: observations (N, obs_dim) float32, actions (N, H, A) float32, episode_index (N,) int64.
"""

from __future__ import annotations

import numpy as np

from flow_policy_ros.contract import FeatureSpec, ModelIO
from flow_policy_ros.data.config import DataConfig
from flow_policy_ros.data.images import ImageSeries
from flow_policy_ros.data.recording import EpisodeRecording
from flow_policy_ros.data.timeseries import control_grid, period_ns, resample_linear, sample_hold
from flow_policy_ros.errors import DatasetError, TimeSeriesError


def _columns(names: list[str], wanted: tuple[str, ...], what: str, source: str) -> list[int]:
    index = {n: i for i, n in enumerate(names)}
    missing = [n for n in wanted if n not in index]
    if missing:
        raise DatasetError(f"{source}: {what} lacks joint(s) {missing}; it has {names}")
    return [index[n] for n in wanted]


def action_ticks(rec: EpisodeRecording, io: ModelIO, data_cfg: DataConfig,
                 source: str = "") -> tuple[np.ndarray, np.ndarray]:
    """The episode's control ticks (K,) int64 ns and the action of each tick (K, A) float64 (rad)."""
    step = period_ns(io.control_period_s)
    if data_cfg.action_source in ("joint_trajectory", "controller_state"):
        targets = rec.targets
        if targets is None:
            raise DatasetError(f"{source}: the recording holds no {data_cfg.action_source} targets "
                               f"({data_cfg.action_topic} was not read)")
        cols = _columns(list(targets.joint_names), io.action_joint_names, data_cfg.action_topic or "", source)
        grid = control_grid(targets.start_ns - step, targets.end_ns - step, io.control_period_s)
        return grid, targets.sample(grid + step)[:, cols]
    if data_cfg.action_source == "joint_states":
        cols = _columns(rec.joint_names, io.action_joint_names, "joint_states", source)
        grid = control_grid(rec.joint_times_ns[0], rec.joint_times_ns[-1], io.control_period_s)
        positions = resample_linear(rec.joint_times_ns, rec.positions[:, cols], grid)
        return grid[:-1], positions[1:]
    if len(rec.command_times_ns) == 0:
        raise DatasetError(f"{source}: no commands recorded; use data.action_source='joint_states'")
    cols = _columns(rec.command_joint_names, io.action_joint_names, "commands", source)
    t_cmd = rec.command_times_ns
    grid = control_grid(t_cmd[0], t_cmd[-1] + step // 2, io.control_period_s)
    # Query half a period late: a command stamped within ±dt/2 of its tick still lands on it.
    return grid, sample_hold(t_cmd, rec.commands[:, cols], grid + step // 2)


def _joint_positions(rec: EpisodeRecording, feature: FeatureSpec, cols: list[int], ticks_ns: np.ndarray,
                     source: str) -> np.ndarray:
    return resample_linear(rec.joint_times_ns, rec.positions[:, cols], ticks_ns)


def _joint_velocities(rec: EpisodeRecording, feature: FeatureSpec, cols: list[int], ticks_ns: np.ndarray,
                      source: str) -> np.ndarray:
    if np.isnan(rec.velocities[:, cols]).any():
        raise DatasetError(f"{source}: the observation needs joint_velocities but joint_states messages carry none")
    return resample_linear(rec.joint_times_ns, rec.velocities[:, cols], ticks_ns)


def _vector(rec: EpisodeRecording, feature: FeatureSpec, cols: list[int], ticks_ns: np.ndarray,
            source: str) -> np.ndarray:
    times, values = rec.vector_series(feature.name, source)
    if values.shape[1:] != (feature.size,):
        raise DatasetError(f"{source}: {feature.name} messages carry {values.shape[1:]} values, the model takes {feature.size}")
    return sample_hold(times, values, ticks_ns)


def vector_at(rec: EpisodeRecording, feature: FeatureSpec, ticks_ns: np.ndarray, source: str = "") -> np.ndarray:
    """The vector feature ``feature`` (K, size) held at ``ticks_ns`` (K,), e.g. a training-only target
    read beside the observation; a tick before its first message is a DatasetError naming it."""
    try:
        return _vector(rec, feature, [], ticks_ns, source)
    except TimeSeriesError as exc:
        raise DatasetError(f"{source}: {feature.name}: {exc}") from exc


#: How each low-dimensional feature kind is sampled at the control ticks: joint values
#: interpolated linearly, vectors held from the last message at or before the tick.
FEATURE_BUILDERS = {"joint_positions": _joint_positions, "joint_velocities": _joint_velocities, "vector": _vector}


def observations_at(rec: EpisodeRecording, ticks_ns: np.ndarray, io: ModelIO,
                    source: str = "") -> np.ndarray:
    """Observation vectors (K, obs_dim) float64 at ``ticks_ns`` (K,); ticks must be covered by the data."""
    spec = io.observation
    cols = _columns(rec.joint_names, spec.joint_names, "joint_states", source)
    out = np.empty((len(ticks_ns), spec.obs_dim), np.float64)
    slices = spec.field_slices()
    for feature in spec.low_dim_features:
        out[:, slices[feature.name]] = FEATURE_BUILDERS[feature.kind](rec, feature, cols, ticks_ns, source)
    return out


def image_series(rec: EpisodeRecording, feature: FeatureSpec, source: str = "") -> ImageSeries:
    """The recorded frames of image feature ``feature``, checked against its ``image_shape``."""
    series = rec.images.get(feature.camera)
    if series is None or len(series.times_ns) == 0:
        raise DatasetError(f"{source or 'recording'}: no frames of camera {feature.camera!r} recorded "
                           f"(the model observes {feature.name!r} from {feature.topic})")
    if tuple(series.frames.shape[1:]) != tuple(feature.image_shape):
        raise DatasetError(f"{source or 'recording'}: camera {feature.camera!r} frames are "
                           f"{tuple(series.frames.shape[1:])}, the model takes {tuple(feature.image_shape)} (H, W, 3)")
    return series


def frame_indices(times_ns: np.ndarray, ticks_ns: np.ndarray) -> np.ndarray:
    """(K,) int64 index of the frame in force at each tick: the latest frame stamped at or before
    it (``times_ns`` (F,) sorted), -1 before the first frame."""
    return np.searchsorted(np.asarray(times_ns, np.int64), np.asarray(ticks_ns, np.int64), side="right") - 1


def observable_mask(rec: EpisodeRecording, ticks_ns: np.ndarray, io: ModelIO, source: str = "") -> np.ndarray:
    """Boolean mask (K,) of ticks where every observation feature is defined (a contiguous run)."""
    start = rec.joint_times_ns[0]
    for feature in io.observation.vector_features:
        times, _ = rec.vector_series(feature.name)
        start = max(start, times[0]) if len(times) else np.iinfo(np.int64).max
    for feature in io.observation.image_features:  # a recording without the camera's frames leaves it to the
        series = rec.images.get(feature.camera)     # caller (training: image_series raises; replay pairs frames itself)
        if series is not None and len(series.times_ns):
            start = max(start, series.times_ns[0])
    return (ticks_ns >= start) & (ticks_ns <= rec.joint_times_ns[-1])


def chunk_indices(first: int, count: int, horizon: int, num_ticks: int) -> np.ndarray:
    """(count, H) tick indices of the chunks starting at ticks first..first+count-1, clamped to the last tick."""
    starts = np.arange(first, first + count)[:, None]
    return np.minimum(starts + np.arange(horizon)[None, :], num_ticks - 1)
