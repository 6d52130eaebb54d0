"""Camera frames as numpy: sensor_msgs/Image fields <-> (H, W, 3) uint8 RGB, without cv_bridge.

Pure numpy (no rosbags, no rclpy), so the bag API (``bag.py``), the nodes and the simulator
share one conversion. Supported encodings: ``rgb8`` and ``bgr8`` (3 bytes per pixel, rows of
``step >= 3 * width`` bytes; padding at the end of a row is dropped). Frames are always
returned as RGB.

In episode bags a camera's frames are sensor_msgs/msg/Image on ``/camera/<name>/image_raw``
(:func:`image_topic`), header.stamp = the time the frame shows, frame_id
``<name>_optical_frame``; ``bag.write_image_series`` writes them (rgb8) and
``bag.read_image_topic`` reads one topic back as (stamps ns, (N, H, W, 3) uint8).

sensor_msgs/CompressedImage frames (``format`` jpeg or png, as image_transport's compressed
plugin writes them: "jpeg", "png", or "rgb8; jpeg compressed bgr8") are decoded with Pillow
(:func:`decode_compressed`); :func:`compress_frame` encodes one for tests and bags. Pillow is
imported on first use, so a state-only deployment never loads it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Encodings this module decodes, with their channel order.
ENCODINGS = ("rgb8", "bgr8")
IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
#: Compression formats :func:`decode_compressed` reads (the last word of CompressedImage.format).
COMPRESSED_FORMATS = ("jpeg", "png")


def image_topic(camera: str) -> str:
    """The bag topic of a camera's raw images: ``/camera/<camera>/image_raw``."""
    return f"/camera/{camera}/image_raw"


class ImageDecodeError(ValueError):
    """An Image message that cannot be a (H, W, 3) frame: wrong encoding or a size mismatch; a
    CompressedImage of an unknown format or with corrupt data."""


@dataclass
class ImageSeries:
    """The frames of one camera over an episode.

    Attributes:
        frame_id: optical frame of the camera (``<name>_optical_frame``).
        times_ns: (N,) int64 header stamps (ns).
        frames: (N, H, W, 3) uint8 RGB, row 0 at the top.
    """

    frame_id: str
    times_ns: np.ndarray
    frames: np.ndarray

    def __post_init__(self) -> None:
        self.times_ns = np.asarray(self.times_ns, dtype=np.int64).reshape(-1)
        frames = np.asarray(self.frames)
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3:
            raise ValueError(f"ImageSeries {self.frame_id!r}: frames must be (N, H, W, 3) uint8, "
                             f"got {frames.shape} {frames.dtype}")
        if len(frames) != len(self.times_ns):
            raise ValueError(f"ImageSeries {self.frame_id!r}: {len(frames)} frames but {len(self.times_ns)} stamps")
        self.frames = frames

    @property
    def nbytes(self) -> int:
        return int(self.frames.nbytes)


def image_fields(frame: np.ndarray, encoding: str = "rgb8") -> dict[str, object]:
    """sensor_msgs/Image fields (height, width, encoding, is_bigendian, step, data) of an RGB frame (H, W, 3) uint8."""
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ImageDecodeError(f"expected an (H, W, 3) uint8 RGB frame, got {frame.shape} {frame.dtype}")
    if encoding not in ENCODINGS:
        raise ImageDecodeError(f"cannot encode {encoding!r}; supported: {list(ENCODINGS)}")
    pixels = frame if encoding == "rgb8" else frame[:, :, ::-1]
    height, width = frame.shape[:2]
    return {"height": height, "width": width, "encoding": encoding, "is_bigendian": 0, "step": 3 * width,
            "data": np.ascontiguousarray(pixels).reshape(-1)}


def decode_image(height: int, width: int, encoding: str, step: int, data: bytes | np.ndarray) -> np.ndarray:
    """An Image message's fields -> (H, W, 3) uint8 RGB (a copy).

    Raises:
        ImageDecodeError: an encoding other than rgb8/bgr8, ``step < 3 * width`` or
            ``len(data) != height * step`` (one line naming the numbers).
    """
    if encoding not in ENCODINGS:
        raise ImageDecodeError(f"encoding {encoding!r} is not supported (expected one of {list(ENCODINGS)})")
    height, width, step = int(height), int(width), int(step)
    buffer = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) \
        else np.asarray(data, dtype=np.uint8).reshape(-1)
    if height <= 0 or width <= 0 or step < 3 * width:
        raise ImageDecodeError(f"bad geometry: height {height}, width {width}, step {step} (need step >= 3 * width)")
    if buffer.size != height * step:
        raise ImageDecodeError(f"data has {buffer.size} bytes, expected height * step = {height} * {step} = "
                               f"{height * step} ({encoding} {width}x{height})")
    pixels = buffer.reshape(height, step)[:, : 3 * width].reshape(height, width, 3)
    return np.ascontiguousarray(pixels if encoding == "rgb8" else pixels[:, :, ::-1])


def compressed_format(fmt: str) -> str:
    """'jpeg' or 'png' from a CompressedImage ``format`` ('jpeg', 'png', 'rgb8; jpeg compressed bgr8',
    'jpg'), else ImageDecodeError naming it."""
    words = fmt.lower().replace(";", " ").split()
    found = [w for w in words if w in ("jpeg", "jpg", "png")]
    if not found:
        raise ImageDecodeError(f"format {fmt!r} is not supported (expected one of {list(COMPRESSED_FORMATS)})")
    return "jpeg" if found[0] == "jpg" else found[0]


def decode_compressed(fmt: str, data: bytes | np.ndarray) -> np.ndarray:
    """A CompressedImage's ``format`` and ``data`` -> (H, W, 3) uint8 RGB (grey and RGBA are converted).

    Raises ImageDecodeError (one line) for an unsupported format, data that is not an image of
    that format, or a truncated/corrupt frame.
    """
    import io

    from PIL import Image, UnidentifiedImageError

    kind = compressed_format(fmt)
    raw = bytes(data) if isinstance(data, (bytes, bytearray, memoryview)) else np.asarray(data, np.uint8).tobytes()
    try:
        with Image.open(io.BytesIO(raw), formats=["JPEG" if kind == "jpeg" else "PNG"]) as image:
            image.load()  # decode now: a truncated frame fails here, not later
            rgb = image.convert("RGB")
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(f"corrupt {kind} data ({len(raw)} bytes): not a {kind} image") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageDecodeError(f"corrupt {kind} data ({len(raw)} bytes): {' '.join(str(exc).split())}") from exc
    return np.asarray(rgb, dtype=np.uint8).copy()


def compress_frame(frame: np.ndarray, fmt: str = "jpeg", quality: int = 95) -> bytes:
    """An (H, W, 3) uint8 RGB frame as jpeg (``quality`` 1-95) or png bytes."""
    import io

    from PIL import Image

    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ImageDecodeError(f"expected an (H, W, 3) uint8 RGB frame, got {frame.shape} {frame.dtype}")
    kind = compressed_format(fmt)
    out = io.BytesIO()
    Image.fromarray(frame, "RGB").save(out, format="JPEG" if kind == "jpeg" else "PNG",
                                       **({"quality": int(quality)} if kind == "jpeg" else {}))
    return out.getvalue()


class FrameStore:
    """One camera's frames for training windows, each distinct frame stored once.

    Frames are appended episode after episode (:meth:`add` returns each one's index into the final
    array); a frame identical to the one stored last shares its slot. A LeRobot video holds every
    dataset frame, so a 12.5 Hz camera held onto 50 fps repeats each image 4 times; after decoding
    (AV1, GOP 2) about 4 in 5 frames of the sim's episodes equal the one before them bit for bit, and
    they cost nothing here. Nothing is dropped: an index always points at exactly the decoded frame.

    Memory: ``capacity`` (the dataset's frame count, an upper bound) frames are reserved with
    ``np.empty``, which the OS backs only where written, and :meth:`finish` gives the unused tail back
    in place (``ndarray.resize``), so the resident size is the distinct frames, F x H x W x 3 bytes.

    Args:
        capacity: most frames that will be added.
        shape: (H, W, 3) of every frame.
    """

    def __init__(self, capacity: int, shape: tuple[int, ...]) -> None:
        self.shape = tuple(int(s) for s in shape)
        self._frames = np.empty((max(int(capacity), 1), *self.shape), np.uint8)
        self._count = 0
        self._finished = False

    def __len__(self) -> int:
        return self._count

    def add(self, frames: np.ndarray) -> np.ndarray:
        """Append (N, H, W, 3) uint8 frames; returns their indices (N,) int64 into the stored frames."""
        frames = np.asarray(frames)
        if self._finished:
            raise ValueError("FrameStore: add() after finish()")
        if frames.dtype != np.uint8 or frames.shape[1:] != self.shape:
            raise ValueError(f"FrameStore: frames are {frames.shape} {frames.dtype}, expected (N, {self.shape}) uint8")
        index = np.empty(len(frames), np.int64)
        for k, frame in enumerate(frames):
            if self._count == 0 or not np.array_equal(frame, self._frames[self._count - 1]):
                if self._count == len(self._frames):
                    raise ValueError(f"FrameStore: more than its capacity of {len(self._frames)} frames")
                self._frames[self._count] = frame
                self._count += 1
            index[k] = self._count - 1
        return index

    def finish(self) -> np.ndarray:
        """The stored frames (F, H, W, 3) uint8; the store takes no more frames."""
        self._finished = True
        self._frames.resize((self._count, *self.shape), refcheck=False)  # shrinks in place: no copy
        return self._frames
