"""Camera frames in bags: ``data/images.py`` conversions and the bag API's Image functions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from flow_policy_ros.data.bag import (
    TYPESTORE,
    BagWriter,
    compressed_image_msg,
    image_msg,
    read_image_topic,
    write_image_series,
)
from flow_policy_ros.data.images import (
    COMPRESSED_IMAGE,
    IMAGE,
    FrameStore,
    ImageDecodeError,
    ImageSeries,
    compress_frame,
    compressed_format,
    decode_compressed,
    decode_image,
    image_fields,
    image_topic,
)
from flow_policy_ros.errors import BagError

TOPIC = image_topic("front")
STAMP = 1_767_225_600 * 10**9


def frames(n: int = 3, height: int = 5, width: int = 7, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, height, width, 3), dtype=np.uint8)


def raw_image(height: int, width: int, encoding: str, step: int, data: np.ndarray) -> object:
    header = TYPESTORE.types["std_msgs/msg/Header"](
        stamp=TYPESTORE.types["builtin_interfaces/msg/Time"](sec=1, nanosec=0), frame_id="front_optical_frame")
    return TYPESTORE.types[IMAGE](header=header, height=height, width=width, encoding=encoding, is_bigendian=0,
                                  step=step, data=np.asarray(data, np.uint8))


def write(path: Path, messages: list[object], storage: str = "mcap") -> Path:
    with BagWriter(path, storage) as bag:
        for i, msg in enumerate(messages):
            bag.write(TOPIC, IMAGE, msg, STAMP + i)
    return path


def test_rgb8_and_bgr8_fields_round_trip() -> None:
    frame = frames(1)[0]
    rgb, bgr = image_fields(frame, "rgb8"), image_fields(frame, "bgr8")
    assert rgb["step"] == 21 and rgb["data"][:3].tolist() == frame[0, 0].tolist()
    assert bgr["data"][:3].tolist() == frame[0, 0, ::-1].tolist()
    for fields in (rgb, bgr):
        decoded = decode_image(fields["height"], fields["width"], fields["encoding"], fields["step"], fields["data"])
        assert decoded.dtype == np.uint8 and np.array_equal(decoded, frame)


def test_row_padding_is_dropped() -> None:
    frame = frames(1, height=2, width=2)[0]
    padded = np.concatenate([frame.reshape(2, 6), np.full((2, 2), 255, np.uint8)], axis=1)
    assert np.array_equal(decode_image(2, 2, "rgb8", 8, padded.tobytes()), frame)


@pytest.mark.parametrize(("args", "match"), [
    ((2, 2, "mono8", 2, bytes(4)), "encoding 'mono8'"),
    ((2, 2, "rgb8", 6, bytes(11)), "11 bytes, expected height \\* step = 2 \\* 6 = 12"),
    ((2, 2, "rgb8", 5, bytes(10)), "step >= 3 \\* width"),
])
def test_bad_images_raise_one_line(args: tuple, match: str) -> None:
    with pytest.raises(ImageDecodeError, match=match) as info:
        decode_image(*args)
    assert "\n" not in str(info.value)


def test_image_series_checks_its_arrays() -> None:
    with pytest.raises(ValueError, match="uint8"):
        ImageSeries("f", np.zeros(1), np.zeros((1, 2, 2, 3)))
    with pytest.raises(ValueError, match="2 frames but 1 stamps"):
        ImageSeries("f", np.zeros(1), np.zeros((2, 2, 2, 3), np.uint8))


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
@pytest.mark.parametrize("encoding", ["rgb8", "bgr8"])
def test_bag_images_read_back_identical(tmp_path: Path, storage: str, encoding: str) -> None:
    video = frames(4, height=6, width=8)
    path = write(tmp_path / "bag", [image_msg(STAMP + 1000 * i, f, "front_optical_frame", encoding)
                                    for i, f in enumerate(video)], storage)
    stamps, decoded = read_image_topic(path, TOPIC)
    assert decoded.dtype == np.uint8 and decoded.shape == (4, 6, 8, 3)
    assert np.array_equal(decoded, video) and stamps.tolist() == [STAMP + 1000 * i for i in range(4)]


def test_bag_with_a_bad_image_names_bag_topic_and_index(tmp_path: Path) -> None:
    good = image_msg(STAMP, frames(1, 2, 2)[0], "front_optical_frame")
    path = write(tmp_path / "enc", [good, raw_image(2, 2, "mono8", 2, np.zeros(4))])
    with pytest.raises(BagError, match=f"enc: {TOPIC} message #1: encoding 'mono8'") as info:
        read_image_topic(path, TOPIC)
    assert "\n" not in str(info.value)
    path = write(tmp_path / "size", [good, good, raw_image(2, 2, "rgb8", 6, np.zeros(10))])
    with pytest.raises(BagError, match=f"size: {TOPIC} message #2: data has 10 bytes, expected height \\* step"):
        read_image_topic(path, TOPIC)
    path = write(tmp_path / "shape", [good, image_msg(STAMP, frames(1, 3, 2)[0], "front_optical_frame")])
    with pytest.raises(BagError, match="message #1: frame is 2x3, the topic's first frame 2x2"):
        read_image_topic(path, TOPIC)
    with pytest.raises(BagError, match="missing image topic /camera/side/image_raw"):
        read_image_topic(path, image_topic("side"))


def smooth_frames(n: int = 3, height: int = 16, width: int = 24) -> np.ndarray:
    """Gradients (jpeg reproduces them within a few levels; random noise it does not)."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([np.stack([x * 8 + i, y * 12, (x + y) * 4 + 10 * i], -1) for i in range(n)]).astype(np.uint8)


@pytest.mark.parametrize(("fmt", "kind"), [("jpeg", "jpeg"), ("png", "png"), ("jpg", "jpeg"),
                                           ("rgb8; jpeg compressed bgr8", "jpeg"), ("bgr8; png compressed bgr8", "png")])
def test_compressed_formats_are_read_from_the_format_field(fmt: str, kind: str) -> None:
    assert compressed_format(fmt) == kind


def test_png_round_trips_exactly_and_jpeg_closely() -> None:
    frame = smooth_frames(1)[0]
    assert np.array_equal(decode_compressed("png", compress_frame(frame, "png")), frame)
    jpeg = decode_compressed("jpeg", compress_frame(frame, "jpeg"))
    assert jpeg.shape == frame.shape and jpeg.dtype == np.uint8
    assert np.abs(jpeg.astype(int) - frame).mean() < 3.0


@pytest.mark.parametrize(("fmt", "data", "match"), [
    ("jpeg", compress_frame(np.zeros((8, 8, 3), np.uint8), "jpeg")[:60], "corrupt jpeg data \\(60 bytes\\)"),
    ("jpeg", b"not an image at all", "corrupt jpeg data \\(19 bytes\\): not a jpeg image"),
    ("jpeg", compress_frame(np.zeros((8, 8, 3), np.uint8), "png"), "not a jpeg image"),
    ("tiff", b"II*\x00", "format 'tiff' is not supported"),
])
def test_corrupt_or_unsupported_compressed_frames_raise_one_line(fmt: str, data: bytes, match: str) -> None:
    with pytest.raises(ImageDecodeError, match=match) as info:
        decode_compressed(fmt, data)
    assert "\n" not in str(info.value) and "0x" not in str(info.value)


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_bag_compressed_images_read_back(tmp_path: Path, storage: str, fmt: str) -> None:
    video = smooth_frames(4)
    series = ImageSeries("front_optical_frame", STAMP + 1000 * np.arange(4), video)
    with BagWriter(tmp_path / "bag", storage) as bag:
        write_image_series(bag, {"front": series}, compressed=fmt)
    stamps, decoded = read_image_topic(tmp_path / "bag", TOPIC + "/compressed")
    assert decoded.shape == video.shape and stamps.tolist() == series.times_ns.tolist()
    if fmt == "png":
        assert np.array_equal(decoded, video)
    else:
        assert np.abs(decoded.astype(int) - video).mean() < 3.0


def test_bag_with_a_corrupt_compressed_frame_names_bag_topic_and_index(tmp_path: Path) -> None:
    good = compressed_image_msg(STAMP, smooth_frames(1)[0], "front_optical_frame", "jpeg")
    bad = TYPESTORE.types[COMPRESSED_IMAGE](header=good.header, format="jpeg", data=good.data[: len(good.data) // 3])
    with BagWriter(tmp_path / "corrupt", "mcap") as bag:
        for i, msg in enumerate([good, bad]):
            bag.write(TOPIC + "/compressed", COMPRESSED_IMAGE, msg, STAMP + i)
    with pytest.raises(BagError, match=f"corrupt: {TOPIC}/compressed message #1: corrupt jpeg data") as info:
        read_image_topic(tmp_path / "corrupt", TOPIC + "/compressed")
    assert "\n" not in str(info.value)


def test_frame_store_keeps_each_distinct_frame_once_and_indexes_every_frame() -> None:
    """Frames identical to the one stored last share its slot (a camera image held over dataset frames);
    every index points at exactly the frame added; finish() gives back the unused capacity."""
    a, b, c = frames(3, seed=4)
    store = FrameStore(capacity=9, shape=a.shape)
    first = store.add(np.stack([a, a, a, b]))
    second = store.add(np.stack([b, c, a]))  # b continues across episodes; a again later: a new slot
    np.testing.assert_array_equal(first, [0, 0, 0, 1])
    np.testing.assert_array_equal(second, [1, 2, 3])
    stored = store.finish()
    assert stored.shape == (4, *a.shape) and stored.dtype == np.uint8 and len(store) == 4
    np.testing.assert_array_equal(stored[np.concatenate([first, second])], np.stack([a, a, a, b, b, c, a]))
    with pytest.raises(ValueError, match="after finish"):
        store.add(a[None])
    full = FrameStore(capacity=1, shape=a.shape)
    full.add(a[None])
    with pytest.raises(ValueError, match="capacity of 1"):
        full.add(b[None])
    with pytest.raises(ValueError, match=r"expected \(N, \(5, 7, 3\)\) uint8"):
        FrameStore(2, a.shape).add(a[None].astype(np.float32))
