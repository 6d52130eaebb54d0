"""Training windows from a LeRobotDataset v3.0 directory, through the same named-feature spec as bags.

``flow-policy train DATASET`` with a directory holding ``meta/info.json`` reads it here
(:func:`is_lerobot_dataset`); :func:`~flow_policy_ros.policy.dataset.load_training_data` calls
:func:`lerobot_windows`. The windows are the ones :mod:`flow_policy_ros.data.windows` cuts from
bags, so a dataset converted from bags (``flow-policy convert --to-lerobot``) trains on exactly the
windows of those bags:

- frame k is control tick k: the dataset's fps must be 1 / ``policy.control_period_s`` and the
  frames of an episode consecutive (timestamps k/fps, no gap);
- observation k = ``observation.state`` of frame k, the values of the policy's
  ``ObservationSpec.state_names()`` (``<joint>.pos``, ``<joint>.vel``, ``goal.x`` ...) picked by
  name (a bare ``<joint>`` stands for ``<joint>.pos``), so the dataset may hold more values, in
  any order;
- image ``image.<camera>`` of window k = frame k of video feature ``observation.images.<camera>``
  (``FeatureSpec.lerobot_key``), decoded frame-accurately by
  :meth:`~flow_policy_ros.data.lerobot_reader.LeRobotDataset.episode_frames`. The frames take the
  representation of the bag path (:class:`~flow_policy_ros.policy.dataset.Windows`): one (F, H, W, 3)
  uint8 array per camera, each distinct frame once (:class:`~flow_policy_ros.data.images.FrameStore`:
  a converted dataset repeats each camera image at the dataset's fps), and per window the index of its
  frame. Checked before any decoding (:func:`video_keys_of`): the video feature exists, its shape is
  the feature's ``image_shape``, every episode's video file exists and its span is its length; then
  every frame of every episode must decode;
- action chunk k = ``action`` of frames k..k+H-1 for ``policy.action_joint_names`` (by name),
  padded at the episode's end by repeating its last action; windows never cross episodes.

Arrays: observations (N, obs_dim) float32, actions (N, H, A) float32, episode_index (N,) int64,
frames[camera] (F, H, W, 3) uint8 and frame_index[camera] (N,) int64 (no npz cache: reading the parquet
is as fast as reading a cache; 96 x 96 AV1 decodes at about 4,000 frames/s here, docs/lerobot.md),
checked there like an npz file's (shapes, finite values). Every episode trains (a LeRobot
dataset has no success flag). Bad input is a one-line :class:`~flow_policy_ros.errors.DatasetError` naming the file and the feature.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from flow_policy_ros.data.images import FrameStore
from flow_policy_ros.data.lerobot import CODEBASE_VERSION, INFO_PATH
from flow_policy_ros.data.lerobot_reader import LeRobotDataset, read_dataset
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


def video_keys_of(ds: LeRobotDataset, policy_cfg: PolicyConfig) -> dict[str, str]:
    """Camera name -> the dataset's video feature for each image feature of the policy
    (``image.<camera>`` -> ``observation.images.<camera>``), checked before anything is decoded:
    the feature is a video of the dataset, its shape is the feature's ``image_shape``, and each episode's
    video file exists and spans its length (``LeRobotDataset.episode_video``)."""
    info = ds.root / INFO_PATH
    keys: dict[str, str] = {}
    for feature in policy_cfg.observation.image_features:
        key = feature.lerobot_key
        if key not in ds.video_keys:
            stored = ds.features.get(key, {}).get("dtype")
            how = f"it is stored as {stored!r}, not as video" if stored else f"the dataset's videos are {ds.video_keys}"
            raise DatasetError(f"{info}: no video feature {key!r} for the policy's {feature.name!r}; {how}")
        shape = [int(v) for v in ds.features[key]["shape"]]
        if shape != list(feature.image_shape):
            raise DatasetError(f"{info}: feature {key!r} has shape {shape}; the policy's {feature.name!r} takes "
                               f"image_shape {list(feature.image_shape)} (H, W, 3)")
        for episode in range(len(ds.episodes)):  # every file and span before a long decode
            ds.episode_video(episode, key)
        keys[feature.camera] = key
    return keys


def frame_store(ds: LeRobotDataset, key: str, total: int) -> FrameStore:
    """A FrameStore for up to ``total`` frames of video feature ``key``; DatasetError when even reserving
    them fails (they would not fit in memory once decoded, were they all distinct)."""
    shape = tuple(int(v) for v in ds.features[key]["shape"])
    try:
        return FrameStore(total, shape)
    except MemoryError as exc:
        raise DatasetError(f"{ds.root / INFO_PATH}: feature {key!r}: {total} frames of {list(shape)} "
                           f"({total * int(np.prod(shape)) / 1e9:.1f} GB as uint8) cannot be reserved in memory; "
                           "train on fewer episodes or smaller frames") from exc


def lerobot_windows(root: Path, policy_cfg: PolicyConfig, progress: bool = True) -> tuple[
        np.ndarray, np.ndarray, np.ndarray, dict[str, Any], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The training windows of the dataset at ``root`` (rule in the module docstring): observations
    (N, obs_dim), actions (N, H, A), episode_index (N,), the summary, frames {camera: (F, H, W, 3) uint8}
    and frame_index {camera: (N,)}, the fields of :class:`~flow_policy_ros.policy.dataset.Windows`
    (which ``load_training_data`` builds and checks). A progress bar counts the episodes' frames."""
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
    keys = video_keys_of(ds, policy_cfg)
    state_cols = ds.columns_of(STATE, policy_cfg.observation.state_names())
    action_cols = ds.columns_of(ACTION, policy_cfg.action_joint_names)
    total = sum(int(ep["length"]) for ep in ds.episodes)
    stores = {camera: frame_store(ds, key, total) for camera, key in keys.items()}
    h = policy_cfg.horizon
    obs_parts: list[np.ndarray] = []
    act_parts: list[np.ndarray] = []
    index_parts: list[np.ndarray] = []
    frame_parts: dict[str, list[np.ndarray]] = {camera: [] for camera in keys}
    sources: list[str] = []
    desc = f"episodes (decoding {', '.join(keys.values())})" if keys else "episodes"
    with tqdm(total=total, desc=desc, unit="frame", disable=not progress) as bar:
        for ep in ds.iter_episodes([STATE, ACTION]):
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
            for camera, key in keys.items():  # frame k of the video is window k's image
                frame_parts[camera].append(stores[camera].add(ds.episode_frames(ep.episode_index, key)))
            sources.append(f"episode_{ep.episode_index:06d}")
            bar.update(ep.length)
    frames = {camera: store.finish() for camera, store in stores.items()}
    summary = {
        "root": str(root), "format": f"LeRobotDataset {CODEBASE_VERSION}", "fps": ds.fps,
        "episodes": len(sources), "windows": int(sum(len(p) for p in obs_parts)), "sources": sources,
        "success": [None] * len(sources), "windows_per_episode": [len(p) for p in obs_parts],
        "skipped_failures": 0, "skipped_sources": [], "action_source": f"lerobot {ACTION!r}",
        "tasks": ds.tasks,
    }
    if keys:
        summary["videos"] = {key: {"decoded_frames": total, "distinct_frames": len(frames[camera])}
                             for camera, key in keys.items()}
    frame_index = {camera: np.concatenate(parts) for camera, parts in frame_parts.items()}
    return (np.concatenate(obs_parts), np.concatenate(act_parts), np.concatenate(index_parts), summary,
            frames, frame_index)
