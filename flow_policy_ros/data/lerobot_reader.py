"""Reading a LeRobotDataset v3.0 directory with pyarrow: validated metadata, frames episode by episode.

The format is described in :mod:`flow_policy_ros.data.lerobot` (the writer). :func:`read_dataset`
reads and checks the metadata; :meth:`LeRobotDataset.iter_episodes` yields one episode at a time,
holding one data file in memory. Every bad input raises
:class:`~flow_policy_ros.errors.DatasetError` with one line naming the file and the feature or field.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from flow_policy_ros.data.lerobot import (
    CODEBASE_VERSION,
    DEFAULT_FEATURES,
    EPISODES_DIR,
    INFO_PATH,
    STATS_PATH,
    TASKS_PATH,
    arrow_type,
)
from flow_policy_ros.data.lerobot_video import decode_frames, image_keys
from flow_policy_ros.errors import DatasetError

#: How far (s) a timestamp may lie from its frame slot (LeRobotDataset's default tolerance_s).
TIMESTAMP_TOLERANCE_S = 1e-4
#: A joint position's value name: '<joint>.pos', as ``ObservationSpec.state_names()`` and LeRobot's own
#: robots name it. A plain '<joint>' is read as the same value (datasets that name positions bare).
POSITION_SUFFIX = ".pos"


def name_aliases(name: str) -> tuple[str, ...]:
    """The value names that stand for ``name``: itself, then '<joint>' for '<joint>.pos' and vice versa."""
    if name.endswith(POSITION_SUFFIX):
        return name, name[: -len(POSITION_SUFFIX)]
    return name, name + POSITION_SUFFIX


def state_joint_names(names: Sequence[str]) -> list[str]:
    """The joints of an ``observation.state`` whose positions it holds, in its order: names ending in
    '.pos' (the suffix removed), or plain names without a dot ('<joint>.vel', 'goal.x' are not positions)."""
    return [n[: -len(POSITION_SUFFIX)] if n.endswith(POSITION_SUFFIX) else n
            for n in names if n.endswith(POSITION_SUFFIX) or "." not in n]


def _to_numpy(column: pa.ChunkedArray, ft: Mapping[str, Any]) -> np.ndarray:
    """A column → (N,) for (1,) features, (N, D) for vectors, in the feature's dtype."""
    dtype = np.dtype(ft["dtype"])
    if pa.types.is_fixed_size_list(column.type):
        flat = column.combine_chunks().flatten() if column.num_chunks else pa.array([], column.type.value_type)
        return flat.to_numpy(zero_copy_only=False).astype(dtype, copy=False).reshape(len(column), column.type.list_size)
    if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        return np.array(column.to_pylist(), dtype=dtype).reshape(len(column), -1)
    return column.to_numpy().astype(dtype, copy=False)


#: What pyarrow raises on a truncated or corrupt parquet file.
_PARQUET_ERRORS = (pa.ArrowException, OSError, ValueError)


def _read_parquet(path: Path, what: str, columns: Sequence[str] | None = None) -> pa.Table:
    if not path.is_file():
        raise DatasetError(f"{path}: missing {what}")
    try:
        return pq.read_table(path, columns=list(columns) if columns is not None else None)
    except _PARQUET_ERRORS as exc:
        raise DatasetError(f"{path}: corrupt parquet ({what}): {' '.join(str(exc).split())}") from exc


def _require(table: pa.Table, path: Path, names: Sequence[str], what: str) -> None:
    missing = [n for n in names if n not in table.column_names]
    if missing:
        raise DatasetError(f"{path}: {what} lacks column(s) {missing}; it has {table.column_names}")


@dataclass
class LeRobotEpisode:
    """One episode of a dataset: ``columns[name]`` is (N,) for (1,) features, (N, D) for vectors."""

    episode_index: int
    task: str
    columns: dict[str, np.ndarray]

    @property
    def length(self) -> int:
        return len(self.columns["frame_index"])


@dataclass
class LeRobotDataset:
    """A validated LeRobotDataset v3.0 directory (metadata in memory, frames read per episode).

    Attributes:
        root: the dataset directory.
        info: meta/info.json as a dict.
        tasks: task texts by task_index.
        episodes: the rows of meta/episodes/*/*.parquet without their stats columns, by episode_index.
        stats: meta/stats.json ({feature: {stat: list}}).
    """

    root: Path
    info: dict[str, Any]
    tasks: list[str]
    episodes: list[dict[str, Any]]
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def fps(self) -> int:
        return int(self.info["fps"])

    @property
    def features(self) -> dict[str, dict[str, Any]]:
        return dict(self.info["features"])

    def feature_names(self, name: str) -> list[str]:
        """The ``names`` of a vector feature (e.g. the joints of ``observation.state``)."""
        if name not in self.features:
            raise DatasetError(f"{self.root / INFO_PATH}: no feature {name!r}; it declares {sorted(self.features)}")
        names = self.features[name].get("names")
        if isinstance(names, dict):  # older LeRobot style {"motors": [...]}
            names = next(iter(names.values()))
        return [str(n) for n in names] if names is not None else []

    def columns_of(self, name: str, wanted: Sequence[str]) -> np.ndarray:
        """Indices (len(wanted),) of the ``wanted`` value names in vector feature ``name``, matched by name
        (:func:`name_aliases`: '<joint>.pos' and '<joint>' are one value); DatasetError naming the missing ones."""
        names = self.feature_names(name)
        index = {n: i for i, n in enumerate(names)}
        cols: list[int] = []
        missing: list[str] = []
        for value in wanted:
            found = [index[a] for a in name_aliases(value) if a in index]
            if found:
                cols.append(found[0])
            else:
                missing.append(value)
        if missing:
            raise DatasetError(f"{self.root / INFO_PATH}: feature {name!r} lacks {missing}; its names are {names}")
        return np.array(cols, np.int64)

    @property
    def video_keys(self) -> list[str]:
        """The features stored as mp4 video (``observation.images.<camera>``), in declaration order."""
        return image_keys(self.features)

    def video_file(self, key: str, chunk_index: int, file_index: int) -> Path:
        return self.root / str(self.info["video_path"]).format(video_key=key, chunk_index=chunk_index, file_index=file_index)

    def episode_video(self, episode_index: int, key: str) -> tuple[Path, float]:
        """The video file of video feature ``key`` holding episode ``episode_index`` and the time (s) of its
        frame 0 in that file, checked: the feature is a video, the file exists, and the episode's span
        (``to_timestamp - from_timestamp`` of meta/episodes) is its length. DatasetError naming file and feature."""
        if key not in self.video_keys:
            raise DatasetError(f"{self.root / INFO_PATH}: no video feature {key!r}; it has {self.video_keys}")
        ep = self.episodes[episode_index]
        path = self.video_file(key, int(ep[f"videos/{key}/chunk_index"]), int(ep[f"videos/{key}/file_index"]))
        if not path.is_file():
            raise DatasetError(f"{path}: missing video (feature {key!r})")
        start, end = float(ep[f"videos/{key}/from_timestamp"]), float(ep[f"videos/{key}/to_timestamp"])
        if round((end - start) * self.fps) != int(ep["length"]):
            raise DatasetError(f"{path}: feature {key!r}: episode {episode_index} spans {end - start:.4f} s of video "
                               f"({round((end - start) * self.fps)} frames at {self.fps} fps, from_timestamp/to_timestamp "
                               f"of meta/episodes) but has {ep['length']} frames")
        return path, start

    def episode_frames(self, episode_index: int, key: str) -> np.ndarray:
        """Frames (N, H, W, 3) uint8 RGB of video feature ``key`` in episode ``episode_index``, frame k
        decoded from ``from_timestamp + k / fps`` of its file (frame-accurate; lossy codec: docs/lerobot.md)."""
        path, start = self.episode_video(episode_index, key)
        frames = decode_frames(path, start, int(self.episodes[episode_index]["length"]), self.fps, key)
        shape = tuple(self.features[key]["shape"])
        if frames.shape[1:] != shape:
            raise DatasetError(f"{path}: feature {key!r}: frames are {list(frames.shape[1:])}, "
                               f"meta/info.json declares shape {list(shape)}")
        return frames

    def data_file(self, chunk_index: int, file_index: int) -> Path:
        return self.root / str(self.info["data_path"]).format(chunk_index=chunk_index, file_index=file_index)

    def iter_episodes(self, wanted: Sequence[str] | None = None) -> Iterator[LeRobotEpisode]:
        """Episodes in order; ``wanted`` features (default: all numeric ones) plus the default features.

        One data file is held in memory at a time. Checks per episode: every wanted feature is a
        column of the data file with the declared width, ``episode_index``/``frame_index``/
        ``index`` agree with meta/episodes, and each timestamp lies within
        :data:`TIMESTAMP_TOLERANCE_S` of its frame slot ``round(timestamp·fps)/fps``, the slots
        increasing (a gap is allowed, a repeat or reversal is not).
        """
        features = self.features
        names = [n for n in (wanted if wanted is not None else features)
                 if n not in DEFAULT_FEATURES and (wanted is not None or features[n].get("dtype") != "video")]
        for name in names:
            if name not in features:
                raise DatasetError(f"{self.root / INFO_PATH}: no feature {name!r}; it declares {sorted(features)}")
        names += list(DEFAULT_FEATURES)
        current: tuple[int, int] | None = None
        table: pa.Table | None = None
        for ep in self.episodes:
            key = (int(ep["data/chunk_index"]), int(ep["data/file_index"]))
            path = self.data_file(*key)
            if key != current:
                table = _read_parquet(path, "frames")
                _require(table, path, names, f"data for feature(s) {names}")
                current = key
            assert table is not None
            episode_index = int(ep["episode_index"])
            column = table.column("episode_index").to_numpy()
            rows = np.flatnonzero(column == episode_index)
            if len(rows) != int(ep["length"]):
                raise DatasetError(f"{path}: episode {episode_index} has {len(rows)} frames, meta/episodes says "
                                   f"length {ep['length']}")
            part = table.take(pa.array(rows))
            cols: dict[str, np.ndarray] = {}
            for name in names:
                try:
                    cols[name] = _to_numpy(part.column(name), features[name])
                except (pa.ArrowException, ValueError) as exc:
                    raise DatasetError(f"{path}: feature {name!r}: {' '.join(str(exc).split())}") from exc
                width = int(features[name]["shape"][0])
                got = cols[name].reshape(len(rows), -1).shape[1]
                if got != width:
                    raise DatasetError(f"{path}: feature {name!r} has {got} values per frame; "
                                       f"meta/info.json declares shape [{width}]")
            self._check_indices(path, ep, cols)
            task_index = int(cols["task_index"][0])
            if not 0 <= task_index < len(self.tasks):
                raise DatasetError(f"{path}: feature 'task_index' {task_index} is not in {self.root / TASKS_PATH}")
            yield LeRobotEpisode(episode_index, self.tasks[task_index], cols)

    def _check_indices(self, path: Path, ep: Mapping[str, Any], cols: Mapping[str, np.ndarray]) -> None:
        n = len(cols["frame_index"])
        if not np.array_equal(cols["frame_index"], np.arange(n)):
            raise DatasetError(f"{path}: feature 'frame_index' of episode {ep['episode_index']} is not 0..{n - 1}")
        start = int(ep["dataset_from_index"])
        if not np.array_equal(cols["index"], np.arange(start, start + n)) or int(ep["dataset_to_index"]) != start + n:
            raise DatasetError(f"{path}: feature 'index' of episode {ep['episode_index']} disagrees with "
                               f"dataset_from_index/dataset_to_index {start}/{ep['dataset_to_index']}")
        ts = cols["timestamp"].astype(np.float64)
        slots = np.round(ts * self.fps)
        off = np.abs(ts - slots / self.fps)
        if off.max(initial=0.0) > TIMESTAMP_TOLERANCE_S:
            k = int(np.flatnonzero(off > TIMESTAMP_TOLERANCE_S)[0])
            raise DatasetError(f"{path}: feature 'timestamp' of episode {ep['episode_index']} frame {k} is {ts[k]:.6f} s, "
                               f"{off[k] * 1e3:.3f} ms off the {self.fps} fps grid of meta/info.json")
        if np.any(np.diff(slots) <= 0):
            k = int(np.flatnonzero(np.diff(slots) <= 0)[0]) + 1
            raise DatasetError(f"{path}: feature 'timestamp' of episode {ep['episode_index']} does not increase at frame {k}")


def read_dataset(root: Path) -> LeRobotDataset:
    """Open and validate a LeRobotDataset v3.0 directory (metadata only; frames are read per episode).

    Raises DatasetError naming the file and field: a missing meta file, a codebase_version other
    than v3.0 (v2.x keeps episodes in JSON lines and is refused), a bad fps or feature, a corrupt
    parquet, an episodes table whose ranges are not contiguous.
    """
    root = Path(root)
    info_path = root / INFO_PATH
    if not root.is_dir():
        raise DatasetError(f"{root}: no such dataset directory")
    if not info_path.is_file():
        raise DatasetError(f"{info_path}: missing (not a LeRobot dataset)")
    try:
        info = json.loads(info_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{info_path}: not valid JSON ({exc})") from exc
    version = info.get("codebase_version")
    if version != CODEBASE_VERSION:
        raise DatasetError(f"{info_path}: codebase_version is {version!r}; only {CODEBASE_VERSION!r} is read "
                           "(convert older datasets with LeRobot's convert_dataset_v21_to_v30)")
    for key in ("fps", "features", "data_path", "total_episodes", "total_frames"):
        if key not in info:
            raise DatasetError(f"{info_path}: missing field {key!r}")
    if not isinstance(info["fps"], int) or info["fps"] <= 0:
        raise DatasetError(f"{info_path}: field 'fps' must be a positive integer, got {info['fps']!r}")
    features = info["features"]
    for name in DEFAULT_FEATURES:
        if name not in features:
            raise DatasetError(f"{info_path}: missing default feature {name!r}")
    for name, ft in features.items():
        if ft.get("dtype") == "video":
            shape = ft.get("shape")
            if not isinstance(shape, list) or len(shape) != 3 or shape[2] != 3:
                raise DatasetError(f"{info_path}: feature {name!r} has shape {shape!r}; a video is [height, width, 3]")
            if not info.get("video_path"):
                raise DatasetError(f"{info_path}: feature {name!r} is a video but field 'video_path' is empty")
            continue
        if ft.get("dtype") in ("image", "string"):
            continue  # declared; image bytes in the parquet (use_videos=False) are not read here
        arrow_type(name, ft, str(info_path))
    tasks_table = _read_parquet(root / TASKS_PATH, "tasks")
    _require(tasks_table, root / TASKS_PATH, ["task_index", "task"], "tasks")
    order = np.argsort(tasks_table.column("task_index").to_numpy())
    tasks = [str(t) for t in np.array(tasks_table.column("task").to_pylist(), dtype=object)[order]]
    if sorted(tasks_table.column("task_index").to_pylist()) != list(range(len(tasks))):
        raise DatasetError(f"{root / TASKS_PATH}: task_index is not 0..{len(tasks) - 1}")
    episode_files = sorted((root / EPISODES_DIR).glob("*/*.parquet"))
    if not episode_files:
        raise DatasetError(f"{root / EPISODES_DIR}: missing (no episodes parquet file)")
    needed = ["episode_index", "tasks", "length", "data/chunk_index", "data/file_index",
              "dataset_from_index", "dataset_to_index"]
    needed += [f"videos/{key}/{column}" for key in image_keys(features)
               for column in ("chunk_index", "file_index", "from_timestamp", "to_timestamp")]
    episodes: list[dict[str, Any]] = []
    for path in episode_files:
        schema_names = _read_schema_names(path)
        table = _read_parquet(path, "episodes", [n for n in schema_names if not n.startswith("stats/")])
        _require(table, path, needed, "episodes")
        episodes += table.to_pylist()
    episodes.sort(key=lambda e: int(e["episode_index"]))
    if [int(e["episode_index"]) for e in episodes] != list(range(len(episodes))):
        raise DatasetError(f"{root / EPISODES_DIR}: episode_index is not 0..{len(episodes) - 1}")
    if len(episodes) != info["total_episodes"] or sum(int(e["length"]) for e in episodes) != info["total_frames"]:
        raise DatasetError(f"{info_path}: total_episodes/total_frames {info['total_episodes']}/{info['total_frames']} "
                           f"disagree with meta/episodes ({len(episodes)} episodes, "
                           f"{sum(int(e['length']) for e in episodes)} frames)")
    stats_path = root / STATS_PATH
    if not stats_path.is_file():
        raise DatasetError(f"{stats_path}: missing")
    try:
        stats = json.loads(stats_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{stats_path}: not valid JSON ({exc})") from exc
    return LeRobotDataset(root, info, tasks, episodes, stats)


def _read_schema_names(path: Path) -> list[str]:
    if not path.is_file():
        raise DatasetError(f"{path}: missing episodes file")
    try:
        return list(pq.read_schema(path).names)
    except _PARQUET_ERRORS as exc:
        raise DatasetError(f"{path}: corrupt parquet (episodes): {' '.join(str(exc).split())}") from exc
