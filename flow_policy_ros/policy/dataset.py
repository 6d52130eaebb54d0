"""rosbag2 episodes → (observation, action chunk) training windows, cached as npz.

The windowing itself (control grid, alignment, padding) is :mod:`flow_policy_ros.data.windows`,
shared with offline replay.

Arrays: observations (N, obs_dim) float32, actions (N, H, A) float32, episode_index (N,) int64;
camera models also frames[camera] (F, Hc, Wc, 3) uint8 (every recorded frame of every episode,
stored ONCE) and frame_index[camera] (N,) int64 (the frame in force at each window's tick, an
index into frames[camera]): 400 episodes of 6 s at 12.5 Hz and 96 x 96 are 30 k frames, 0.8 GB,
where a copy per window would be 4x that.

Values are checked before windowing: a recording with a non-finite or physically impossible
joint position (|q| > 2π rad, or an action joint beyond its limits by more than
:data:`IMPOSSIBLE_BEYOND_LIMIT_RAD`), an infinite velocity, a non-finite goal, command or target is a
one-line :class:`DatasetError` naming the bag, so bad data never reaches the statistics. Inputs
are only read.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from flow_policy_ros.data.bag import find_episodes, read_episode_bag, read_image_topic
from flow_policy_ros.data.images import ImageSeries
from flow_policy_ros.data.recording import EpisodeRecording
from flow_policy_ros.data.timeseries import TimeSeriesError
from flow_policy_ros.data.windows import (
    action_ticks,
    chunk_indices,
    frame_indices,
    image_series,
    observable_mask,
    observations_at,
    vector_at,
)
from flow_policy_ros.errors import DatasetError
from flow_policy_ros.policy.config import DataConfig, FeatureSpec, PolicyConfig, to_dict
from flow_policy_ros.policy.lerobot_windows import is_lerobot_dataset, lerobot_windows

#: Bump when the windowing changes, so stale caches are not reused.
CACHE_VERSION = 2  # 2: camera frames and per-window frame indices
#: A recorded position this far beyond an action joint's limit (rad) is a broken recording, not motion.
IMPOSSIBLE_BEYOND_LIMIT_RAD = 0.5
#: No revolute joint reading beyond one turn (rad) is plausible.
MAX_ABS_POSITION_RAD = 2 * np.pi



@dataclass
class Windows:
    """Training windows.

    Attributes:
        observations: (N, obs_dim) float32, raw robot units (rad, rad/s, m).
        actions: (N, H, A) float32, joint position targets (rad).
        episode_index: (N,) int64, index into ``summary['sources']`` of each window's episode.
        summary: JSON-able facts: episodes, windows, sources, per-episode success, skipped failures.
        frames: camera name -> (F, Hc, Wc, 3) uint8, every frame once (camera models; else empty).
        frame_index: camera name -> (N,) int64, each window's frame in ``frames[camera]``.
        aux: (N, d) float32, a training-only target per window (``train.image_aux_feature``, e.g.
            the object position (m)); (N, 0) without one.
    """

    observations: np.ndarray
    actions: np.ndarray
    episode_index: np.ndarray
    summary: dict[str, Any] = field(default_factory=dict)
    frames: dict[str, np.ndarray] = field(default_factory=dict)
    frame_index: dict[str, np.ndarray] = field(default_factory=dict)
    aux: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.observations = np.asarray(self.observations, dtype=np.float32)
        self.aux = np.asarray(np.zeros((len(self.observations), 0)) if self.aux is None else self.aux, dtype=np.float32)
        self.actions = np.asarray(self.actions, dtype=np.float32)
        self.episode_index = np.asarray(self.episode_index, dtype=np.int64)
        n = len(self.observations)
        if self.observations.ndim != 2 or self.actions.ndim != 3 or len(self.actions) != n \
                or self.episode_index.shape != (n,):
            raise DatasetError(
                f"inconsistent windows: observations {self.observations.shape}, actions {self.actions.shape}, "
                f"episode_index {self.episode_index.shape}; expected (N, obs_dim), (N, H, A), (N,)"
            )
        if self.aux.ndim != 2 or len(self.aux) != n:
            raise DatasetError(f"inconsistent windows: aux {self.aux.shape}, expected ({n}, d)")
        if sorted(self.frames) != sorted(self.frame_index):
            raise DatasetError(f"inconsistent windows: frames of cameras {sorted(self.frames)} but frame indices "
                               f"of {sorted(self.frame_index)}")
        for camera in self.frames:
            frames = np.asarray(self.frames[camera])
            index = np.asarray(self.frame_index[camera], dtype=np.int64)
            if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3 or index.shape != (n,):
                raise DatasetError(f"inconsistent windows: camera {camera!r} frames {frames.shape} {frames.dtype}, "
                                   f"frame_index {index.shape}; expected (F, H, W, 3) uint8 and ({n},)")
            if n and (index.min() < 0 or index.max() >= len(frames)):
                raise DatasetError(f"inconsistent windows: camera {camera!r} frame_index outside [0, {len(frames)})")
            self.frames[camera], self.frame_index[camera] = frames, index

    def __len__(self) -> int:
        return len(self.observations)

    def save_npz(self, path: Path) -> None:
        """Write as an uncompressed npz (summary as a JSON string), atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            images = {f"frames__{c}": v for c, v in self.frames.items()}
            images.update({f"frame_index__{c}": v for c, v in self.frame_index.items()})
            if self.aux.shape[1]:
                images["aux"] = self.aux
            np.savez(f, observations=self.observations, actions=self.actions, episode_index=self.episode_index,
                     summary=np.array(json.dumps(self.summary, sort_keys=True)), **images)
        os.replace(tmp, path)

    @classmethod
    def load_npz(cls, path: Path) -> Windows:
        """Read an npz with keys observations, actions and optional episode_index, summary."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                missing = [k for k in ("observations", "actions") if k not in data.files]
                if missing:
                    raise DatasetError(f"{path}: missing array(s) {missing}; has {sorted(data.files)}")
                obs, act = data["observations"], data["actions"]
                index = data["episode_index"] if "episode_index" in data.files else np.zeros(len(obs), np.int64)
                summary = json.loads(str(data["summary"])) if "summary" in data.files else {}
                frames = {k[len("frames__"):]: data[k] for k in data.files if k.startswith("frames__")}
                frame_index = {k[len("frame_index__"):]: data[k] for k in data.files if k.startswith("frame_index__")}
                aux = data["aux"] if "aux" in data.files else None
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
            raise DatasetError(f"{path}: not a readable npz windows file ({exc})") from exc
        try:
            return cls(obs, act, index, summary, frames, frame_index, aux)
        except DatasetError as exc:
            raise DatasetError(f"{path}: {exc}") from exc

    def check_shapes(self, policy_cfg: PolicyConfig, source: Path | str) -> None:
        """Raise DatasetError naming ``source`` unless shapes are (N, obs_dim) and (N, H, A) of the config."""
        obs_dim, h, a = policy_cfg.obs_dim, policy_cfg.horizon, policy_cfg.action_dim
        if self.observations.shape[1] != obs_dim:
            raise DatasetError(f"{source}: observations have shape {self.observations.shape}, expected "
                               f"(N, {obs_dim}) for observation fields {list(policy_cfg.observation.fields)}")
        if self.actions.shape[1:] != (h, a):
            raise DatasetError(f"{source}: actions have shape {self.actions.shape}, expected (N, {h}, {a}) "
                               f"(horizon H={h}, action joints A={a})")
        for feature in policy_cfg.observation.image_features:
            frames = self.frames.get(feature.camera)
            if frames is None:
                raise DatasetError(f"{source}: no frames of camera {feature.camera!r}; the model observes {feature.name!r}")
            if tuple(frames.shape[1:]) != tuple(feature.image_shape):
                raise DatasetError(f"{source}: camera {feature.camera!r} frames are {tuple(frames.shape[1:])}, "
                                   f"expected {tuple(feature.image_shape)} (H, W, 3)")

    def window_frames(self, camera: str, index: np.ndarray) -> np.ndarray:
        """The frames (len(index), H, W, 3) uint8 in force at windows ``index``."""
        return self.frames[camera][self.frame_index[camera][index]]


def _first_bad(values: np.ndarray, bad: np.ndarray, names: list[str], what: str, unit: str,
               times_ns: np.ndarray | None = None) -> str:
    """'<what> of <joint> is <value> <unit> at sample <i>' (or 'at <t> ns' with ``times_ns`` (T,)) for
    the first True of ``bad`` (T, J), else ''."""
    hits = np.argwhere(bad)
    if len(hits) == 0:
        return ""
    i, j = (int(v) for v in hits[0])
    where = f"sample {i}" if times_ns is None else f"{int(times_ns[i])} ns"
    return f"{what} of {names[j]} is {values[i, j]} {unit} at {where} ({len(hits)} bad value(s))"


def check_recording_values(rec: EpisodeRecording, policy_cfg: PolicyConfig, source: str) -> None:
    """Raise DatasetError naming ``source`` for a value no real robot recording can hold.

    Checked: joint positions, commands and targets (trajectory points, controller references)
    finite and within ±2π rad, action joints within their
    limits ± :data:`IMPOSSIBLE_BEYOND_LIMIT_RAD`; velocities not infinite (NaN marks "not
    recorded"); goals finite.
    """
    limits = policy_cfg.limits
    lower = dict(zip(policy_cfg.action_joint_names, limits.lower))
    upper = dict(zip(policy_cfg.action_joint_names, limits.upper))

    def positions(values: np.ndarray, names: list[str], what: str, times_ns: np.ndarray | None = None) -> str:
        values = np.asarray(values, np.float64).reshape(len(values), len(names))
        lo = np.array([lower.get(n, -np.inf) - IMPOSSIBLE_BEYOND_LIMIT_RAD for n in names])
        hi = np.array([upper.get(n, np.inf) + IMPOSSIBLE_BEYOND_LIMIT_RAD for n in names])
        with np.errstate(invalid="ignore"):
            found = _first_bad(values, ~np.isfinite(values), names, what, "rad (non-finite)", times_ns)
            found = found or _first_bad(values, np.abs(values) > MAX_ABS_POSITION_RAD, names, what,
                                        "rad (beyond ±2π: physically impossible)", times_ns)
            found = found or _first_bad(values, (values < lo) | (values > hi), names, what,
                                        f"rad (beyond the joint limits by more than {IMPOSSIBLE_BEYOND_LIMIT_RAD} rad)", times_ns)
        return found

    problem = positions(rec.positions, list(rec.joint_names), "joint_states position")
    if not problem and len(rec.velocities):
        problem = _first_bad(rec.velocities, np.isinf(rec.velocities), list(rec.joint_names),
                             "joint_states velocity", "rad/s (infinite)")
    if not problem and len(rec.goals):
        problem = _first_bad(rec.goals, ~np.isfinite(rec.goals), ["x", "y", "z"], "goal", "m (non-finite)")
    if not problem and len(rec.command_times_ns):
        problem = positions(rec.commands, list(rec.command_joint_names), "command")
    if not problem and rec.targets is not None:
        problem = positions(rec.targets.values, list(rec.targets.joint_names), "target", rec.targets.times_ns)
    if problem:
        raise DatasetError(f"{source}: {problem}")


def check_windows_values(windows: Windows, source: Path | str) -> None:
    """Raise DatasetError naming ``source`` when a window holds NaN/inf (e.g. a hand-made npz)."""
    for name, values in (("observations", windows.observations), ("actions", windows.actions)):
        bad = ~np.isfinite(values)
        if bad.any():
            first = tuple(int(v) for v in np.argwhere(bad)[0])
            raise DatasetError(f"{source}: {name} has {int(bad.sum())} NaN/inf value(s), the first at index {first}")


def describe_windows(windows: Windows) -> None:
    """Add the training range of every observation dimension to ``windows.summary``.

    ``observation_range``: {'low', 'high'} (obs_dim,) min/max over the windows, what the exported
    out-of-distribution guard checks against (the data's content hash is train's ``data_sha256``).
    """
    if len(windows):
        windows.summary["observation_range"] = {"low": windows.observations.min(axis=0).astype(float).tolist(),
                                                "high": windows.observations.max(axis=0).astype(float).tolist()}


def windows_from_recording(rec: EpisodeRecording, policy_cfg: PolicyConfig, data_cfg: DataConfig,
                           source: str = "", episode_index: int = 0, aux: FeatureSpec | None = None) -> Windows:
    """Cut one episode into windows (see the module docstring for alignment and padding); ``aux``: a
    vector feature also read at each window's tick (``Windows.aux``), not part of the observation."""
    empty_summary = {"episodes": 1, "windows": 0, "sources": [source], "success": [rec.metadata.get("success")]}
    if len(rec.joint_times_ns) == 0:
        raise DatasetError(f"{source}: no joint states recorded")
    cameras = policy_cfg.observation.image_features
    try:
        ticks, actions = action_ticks(rec, policy_cfg.io, data_cfg, source)
        keep = np.flatnonzero(observable_mask(rec, ticks, policy_cfg.io, source))
        h, a = policy_cfg.horizon, policy_cfg.action_dim
        if len(keep) == 0:
            empty_frames = {f.camera: np.zeros((0, *f.image_shape), np.uint8) for f in cameras}
            return Windows(np.zeros((0, policy_cfg.obs_dim)), np.zeros((0, h, a)), np.zeros(0), empty_summary,
                           empty_frames, {c: np.zeros(0, np.int64) for c in empty_frames},
                           np.zeros((0, aux.size if aux else 0)))
        obs = observations_at(rec, ticks[keep], policy_cfg.io, source)
    except TimeSeriesError as exc:
        raise DatasetError(f"{source}: {exc}") from exc
    chunks = actions[chunk_indices(int(keep[0]), len(keep), h, len(ticks))]
    summary = {**empty_summary, "windows": len(keep)}
    frames, frame_index = {}, {}
    for feature in cameras:  # the frame in force at each kept tick (>= 0: the mask starts at the first frame)
        series = image_series(rec, feature, source)
        frames[feature.camera] = series.frames
        frame_index[feature.camera] = frame_indices(series.times_ns, ticks[keep])
    targets = None if aux is None else vector_at(rec, aux, ticks[keep], source)
    return Windows(obs, chunks, np.full(len(keep), episode_index), summary, frames, frame_index, targets)


# --------------------------------------------------------------------------- directories and cache




def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/flow_policy_ros/windows`` (``~/.cache/...`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "flow_policy_ros" / "windows"


def cache_key(root: Path, episodes: list[Path], policy_cfg: PolicyConfig, data_cfg: DataConfig,
              include_failures: bool, aux: FeatureSpec | None = None) -> str:
    """Hash of every episode file's name, size and mtime plus the config that shapes the windows."""
    digest = hashlib.sha256()
    relevant = {
        "version": CACHE_VERSION,
        "observation": to_dict(policy_cfg.observation),
        "action_joint_names": list(policy_cfg.action_joint_names),
        "horizon": policy_cfg.horizon,
        "control_period_s": policy_cfg.control_period_s,
        "data": to_dict(data_cfg),
        "include_failures": include_failures,
        "root": str(root.resolve()),
    }
    if aux is not None:
        relevant["aux"] = to_dict(aux)
    digest.update(json.dumps(relevant, sort_keys=True).encode())
    for episode in episodes:
        for file in sorted(p for p in episode.iterdir() if p.is_file()):
            stat = file.stat()
            digest.update(f"{file.relative_to(root)}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


def _read_for_windows(episode: Path, policy_cfg: PolicyConfig, data_cfg: DataConfig,
                      aux: FeatureSpec | None = None) -> EpisodeRecording:
    joints = list(policy_cfg.observation.joint_names)
    if data_cfg.action_source == "joint_states":
        joints += [n for n in policy_cfg.action_joint_names if n not in joints]
    command_joints = data_cfg.command_joint_names or policy_cfg.action_joint_names
    rec = read_episode_bag(episode, data_cfg, joint_names=joints, command_joint_names=command_joints,
                           vector_features=(*policy_cfg.observation.vector_features, *([aux] if aux else [])))
    for feature in policy_cfg.observation.image_features:  # camera models: the frames of each camera
        times, frames = read_image_topic(episode, "/" + feature.topic.lstrip("/"))
        rec.images[feature.camera] = ImageSeries(f"{feature.camera}_optical_frame", times, frames)
    return rec


def windows_from_directory(root: Path, policy_cfg: PolicyConfig, data_cfg: DataConfig,
                           include_failures: bool = False, progress: bool = True,
                           aux: FeatureSpec | None = None) -> Windows:
    """Windows of every episode under ``root``; episodes with success=false are skipped unless included
    (``aux``: see :func:`windows_from_recording`)."""
    episodes = find_episodes(root)
    if not episodes:
        raise DatasetError(f"{root}: no rosbag2 episodes (directories with metadata.yaml)")
    parts: list[Windows] = []
    sources: list[str] = []
    success: list[bool | None] = []
    skipped: list[str] = []
    for episode in tqdm(episodes, desc="episodes", unit="ep", disable=not progress):
        rec = _read_for_windows(episode, policy_cfg, data_cfg, aux)
        check_recording_values(rec, policy_cfg, str(episode))
        name = str(episode.relative_to(root)) if episode != root else episode.name
        if rec.metadata.get("success") is False and not include_failures:
            skipped.append(name)
            continue
        parts.append(windows_from_recording(rec, policy_cfg, data_cfg, str(episode), len(sources), aux))
        sources.append(name)
        success.append(rec.metadata.get("success"))
    h, a = policy_cfg.horizon, policy_cfg.action_dim
    frames, frame_index = {}, {}
    for feature in policy_cfg.observation.image_features:  # one frame array; per-episode indices offset into it
        camera = feature.camera
        offsets = np.cumsum([0] + [len(p.frames[camera]) for p in parts])
        frames[camera] = (np.concatenate([p.frames[camera] for p in parts]) if parts
                          else np.zeros((0, *feature.image_shape), np.uint8))
        frame_index[camera] = (np.concatenate([p.frame_index[camera] + offsets[i] for i, p in enumerate(parts)])
                               if parts else np.zeros(0, np.int64))
    windows = Windows(
        np.concatenate([p.observations for p in parts]) if parts else np.zeros((0, policy_cfg.obs_dim)),
        np.concatenate([p.actions for p in parts]) if parts else np.zeros((0, h, a)),
        np.concatenate([p.episode_index for p in parts]) if parts else np.zeros(0),
        {"root": str(root), "episodes": len(sources), "windows": sum(len(p) for p in parts), "sources": sources,
         "success": success, "windows_per_episode": [len(p) for p in parts],
         "skipped_failures": len(skipped), "skipped_sources": skipped, "action_source": data_cfg.action_source},
        frames, frame_index,
        np.concatenate([p.aux for p in parts]) if parts else np.zeros((0, aux.size if aux else 0)),
    )
    if len(windows) == 0:
        raise DatasetError(f"{root}: no training windows ({len(episodes)} episodes, {len(skipped)} skipped "
                           f"as failures, the rest too short)")
    return windows


def load_training_data(path: Path, policy_cfg: PolicyConfig, data_cfg: DataConfig,
                       cache_dir: Path | None = None, include_failures: bool = False,
                       progress: bool = True, aux: FeatureSpec | None = None) -> Windows:
    """Training windows from an npz windows file, a directory of rosbag2 episodes, or a LeRobotDataset
    v3.0 directory (``meta/info.json``; :mod:`flow_policy_ros.policy.lerobot_windows`, not cached).

    A directory is windowed once and cached in ``cache_dir`` (default :func:`default_cache_dir`)
    as ``windows-<key>.npz``, the key hashing file names, sizes, mtimes and the relevant config,
    so a repeated call with unchanged data loads the cache. The result's shapes are checked
    against ``policy_cfg``. ``aux``: a training-only vector feature read per window
    (``Windows.aux``; rosbag2 directories only).
    """
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such training data (expected an .npz file, a directory of bags or a LeRobot dataset)")
    if aux is not None and (path.is_file() or is_lerobot_dataset(path)):
        raise DatasetError(f"{path}: train.image_aux_feature {aux.name!r} is read from rosbag2 episodes; "
                           "this is not a directory of bags")
    if path.is_file() or is_lerobot_dataset(path):
        windows = Windows.load_npz(path) if path.is_file() else Windows(*lerobot_windows(path, policy_cfg, progress))
        windows.check_shapes(policy_cfg, path)
        check_windows_values(windows, path)
        describe_windows(windows)
        return windows
    episodes = find_episodes(path)
    cache_file = Path(cache_dir or default_cache_dir()) / (
        f"windows-{cache_key(path, episodes, policy_cfg, data_cfg, include_failures, aux)}.npz")
    if cache_file.is_file():
        try:
            windows = Windows.load_npz(cache_file)
            windows.summary["cache"] = {"file": str(cache_file), "hit": True}
            windows.check_shapes(policy_cfg, cache_file)
            check_windows_values(windows, cache_file)
            if "observation_range" not in windows.summary:  # a cache written before the summary had it
                describe_windows(windows)
            return windows
        except DatasetError as exc:
            warnings.warn(f"{cache_file}: unusable cache, rebuilding ({exc})", stacklevel=2)
    windows = windows_from_directory(path, policy_cfg, data_cfg, include_failures, progress, aux)
    windows.check_shapes(policy_cfg, path)
    describe_windows(windows)
    windows.save_npz(cache_file)
    windows.summary["cache"] = {"file": str(cache_file), "hit": False}
    return windows


__all__ = [
    "CACHE_VERSION", "DatasetError", "Windows", "action_ticks", "cache_key", "check_recording_values",
    "check_windows_values", "chunk_indices", "default_cache_dir", "describe_windows",
    "find_episodes", "load_training_data", "observable_mask", "observations_at", "windows_from_directory", "windows_from_recording",
]
