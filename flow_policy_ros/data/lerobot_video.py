"""Camera frames of a LeRobotDataset v3.0 as LeRobot stores them: one mp4 per camera and file, PyAV.

Layout (lerobot 0.6.1's ``dataset_writer.py`` / ``video_utils.py``): the frames of
``observation.images.<camera>`` go to ``videos/observation.images.<camera>/chunk-XXX/file-XXX.mp4``,
one video frame per dataset frame at the dataset's fps; episodes follow each other in a file, and
the episodes parquet says where: ``videos/<key>/chunk_index``, ``file_index``, ``from_timestamp``,
``to_timestamp`` (s within the file). Frame k of an episode is the video frame at
``from_timestamp + k / fps``. A new file starts when the video muxed into the current one has reached
``video_files_size_in_mb`` (200 MB), checked before each episode: LeRobot's rule (start a new file
when current + episode would reach the limit) to within one episode.

Encoding: LeRobot's defaults (``VideoEncoderConfig``): AV1 by SVT-AV1 (``libsvtav1``), yuv420p,
GOP 2 (a keyframe every 2 frames: a seek decodes at most one frame before the one asked for),
CRF 30, preset 12. Unlike LeRobot, which encodes each episode to a file of its own and then
re-muxes the growing file with the new episode appended, :class:`VideoFileWriter` keeps one encoder
open per file and feeds it episode after episode: the same stream, memory bounded by one episode,
no quadratic copying.

Decoding (:func:`decode_frames`): seek to the key frame at or before the episode's first frame, decode
forward, and place each decoded frame by its presentation time, ``round(time · fps)``: frame-accurate,
a missing or surplus frame is an error naming the file and feature. Tolerance of the lossy codec:
see docs/lerobot.md (measured: mean |error| about 1 grey level on the sim's camera frames).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from flow_policy_ros.errors import DatasetError

#: LeRobot's image/video feature key prefix: ``observation.images.<camera>``.
IMAGES_PREFIX = "observation.images."
#: Video codecs LeRobot 0.6.1 accepts (``VALID_VIDEO_CODECS`` without the hardware ones); ``av1`` is its alias of libsvtav1.
LEROBOT_CODECS = ("libsvtav1", "libaom-av1", "h264", "hevc")


def _av() -> Any:
    """PyAV, imported when a video is touched (datasets without cameras do not need it)."""
    os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its configuration to stderr at level 3 (info)
    try:
        import av
    except ImportError as exc:  # pragma: no cover - av is a declared dependency
        raise DatasetError(f"videos need PyAV (pip install av): {exc}") from exc
    logging.getLogger("libav").setLevel(logging.ERROR)
    av.logging.set_level(av.logging.ERROR)
    return av


def available_encoders(names: tuple[str, ...] = LEROBOT_CODECS) -> list[str]:
    """The video encoders among ``names`` that the installed PyAV wheel offers (av.codecs_available)."""
    av = _av()
    found = []
    for name in names:
        try:
            if name in av.codecs_available and av.Codec(name, "w").type == "video":
                found.append(name)
        except (av.codec.codec.UnknownCodecError, ValueError):
            continue
    return found


@dataclass(frozen=True)
class VideoSettings:
    """How camera frames are encoded (LeRobot's ``VideoEncoderConfig`` fields and defaults).

    Attributes:
        vcodec: FFmpeg encoder ('libsvtav1', 'h264' = libx264, 'hevc' = libx265, ...).
        pix_fmt: pixel format of the stream (yuv420p: chroma at half resolution).
        g: GOP size, frames between key frames.
        crf: constant rate factor (lower = better quality, bigger files).
        preset: speed/quality preset of the encoder (SVT-AV1: 0-13, 12 fast).
        fast_decode: SVT-AV1 fast-decode tuning (0 off).
    """

    vcodec: str = "libsvtav1"
    pix_fmt: str = "yuv420p"
    g: int | None = 2
    crf: int | None = 30
    preset: int | str | None = 12
    fast_decode: int = 0
    extra_options: dict[str, str] = field(default_factory=dict)

    def options(self) -> dict[str, str]:
        """The codec options as LeRobot's ``VideoEncoderConfig.get_codec_options`` passes them."""
        opts: dict[str, str] = {}
        if self.g is not None:
            opts["g"] = str(self.g)
        if self.crf is not None:
            opts["crf"] = str(self.crf)
        if self.preset is not None:
            opts["preset"] = str(self.preset)
        if self.vcodec == "libsvtav1":
            opts["svtav1-params"] = f"fast-decode={max(0, min(2, self.fast_decode))}"
        elif self.vcodec in ("h264", "hevc", "libx264", "libx265") and self.fast_decode:
            opts["tune"] = "fastdecode"
        return {**{k: str(v) for k, v in self.extra_options.items()}, **opts}

    def info(self) -> dict[str, Any]:
        """The encoder fields LeRobot records in a video feature's info (``video.g``, ``video.crf`` ...)."""
        fields = asdict(self)
        fields.pop("vcodec")
        fields.pop("pix_fmt")
        return {"video.g": fields["g"], "video.crf": fields["crf"], "video.preset": fields["preset"],
                "video.fast_decode": fields["fast_decode"], "video.video_backend": "pyav",
                "video.extra_options": dict(fields["extra_options"])}


def video_feature(height: int, width: int) -> dict[str, Any]:
    """An ``observation.images.<camera>`` declaration (its ``info`` is filled from the first video written)."""
    return {"dtype": "video", "shape": [int(height), int(width), 3], "names": ["height", "width", "channels"]}


def probe_video(path: Path, settings: VideoSettings) -> dict[str, Any]:
    """A video feature's ``info`` as LeRobot's ``get_video_info`` writes it (stream facts, then the encoder's)."""
    av = _av()
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        info: dict[str, Any] = {"video.height": stream.height, "video.width": stream.width,
                                "video.codec": stream.codec_context.codec.canonical_name,
                                "video.pix_fmt": stream.pix_fmt, "video.fps": int(stream.base_rate), "video.channels": 3,
                                "has_audio": bool(container.streams.audio)}
    return {**info, **settings.info(), "is_depth_map": False}


class VideoFileWriter:
    """One camera's open video file: episodes appended one after the other.

    Args:
        path: the mp4 to create.
        fps: frames per second (the dataset's).
        height, width: frame size (pixels).
        settings: encoder settings.
        key: the feature name, for error messages.
    """

    def __init__(self, path: Path, fps: int, height: int, width: int, settings: VideoSettings, key: str) -> None:
        av = _av()
        self.path, self.fps, self.key = Path(path), int(fps), key
        self.shape = (int(height), int(width), 3)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # faststart: the index (moov) before the frames, as LeRobot's files have it (streamable)
        self._container = av.open(str(self.path), "w", options={"movflags": "faststart"})
        try:
            self._stream = self._container.add_stream(settings.vcodec, self.fps, options=settings.options())
        except (av.FFmpegError, ValueError) as exc:
            self._container.close()
            raise DatasetError(f"{self.path}: feature {key!r}: cannot encode with {settings.vcodec!r} ({exc}); "
                               f"this PyAV offers {available_encoders()}") from exc
        self._stream.pix_fmt = settings.pix_fmt
        self._stream.width, self._stream.height = self.shape[1], self.shape[0]
        self.frames = 0
        self.bytes = 0

    def write(self, frames: np.ndarray) -> tuple[float, float]:
        """Append an episode's frames (N, H, W, 3) uint8 RGB; returns its (from_timestamp, to_timestamp) in s."""
        av = _av()
        frames = np.asarray(frames)
        if frames.dtype != np.uint8 or frames.shape[1:] != self.shape:
            raise DatasetError(f"{self.path}: feature {self.key!r}: frames are {frames.shape[1:]} {frames.dtype}, "
                               f"the video is {self.shape} uint8")
        start = self.frames
        for frame in frames:
            picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            picture.pts = self.frames  # in 1/fps, the encoder's time base
            picture.time_base = Fraction(1, self.fps)
            self._mux(self._stream.encode(picture))
            self.frames += 1
        return start / self.fps, self.frames / self.fps

    def _mux(self, packets: list[Any]) -> None:
        for packet in packets:
            self.bytes += packet.size
            self._container.mux(packet)

    @property
    def size_mb(self) -> float:
        """Bytes of video muxed so far (MiB); frames still in the encoder's lookahead (SVT-AV1: up to a
        mini-GOP of 32) are not counted yet."""
        return self.bytes / 1024**2

    def close(self) -> None:
        """Flush the encoder and finish the file."""
        self._mux(self._stream.encode())
        self._container.close()

    def abort(self) -> None:
        """Close without finishing (the dataset is being discarded): a failure here would hide the
        error that aborted the dataset, and the file is deleted with it."""
        av = _av()
        try:
            self._container.close()
        except (av.FFmpegError, OSError):
            pass  # the partial file goes with the temp directory


def decode_frames(path: Path, from_timestamp: float, count: int, fps: int, key: str = "") -> np.ndarray:
    """Frames ``from_timestamp + k / fps`` for k < ``count`` of the video at ``path``: (count, H, W, 3) uint8 RGB.

    Frame-accurate: each decoded frame is placed by its presentation time (``round(time · fps)``);
    a frame the episode needs that the file lacks is a DatasetError naming the file and feature,
    as is a file PyAV cannot read.
    """
    av = _av()
    path = Path(path)
    what = f"feature {key!r}" if key else "video"
    if not path.is_file():
        raise DatasetError(f"{path}: missing video ({what})")
    first = int(round(from_timestamp * fps))
    out: np.ndarray | None = None
    seen = np.zeros(count, bool)
    # One reformatter for the whole file: frame.to_ndarray(format=...) builds a new swscale context per
    # frame (2 ms a 96 x 96 frame here, 20x the decode itself); a kept one converts to the same pixels.
    reformatter = av.video.reformatter.VideoReformatter()
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            container.seek(max(0, int(round(first / fps / stream.time_base)) - 1), backward=True, any_frame=False,
                           stream=stream)
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                k = int(round(float(frame.pts * stream.time_base) * fps)) - first
                if k < 0:
                    continue
                if k >= count:
                    break
                image = reformatter.reformat(frame, format="rgb24").to_ndarray()
                if out is None:
                    out = np.empty((count, *image.shape), np.uint8)
                out[k] = image
                seen[k] = True
    except (av.FFmpegError, ValueError, IndexError, OSError) as exc:
        raise DatasetError(f"{path}: corrupt video ({what}): {' '.join(str(exc).split())}") from exc
    if out is None or not seen.all():
        k = int(np.flatnonzero(~seen)[0]) if count else 0
        raise DatasetError(f"{path}: {what}: no frame at {(first + k) / fps:.4f} s (episode frame {k} of {count}); "
                           "the video is shorter than the episode or corrupt")
    return out


def sample_indices(length: int) -> np.ndarray:
    """The frames LeRobot's ``compute_stats.sample_indices`` takes for image statistics: all up to 100,
    then ``length ** 0.75`` (at most 10,000) evenly spaced."""
    count = max(min(100, length), min(int(length**0.75), 10_000))
    return np.round(np.linspace(0, length - 1, count)).astype(int)


def image_stats_pixels(frames: np.ndarray) -> tuple[np.ndarray, int]:
    """The pixels (P, 3) float64 in [0, 1] and the frame count LeRobot's per-channel image statistics are
    computed over: the :func:`sample_indices` frames (downsampled as LeRobot does above 300 pixels)."""
    picked = np.asarray(frames)[sample_indices(len(frames))]
    h, w = picked.shape[1:3]
    if max(h, w) >= 300:
        step = int(w / 150) if w > h else int(h / 150)
        picked = picked[:, ::step, ::step]
    return picked.reshape(-1, 3).astype(np.float64) / 255.0, len(picked)


def image_keys(features: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The features stored as video, in declaration order."""
    return [name for name, ft in features.items() if ft.get("dtype") == "video"]
