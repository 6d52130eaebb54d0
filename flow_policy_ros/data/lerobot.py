"""LeRobotDataset v3.0 on disk, written and read with pyarrow (no LeRobot, no torch, no pandas).

The layout is LeRobot's own (``lerobot.datasets.utils``, ``dataset_writer.py``,
``dataset_metadata.py``, ``io_utils.py``, ``compute_stats.py``; checked against lerobot 0.6.1)::

    meta/info.json                               codebase_version "v3.0", fps, features, totals, templates
    meta/stats.json                              per feature: min max mean std count q01 q10 q50 q90 q99
    meta/tasks.parquet                           columns task_index (int64), task (the pandas index)
    meta/episodes/chunk-000/file-000.parquet     one row per episode (columns below)
    data/chunk-000/file-000.parquet              one row per frame, one row group per episode

Features are declared in ``info.json`` as ``{name: {"dtype", "shape", "names"}}``; every dataset
carries the default features ``timestamp`` (float32, s since the episode's first frame),
``frame_index``, ``episode_index``, ``index`` (frame index over the dataset) and ``task_index``
(int64, shape (1,)) after its own. A vector feature (``observation.state``, ``action``) is a
``fixed_size_list<float>[D]`` column; a (1,) feature a plain column. The episodes file holds
``episode_index``, ``tasks`` (list<string>), ``length``, ``data/chunk_index``, ``data/file_index``,
``dataset_from_index``, ``dataset_to_index`` (half-open frame range in ``index``),
``stats/<feature>/<stat>`` and ``meta/episodes/chunk_index``, ``meta/episodes/file_index``.

Files roll over like LeRobot's: a new data file starts when the current one would reach
``data_files_size_in_mb`` (100 MB), and the chunk index advances every ``chunks_size`` (1000)
files. Statistics per episode as LeRobot's ``compute_episode_stats`` defines them (quantiles
read from a 5000-bin histogram; computed here in float64 where LeRobot accumulates float32
features in float32, so means and stds agree to ~1e-6); over the dataset aggregated as LeRobot
does: min of mins, max of maxes, count-weighted mean, pooled variance, count-weighted mean of the
episodes' quantiles.

:class:`LeRobotWriter` streams: it holds one episode in memory, appends it to the open parquet
file and keeps only per-episode statistics and index rows. It writes into a temp directory
beside the target and renames it at the end, refusing to overwrite. The reader is
:mod:`flow_policy_ros.data.lerobot_reader`. Bad input raises
:class:`~flow_policy_ros.errors.DatasetError` with one line naming the dataset and the feature.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from flow_policy_ros.data.lerobot_video import (
    VideoFileWriter,
    VideoSettings,
    image_keys,
    image_stats_pixels,
    probe_video,
)
from flow_policy_ros.errors import DatasetError

CODEBASE_VERSION = "v3.0"
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
EPISODES_DIR = "meta/episodes"
CHUNK_FILE_PATTERN = "chunk-{chunk_index:03d}/file-{file_index:03d}"
EPISODES_PATH = EPISODES_DIR + "/" + CHUNK_FILE_PATTERN + ".parquet"
DATA_PATH = "data/" + CHUNK_FILE_PATTERN + ".parquet"
VIDEO_PATH = "videos/{video_key}/" + CHUNK_FILE_PATTERN + ".mp4"
CHUNKS_SIZE = 1000  # files per chunk directory
DATA_FILES_SIZE_IN_MB = 100
VIDEO_FILES_SIZE_IN_MB = 200
#: Quantiles LeRobot's stats hold (compute_stats.DEFAULT_QUANTILES), keyed q01 ... q99.
QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}
STAT_KEYS = ("min", "max", "mean", "std", "count", *QUANTILES)
#: The features every LeRobot dataset carries after its own (lerobot.utils.constants.DEFAULT_FEATURES).
DEFAULT_FEATURES: dict[str, dict[str, Any]] = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}
#: Numeric dtypes this module writes and reads (images and videos come with the camera feature).
NUMERIC_DTYPES = {"float32": pa.float32(), "float64": pa.float64(), "int64": pa.int64(), "int32": pa.int32(),
                  "bool": pa.bool_()}


def vector_feature(names: Sequence[str], dtype: str = "float32") -> dict[str, Any]:
    """A 1-D feature declaration ``{"dtype", "shape": [D], "names": [...]}`` with one name per entry."""
    return {"dtype": dtype, "shape": [len(names)], "names": list(names)}


def arrow_type(name: str, ft: Mapping[str, Any], source: str) -> pa.DataType:
    dtype, shape = ft.get("dtype"), ft.get("shape")
    if dtype not in NUMERIC_DTYPES:
        raise DatasetError(f"{source}: feature {name!r} has dtype {dtype!r}; this reader supports {sorted(NUMERIC_DTYPES)}")
    if not isinstance(shape, (list, tuple)) or len(shape) != 1 or not isinstance(shape[0], int) or shape[0] < 1:
        raise DatasetError(f"{source}: feature {name!r} has shape {shape!r}; expected [D] with D >= 1")
    value = NUMERIC_DTYPES[dtype]
    return value if list(shape) == [1] else pa.list_(value, int(shape[0]))


def _hf_feature(ft: Mapping[str, Any]) -> dict[str, Any]:
    """A feature as Hugging Face ``datasets`` >= 4 describes it in the parquet's ``huggingface`` metadata."""
    value = {"dtype": ft["dtype"], "_type": "Value"}
    return value if list(ft["shape"]) == [1] else {"feature": value, "length": int(ft["shape"][0]), "_type": "List"}


def _schema(features: Mapping[str, Mapping[str, Any]], source: str) -> pa.Schema:
    """The data files' schema, with the ``huggingface`` features metadata LeRobot's writer leaves there."""
    columns = {name: ft for name, ft in features.items() if ft.get("dtype") != "video"}  # videos live in mp4 files
    hf = {"info": {"features": {name: _hf_feature(ft) for name, ft in columns.items()}}}
    return pa.schema([pa.field(name, arrow_type(name, ft, source)) for name, ft in columns.items()],
                     metadata={b"huggingface": json.dumps(hf).encode()})


def _column(array: np.ndarray, ft: Mapping[str, Any], typ: pa.DataType) -> pa.Array:
    values = np.ascontiguousarray(array, dtype=np.dtype(ft["dtype"]))
    if pa.types.is_fixed_size_list(typ):
        return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1), type=typ.value_type), typ.list_size)
    return pa.array(values.reshape(-1), type=typ)


# --------------------------------------------------------------------------- statistics


#: Bins of the histogram the quantiles are read from (LeRobot's RunningQuantileStats default).
QUANTILE_BINS = 5000


def histogram_quantiles(x: np.ndarray, qs: Sequence[float], bins: int = QUANTILE_BINS) -> np.ndarray:
    """Quantiles (Q, D) of ``x`` (N, D) as LeRobot estimates them: from a ``bins``-bin histogram per column.

    The edges span [min − 1e-10, max + 1e-10]; quantile q is found where the cumulative count
    reaches q·N and interpolated linearly inside that bin (the first edge when q·N falls in
    the first bin, the bin's left edge when the bin is empty).
    """
    n, d = x.shape
    out = np.empty((len(qs), d), np.float64)
    for j in range(d):
        edges = np.linspace(x[:, j].min() - 1e-10, x[:, j].max() + 1e-10, bins + 1)
        cumsum = np.cumsum(np.histogram(x[:, j], bins=edges)[0])
        for i, q in enumerate(qs):
            target = q * n
            idx = int(np.searchsorted(cumsum, target))
            if idx == 0 or idx >= len(cumsum):
                out[i, j] = edges[0] if idx == 0 else edges[-1]
                continue
            before = cumsum[idx - 1]
            inside = cumsum[idx] - before
            out[i, j] = edges[idx] if inside == 0 else edges[idx] + (target - before) / inside * (edges[idx + 1] - edges[idx])
    return out


def episode_stats(values: np.ndarray) -> dict[str, np.ndarray]:
    """Statistics of one episode's feature, (N,) or (N, D) → each stat (D,) (``count`` (1,)), float64.

    min, max, mean, std (population, ddof 0) and the :data:`QUANTILES` read from a histogram as
    LeRobot does (:func:`histogram_quantiles`); one frame gives every quantile its value.
    """
    x = np.asarray(values, np.float64)
    x = x.reshape(len(x), -1)
    stats = {"min": x.min(axis=0), "max": x.max(axis=0), "mean": x.mean(axis=0), "std": x.std(axis=0),
             "count": np.array([len(x)], np.int64)}
    quantiles = histogram_quantiles(x, list(QUANTILES.values())) if len(x) >= 2 else np.repeat(x, len(QUANTILES), 0)
    for key, row in zip(QUANTILES, quantiles):
        stats[key] = row
    return stats


def image_episode_stats(frames: np.ndarray) -> dict[str, np.ndarray]:
    """Per-channel statistics (3,) of one episode's frames (N, H, W, 3) uint8, in [0, 1], as LeRobot's
    ``compute_episode_stats`` computes them for an image/video feature: over the pixels of the sampled
    frames (:func:`~flow_policy_ros.data.lerobot_video.sample_indices`), ``count`` = frames sampled.
    Stored (3, 1, 1) (:func:`stats_for_json`)."""
    pixels, count = image_stats_pixels(frames)
    stats = episode_stats(pixels)
    stats["count"] = np.array([count], np.int64)
    return stats


def stats_for_json(stats: Mapping[str, np.ndarray], is_image: bool) -> dict[str, list[Any]]:
    """A feature's statistics as lists; an image's per-channel values shaped (3, 1, 1) as LeRobot stores them."""
    return {k: (v.reshape(-1, 1, 1) if is_image and k != "count" else v).tolist() for k, v in stats.items()}


def aggregate_stats(per_episode: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One feature's statistics over episodes, combined as LeRobot's ``aggregate_feature_stats`` does."""
    counts = np.array([s["count"][0] for s in per_episode], np.float64)
    total = counts.sum()
    w = (counts / total)[:, None]
    means = np.stack([s["mean"] for s in per_episode])
    mean = (w * means).sum(axis=0)
    var = (w * (np.stack([s["std"] for s in per_episode]) ** 2 + (means - mean) ** 2)).sum(axis=0)
    out = {"min": np.stack([s["min"] for s in per_episode]).min(axis=0),
           "max": np.stack([s["max"] for s in per_episode]).max(axis=0),
           "mean": mean, "std": np.sqrt(var), "count": np.array([int(total)], np.int64)}
    for key in QUANTILES:
        out[key] = (w * np.stack([s[key] for s in per_episode])).sum(axis=0)
    return out


# --------------------------------------------------------------------------- writing


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=4) + "\n")


def _tasks_table(tasks: Sequence[str]) -> pa.Table:
    """meta/tasks.parquet as pandas' ``DataFrame({'task_index'}, index=Index(tasks, name='task')).to_parquet`` writes it."""
    table = pa.table({"task_index": pa.array(range(len(tasks)), pa.int64()), "task": pa.array(list(tasks), pa.string())})
    pandas_meta = {
        "index_columns": ["task"],
        "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode", "numpy_type": "object",
                            "metadata": {"encoding": "UTF-8"}}],
        "columns": [
            {"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64", "metadata": None},
            {"name": "task", "field_name": "task", "pandas_type": "unicode", "numpy_type": "object", "metadata": None},
        ],
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.0",
    }
    return table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})


class LeRobotWriter:
    """Write a LeRobotDataset v3.0 episode by episode; memory is bounded by one episode.

    Args:
        root: dataset directory to create (must not exist).
        fps: frames per second (int, Hz).
        features: the dataset's own features ``{name: {"dtype", "shape": [D], "names"}}``
            (e.g. ``observation.state``, ``action``); the default features are appended.
        robot_type: free text stored in info.json (None allowed).
        data_files_size_in_mb: a new data file starts when the current one would reach this.
        chunks_size: files per ``chunk-XXX`` directory.
        video: how features declared ``{"dtype": "video", "shape": [H, W, 3]}``
            (:func:`~flow_policy_ros.data.lerobot_video.video_feature`) are encoded; their frames are
            given to :meth:`add_episode` as (N, H, W, 3) uint8 RGB.
        video_files_size_in_mb: a new video file starts once the current one has reached this.

    Use as a context manager; on an exception nothing is left behind::

        with LeRobotWriter(out, 50, {"observation.state": vector_feature(names)}) as ds:
            ds.add_episode({"observation.state": states}, task="reach the goal")
    """

    def __init__(self, root: Path, fps: int, features: Mapping[str, Mapping[str, Any]], robot_type: str | None = None,
                 data_files_size_in_mb: float = DATA_FILES_SIZE_IN_MB, chunks_size: int = CHUNKS_SIZE,
                 video: VideoSettings | None = None, video_files_size_in_mb: float = VIDEO_FILES_SIZE_IN_MB) -> None:
        self.root = Path(root)
        if int(fps) != fps or fps <= 0:
            raise DatasetError(f"{self.root}: fps must be a positive integer (Hz), got {fps}")
        clash = sorted(set(features) & set(DEFAULT_FEATURES))
        if clash:
            raise DatasetError(f"{self.root}: features {clash} are default features; do not declare them")
        self.fps = int(fps)
        self.features: dict[str, dict[str, Any]] = {**{k: dict(v) for k, v in features.items()}, **DEFAULT_FEATURES}
        self.schema = _schema(self.features, str(self.root))
        self.robot_type = robot_type
        self.data_files_size_in_mb = data_files_size_in_mb
        self.chunks_size = chunks_size
        self.video_keys = image_keys(self.features)
        for key in self.video_keys:
            shape = self.features[key].get("shape")
            if not isinstance(shape, (list, tuple)) or len(shape) != 3 or shape[2] != 3:
                raise DatasetError(f"{self.root}: feature {key!r} has shape {shape!r}; a video is [height, width, 3]")
        self.video = video or VideoSettings()
        self.video_files_size_in_mb = video_files_size_in_mb
        self._videos: dict[str, VideoFileWriter] = {}
        self._video_index: dict[str, tuple[int, int]] = {key: (0, 0) for key in self.video_keys}
        self._first_video: dict[str, Path] = {}
        self._tmp: Path | None = None
        self._writer: pq.ParquetWriter | None = None
        self._chunk, self._file = 0, 0
        self._file_frames = 0
        self._tasks: dict[str, int] = {}
        self._episodes: list[dict[str, Any]] = []
        self._stats: list[dict[str, dict[str, np.ndarray]]] = []
        self.total_frames = 0

    @property
    def directory(self) -> Path:
        """The (temporary) dataset directory being written."""
        assert self._tmp is not None, "LeRobotWriter is not open"
        return self._tmp / self.root.name

    def __enter__(self) -> LeRobotWriter:
        if self.root.exists():
            raise DatasetError(f"{self.root}: already exists; refusing to overwrite")
        self.root.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = Path(tempfile.mkdtemp(prefix=f".{self.root.name}.", suffix=".tmp", dir=self.root.parent))
        self.directory.mkdir()
        return self

    def _data_path(self) -> Path:
        return self.directory / DATA_PATH.format(chunk_index=self._chunk, file_index=self._file)

    def add_episode(self, columns: Mapping[str, np.ndarray], task: str, timestamps_s: np.ndarray | None = None) -> int:
        """Append one episode; returns its episode_index.

        Args:
            columns: every declared feature (not the defaults): (N,) or (N, D) arrays, one row per frame.
            task: the episode's task text (a new text gets the next task_index).
            timestamps_s: (N,) s since the episode's first frame; default frame_index / fps.
        """
        missing = [name for name in self.features if name not in DEFAULT_FEATURES and name not in columns]
        extra = sorted(set(columns) - set(self.features))
        if missing or extra:
            raise DatasetError(f"{self.root}: episode {len(self._episodes)}: missing features {missing}, "
                               f"undeclared features {extra}")
        lengths = {name: len(np.asarray(v)) for name, v in columns.items()}
        n = next(iter(lengths.values()), 0)
        if n == 0 or any(length != n for length in lengths.values()):
            raise DatasetError(f"{self.root}: episode {len(self._episodes)}: frame counts differ or are zero: {lengths}")
        episode_index = len(self._episodes)
        task_index = self._tasks.setdefault(str(task), len(self._tasks))
        frame_index = np.arange(n, dtype=np.int64)
        full = dict(columns)
        full["timestamp"] = frame_index / self.fps if timestamps_s is None else np.asarray(timestamps_s, np.float64)
        full["frame_index"] = frame_index
        full["episode_index"] = np.full(n, episode_index, np.int64)
        full["index"] = self.total_frames + frame_index
        full["task_index"] = np.full(n, task_index, np.int64)
        arrays = []
        for name, ft in self.features.items():
            if name in self.video_keys:
                continue
            width = int(ft["shape"][0])
            value = np.asarray(full[name])
            if value.reshape(n, -1).shape[1] != width:
                raise DatasetError(f"{self.root}: episode {episode_index}: feature {name!r} has "
                                   f"{value.reshape(n, -1).shape[1]} values per frame, declared shape [{width}]")
            arrays.append(_column(value, ft, self.schema.field(name).type))
        table = pa.Table.from_arrays(arrays, schema=self.schema)
        self._append(table, n)
        stats = {name: image_episode_stats(full[name]) if name in self.video_keys
                 else episode_stats(np.asarray(full[name], ft["dtype"])) for name, ft in self.features.items()}
        self._stats.append(stats)
        row: dict[str, Any] = {
            "episode_index": episode_index, "tasks": [str(task)], "length": n,
            "data/chunk_index": self._chunk, "data/file_index": self._file,
            "dataset_from_index": self.total_frames, "dataset_to_index": self.total_frames + n,
        }
        for key in self.video_keys:
            chunk, file, start, end = self._append_video(key, full[key])
            row.update({f"videos/{key}/chunk_index": chunk, f"videos/{key}/file_index": file,
                        f"videos/{key}/from_timestamp": start, f"videos/{key}/to_timestamp": end})
        for name, feature_stats in stats.items():
            as_lists = stats_for_json(feature_stats, name in self.video_keys)
            for key in STAT_KEYS:
                row[f"stats/{name}/{key}"] = as_lists[key]
        row["meta/episodes/chunk_index"] = 0
        row["meta/episodes/file_index"] = 0
        self._episodes.append(row)
        self.total_frames += n
        return episode_index

    def _append(self, table: pa.Table, n: int) -> None:
        if self._writer is not None:
            size_mb = self._data_path().stat().st_size / 1024**2 if self._data_path().exists() else 0.0
            per_frame = size_mb / self._file_frames if self._file_frames else 0.0
            if size_mb + per_frame * n >= self.data_files_size_in_mb:
                self._writer.close()
                self._writer = None
                self._file += 1
                if self._file == self.chunks_size:
                    self._chunk, self._file = self._chunk + 1, 0
                self._file_frames = 0
        if self._writer is None:
            path = self._data_path()
            path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = pq.ParquetWriter(path, self.schema, compression="snappy", use_dictionary=True)
        self._writer.write_table(table)  # one row group per episode
        self._file_frames += n

    def _append_video(self, key: str, frames: np.ndarray) -> tuple[int, int, float, float]:
        """Encode an episode's frames into the camera's open video file (a new file once it reached the limit)."""
        frames = np.asarray(frames)
        expected = tuple(self.features[key]["shape"])
        if frames.dtype != np.uint8 or frames.shape[1:] != expected:
            raise DatasetError(f"{self.root}: episode {len(self._episodes)}: feature {key!r} has frames "
                               f"{frames.shape[1:]} {frames.dtype}, declared {list(expected)} uint8")
        chunk, file = self._video_index[key]
        writer = self._videos.get(key)
        if writer is not None and writer.size_mb >= self.video_files_size_in_mb:
            writer.close()
            writer = None
            file += 1
            if file == self.chunks_size:
                chunk, file = chunk + 1, 0
            self._video_index[key] = (chunk, file)
        if writer is None:
            path = self.directory / VIDEO_PATH.format(video_key=key, chunk_index=chunk, file_index=file)
            writer = self._videos[key] = VideoFileWriter(path, self.fps, expected[0], expected[1], self.video, key)
            self._first_video.setdefault(key, path)
        start, end = writer.write(frames)
        return chunk, file, start, end

    def _finish(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        for writer in self._videos.values():
            writer.close()
        self._videos = {}
        for key, path in self._first_video.items():
            self.features[key]["info"] = probe_video(path, self.video)
        if not self._episodes:
            raise DatasetError(f"{self.root}: no episode was written")
        meta = self.directory
        episodes_path = meta / EPISODES_PATH.format(chunk_index=0, file_index=0)
        episodes_path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(self._episodes), episodes_path, compression="snappy")
        pq.write_table(_tasks_table(list(self._tasks)), meta / TASKS_PATH)
        stats = {name: stats_for_json(aggregate_stats([s[name] for s in self._stats]), name in self.video_keys)
                 for name in self.features}
        _write_json(meta / STATS_PATH, stats)
        info = {
            "codebase_version": CODEBASE_VERSION, "fps": self.fps, "features": self.features,
            "total_episodes": len(self._episodes), "total_frames": self.total_frames, "total_tasks": len(self._tasks),
            "chunks_size": self.chunks_size, "data_files_size_in_mb": self.data_files_size_in_mb,
            "video_files_size_in_mb": self.video_files_size_in_mb, "data_path": DATA_PATH,
            "video_path": VIDEO_PATH if self.video_keys else None,
            "robot_type": self.robot_type, "splits": {"train": f"0:{len(self._episodes)}"},
        }
        _write_json(meta / INFO_PATH, info)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        assert self._tmp is not None
        try:
            if exc_type is None:
                self._finish()
                if self.root.exists():
                    raise DatasetError(f"{self.root}: appeared while writing; refusing to overwrite")
                os.rename(self.directory, self.root)
            else:
                if self._writer is not None:
                    self._writer.close()
                for writer in self._videos.values():
                    writer.abort()
        finally:
            self._writer = None
            self._videos = {}
            shutil.rmtree(self._tmp, ignore_errors=True)
