"""Training windows from a LeRobotDataset v3.0 directory, through the same named-feature spec as bags.

``flow-policy train DATASET`` with a directory holding ``meta/info.json`` reads it here
(:func:`is_lerobot_dataset`); :func:`~flow_policy_ros.policy.dataset.load_training_data` calls
:func:`windows_from_lerobot`. The windows are the ones :mod:`flow_policy_ros.data.windows` cuts from
bags, so a dataset converted from bags (``flow-policy convert --to-lerobot``) trains on exactly the
windows of those bags:

- frame k is control tick k: the dataset's fps must be 1 / ``policy.control_period_s`` and the
  frames of an episode consecutive (timestamps k/fps, no gap);
- observation k = ``observation.state`` of frame k, the values of the policy's
  ``ObservationSpec.state_names()`` (``<joint>.pos``, ``<joint>.vel``, ``goal.x`` ...) picked by
  name (a bare ``<joint>`` stands for ``<joint>.pos``), so the dataset may hold more values, in
  any order;
- images: ``LeRobotDataset.episode_frames(e, "observation.images.<camera>")`` decodes an episode's
  frames (frame-accurate); a policy that observes images is refused here until the windows carry
  them, never trained on its low-dimensional inputs alone;
- action chunk k = ``action`` of frames k..k+H-1 for ``policy.action_joint_names`` (by name),
  padded at the episode's end by repeating its last action; windows never cross episodes.

Arrays: observations (N, obs_dim) float32, actions (N, H, A) float32, episode_index (N,) int64
(no npz cache: reading the parquet is as fast as reading a cache), checked there like an npz file's
(shapes, finite values). Every episode trains (a LeRobot
dataset has no success flag). Bad input is a one-line :class:`~flow_policy_ros.errors.DatasetError` naming the file and the feature.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from flow_policy_ros.data.lerobot import CODEBASE_VERSION, INFO_PATH
from flow_policy_ros.data.lerobot_reader import read_dataset
from flow_policy_ros.data.windows import chunk_indices
from flow_policy_ros.errors import DatasetError
from flow_policy_ros.policy.config import PolicyConfig

STATE = "observation.state"
ACTION = "action"
#: How far fps · control_period_s may be from 1.
FPS_TOLERANCE = 1e-6


def is_lerobot_dataset(path: Path) -> bool:
    """True for a directory with ``meta/info.json`` (its codebase_version is checked when it is read)."""
    return Path(path).is_dir() and (Path(path) / INFO_PATH).is_file()


def lerobot_windows(root: Path, policy_cfg: PolicyConfig, progress: bool = True) -> tuple[
        np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """The training windows of the dataset at ``root`` (rule in the module docstring): observations
    (N, obs_dim), actions (N, H, A), episode_index (N,) and the summary, the fields of
    :class:`~flow_policy_ros.policy.dataset.Windows` (which ``load_training_data`` builds and checks)."""
    root = Path(root)
    ds = read_dataset(root)
    info = root / INFO_PATH
    if abs(ds.fps * policy_cfg.control_period_s - 1.0) > FPS_TOLERANCE:
        raise DatasetError(f"{info}: fps is {ds.fps} but policy.control_period_s {policy_cfg.control_period_s} s "
                           f"needs {1.0 / policy_cfg.control_period_s:g} fps (frame k is control tick k)")
    for name in (STATE, ACTION):
        if name not in ds.features:
            raise DatasetError(f"{info}: no feature {name!r} (training reads {STATE!r} and {ACTION!r}); "
                               f"it declares {sorted(ds.features)}")
    cameras = [f"observation.images.{f.camera}" for f in policy_cfg.observation.image_features]
    missing = [key for key in cameras if key not in ds.video_keys]
    if missing:
        raise DatasetError(f"{info}: the policy observes {missing}; the dataset's videos are {ds.video_keys}")
    if cameras:  # never train an image policy on its low-dimensional inputs alone
        raise DatasetError(f"{info}: the policy observes {cameras}; these windows carry no images yet "
                           "(decode them with LeRobotDataset.episode_frames)")
    state_cols = ds.columns_of(STATE, policy_cfg.observation.state_names())
    action_cols = ds.columns_of(ACTION, policy_cfg.action_joint_names)
    h = policy_cfg.horizon
    obs_parts: list[np.ndarray] = []
    act_parts: list[np.ndarray] = []
    index_parts: list[np.ndarray] = []
    sources: list[str] = []
    for ep in tqdm(ds.iter_episodes([STATE, ACTION]), total=len(ds.episodes), desc="episodes", unit="ep",
                   disable=not progress):
        slots = np.round(ep.columns["timestamp"].astype(np.float64) * ds.fps).astype(np.int64)
        if not np.array_equal(slots - slots[0], np.arange(ep.length)):
            k = int(np.flatnonzero(np.diff(slots) != 1)[0]) + 1
            where = ds.data_file(int(ds.episodes[ep.episode_index]["data/chunk_index"]),
                                 int(ds.episodes[ep.episode_index]["data/file_index"]))
            raise DatasetError(f"{where}: feature 'timestamp' of episode "
                               f"{ep.episode_index} skips frame slots at frame {k} ({slots[k] - slots[k - 1]} periods); "
                               "training needs consecutive frames (frame k = control tick k)")
        actions = ep.columns[ACTION][:, action_cols]
        obs_parts.append(ep.columns[STATE][:, state_cols])
        act_parts.append(actions[chunk_indices(0, ep.length, h, ep.length)])
        index_parts.append(np.full(ep.length, len(sources), np.int64))
        sources.append(f"episode_{ep.episode_index:06d}")
    summary = {
        "root": str(root), "format": f"LeRobotDataset {CODEBASE_VERSION}", "fps": ds.fps,
        "episodes": len(sources), "windows": int(sum(len(p) for p in obs_parts)), "sources": sources,
        "success": [None] * len(sources), "windows_per_episode": [len(p) for p in obs_parts],
        "skipped_failures": 0, "skipped_sources": [], "action_source": f"lerobot {ACTION!r}",
        "tasks": ds.tasks,
    }
    return np.concatenate(obs_parts), np.concatenate(act_parts), np.concatenate(index_parts), summary
