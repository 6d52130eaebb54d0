"""rosbag2 episodes → (observation, action chunk) training windows, cached as npz.

The windowing itself (control grid, alignment, padding) is :mod:`flow_policy_ros.data.windows`,
shared with offline replay.

Arrays: observations (N, obs_dim) float32, actions (N, H, A) float32, episode_index (N,) int64.
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

from flow_policy_ros.data.bag import read_episode_bag
from flow_policy_ros.data.recording import EpisodeRecording
from flow_policy_ros.data.timeseries import TimeSeriesError
from flow_policy_ros.data.windows import action_ticks, chunk_indices, observable_mask, observations_at
from flow_policy_ros.errors import DatasetError
from flow_policy_ros.policy.config import DataConfig, PolicyConfig, to_dict

#: Bump when the windowing changes, so stale caches are not reused.
CACHE_VERSION = 1



@dataclass
class Windows:
    """Training windows.

    Attributes:
        observations: (N, obs_dim) float32, raw robot units (rad, rad/s, m).
        actions: (N, H, A) float32, joint position targets (rad).
        episode_index: (N,) int64, index into ``summary['sources']`` of each window's episode.
        summary: JSON-able facts: episodes, windows, sources, per-episode success, skipped failures.
    """

    observations: np.ndarray
    actions: np.ndarray
    episode_index: np.ndarray
    summary: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.observations = np.asarray(self.observations, dtype=np.float32)
        self.actions = np.asarray(self.actions, dtype=np.float32)
        self.episode_index = np.asarray(self.episode_index, dtype=np.int64)
        n = len(self.observations)
        if self.observations.ndim != 2 or self.actions.ndim != 3 or len(self.actions) != n \
                or self.episode_index.shape != (n,):
            raise DatasetError(
                f"inconsistent windows: observations {self.observations.shape}, actions {self.actions.shape}, "
                f"episode_index {self.episode_index.shape}; expected (N, obs_dim), (N, H, A), (N,)"
            )

    def __len__(self) -> int:
        return len(self.observations)

    def save_npz(self, path: Path) -> None:
        """Write as an uncompressed npz (summary as a JSON string), atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.savez(f, observations=self.observations, actions=self.actions, episode_index=self.episode_index,
                     summary=np.array(json.dumps(self.summary, sort_keys=True)))
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
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
            raise DatasetError(f"{path}: not a readable npz windows file ({exc})") from exc
        try:
            return cls(obs, act, index, summary)
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


def windows_from_recording(rec: EpisodeRecording, policy_cfg: PolicyConfig, data_cfg: DataConfig,
                           source: str = "", episode_index: int = 0) -> Windows:
    """Cut one episode into windows (see the module docstring for alignment and padding)."""
    empty_summary = {"episodes": 1, "windows": 0, "sources": [source], "success": [rec.metadata.get("success")]}
    if len(rec.joint_times_ns) == 0:
        raise DatasetError(f"{source}: no joint states recorded")
    try:
        ticks, actions = action_ticks(rec, policy_cfg.io, data_cfg, source)
        keep = np.flatnonzero(observable_mask(rec, ticks, policy_cfg.io))
        h, a = policy_cfg.horizon, policy_cfg.action_dim
        if len(keep) == 0:
            return Windows(np.zeros((0, policy_cfg.obs_dim)), np.zeros((0, h, a)), np.zeros(0), empty_summary)
        obs = observations_at(rec, ticks[keep], policy_cfg.io, source)
    except TimeSeriesError as exc:
        raise DatasetError(f"{source}: {exc}") from exc
    chunks = actions[chunk_indices(int(keep[0]), len(keep), h, len(ticks))]
    summary = {**empty_summary, "windows": len(keep)}
    return Windows(obs, chunks, np.full(len(keep), episode_index), summary)


# --------------------------------------------------------------------------- directories and cache


def find_episodes(root: Path) -> list[Path]:
    """rosbag2 directories (with metadata.yaml) at or under ``root``, sorted; hidden dirs are skipped."""
    if (root / "metadata.yaml").is_file():
        return [root]
    found = [p.parent for p in root.rglob("metadata.yaml")]
    return sorted(p for p in found if not any(part.startswith(".") for part in p.relative_to(root).parts))


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/flow_policy_ros/windows`` (``~/.cache/...`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "flow_policy_ros" / "windows"


def cache_key(root: Path, episodes: list[Path], policy_cfg: PolicyConfig, data_cfg: DataConfig,
              include_failures: bool) -> str:
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
    digest.update(json.dumps(relevant, sort_keys=True).encode())
    for episode in episodes:
        for file in sorted(p for p in episode.iterdir() if p.is_file()):
            stat = file.stat()
            digest.update(f"{file.relative_to(root)}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


def _read_for_windows(episode: Path, policy_cfg: PolicyConfig, data_cfg: DataConfig) -> EpisodeRecording:
    joints = list(policy_cfg.observation.joint_names)
    if data_cfg.action_source == "joint_states":
        joints += [n for n in policy_cfg.action_joint_names if n not in joints]
    command_joints = data_cfg.command_joint_names or policy_cfg.action_joint_names
    return read_episode_bag(episode, data_cfg, joint_names=joints, command_joint_names=command_joints)


def windows_from_directory(root: Path, policy_cfg: PolicyConfig, data_cfg: DataConfig,
                           include_failures: bool = False, progress: bool = True) -> Windows:
    """Windows of every episode under ``root``; episodes with success=false are skipped unless included."""
    episodes = find_episodes(root)
    if not episodes:
        raise DatasetError(f"{root}: no rosbag2 episodes (directories with metadata.yaml)")
    parts: list[Windows] = []
    sources: list[str] = []
    success: list[bool | None] = []
    skipped: list[str] = []
    for episode in tqdm(episodes, desc="episodes", unit="ep", disable=not progress):
        rec = _read_for_windows(episode, policy_cfg, data_cfg)
        name = str(episode.relative_to(root)) if episode != root else episode.name
        if rec.metadata.get("success") is False and not include_failures:
            skipped.append(name)
            continue
        parts.append(windows_from_recording(rec, policy_cfg, data_cfg, str(episode), len(sources)))
        sources.append(name)
        success.append(rec.metadata.get("success"))
    h, a = policy_cfg.horizon, policy_cfg.action_dim
    windows = Windows(
        np.concatenate([p.observations for p in parts]) if parts else np.zeros((0, policy_cfg.obs_dim)),
        np.concatenate([p.actions for p in parts]) if parts else np.zeros((0, h, a)),
        np.concatenate([p.episode_index for p in parts]) if parts else np.zeros(0),
        {"root": str(root), "episodes": len(sources), "windows": sum(len(p) for p in parts), "sources": sources,
         "success": success, "windows_per_episode": [len(p) for p in parts],
         "skipped_failures": len(skipped), "skipped_sources": skipped, "action_source": data_cfg.action_source},
    )
    if len(windows) == 0:
        raise DatasetError(f"{root}: no training windows ({len(episodes)} episodes, {len(skipped)} skipped "
                           f"as failures, the rest too short)")
    return windows


def load_training_data(path: Path, policy_cfg: PolicyConfig, data_cfg: DataConfig,
                       cache_dir: Path | None = None, include_failures: bool = False,
                       progress: bool = True) -> Windows:
    """Training windows from an npz windows file or a directory of rosbag2 episodes.

    A directory is windowed once and cached in ``cache_dir`` (default :func:`default_cache_dir`)
    as ``windows-<key>.npz``, the key hashing file names, sizes, mtimes and the relevant config,
    so a repeated call with unchanged data loads the cache. The result's shapes are checked
    against ``policy_cfg``.
    """
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such training data (expected an .npz file or a directory of bags)")
    if path.is_file():
        windows = Windows.load_npz(path)
        windows.check_shapes(policy_cfg, path)
        return windows
    episodes = find_episodes(path)
    cache_file = Path(cache_dir or default_cache_dir()) / (
        f"windows-{cache_key(path, episodes, policy_cfg, data_cfg, include_failures)}.npz")
    if cache_file.is_file():
        try:
            windows = Windows.load_npz(cache_file)
            windows.summary["cache"] = {"file": str(cache_file), "hit": True}
            windows.check_shapes(policy_cfg, cache_file)
            return windows
        except DatasetError as exc:
            warnings.warn(f"{cache_file}: unusable cache, rebuilding ({exc})", stacklevel=2)
    windows = windows_from_directory(path, policy_cfg, data_cfg, include_failures, progress)
    windows.check_shapes(policy_cfg, path)
    windows.save_npz(cache_file)
    windows.summary["cache"] = {"file": str(cache_file), "hit": False}
    return windows


__all__ = [
    "CACHE_VERSION", "DatasetError", "Windows", "action_ticks", "cache_key", "chunk_indices", "default_cache_dir",
    "find_episodes", "load_training_data", "observable_mask", "observations_at", "windows_from_directory", "windows_from_recording",
]
