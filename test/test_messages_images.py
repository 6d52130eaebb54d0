"""Camera messages -> numpy for policy_node (ros/messages.py): the camera_topics parameter and
image_frame's one-line rejections (topic, expected, received), with rclpy's message classes."""

from __future__ import annotations

import re

import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image

from flow_policy_ros.contract import IIWA_JOINT_NAMES, ObservationSpec, image_feature
from flow_policy_ros.data.images import compress_frame, image_fields
from flow_policy_ros.errors import ConfigError, ObservationError
from flow_policy_ros.ros.messages import CameraTopic, camera_topics, image_frame

SPEC = ObservationSpec(joint_names=IIWA_JOINT_NAMES, fields=("joint_positions", "image.front", "image.wrist"),
                       features=(image_feature("front", 6, 8), image_feature("wrist", 6, 8, compressed=True)))
FRAME = np.arange(6 * 8 * 3, dtype=np.uint8).reshape(6, 8, 3)


def raw_msg(frame: np.ndarray, encoding: str = "rgb8") -> Image:
    f = image_fields(frame, encoding)
    return Image(height=f["height"], width=f["width"], encoding=encoding, step=f["step"], data=f["data"].tobytes())


def test_default_topics_come_from_the_model_and_entries_override_them():
    default = camera_topics(SPEC, ())
    assert [(c.feature.name, c.topic, c.message_class) for c in default] == [
        ("image.front", "camera/front/image_raw", Image), ("image.wrist", "camera/wrist/image_raw/compressed", CompressedImage)]
    mapped = camera_topics(SPEC, ["wrist=/arm/cam/image_raw", " front = /top/image_raw/compressed "])
    assert [(c.topic, c.message_class) for c in mapped] == [("/top/image_raw/compressed", CompressedImage),
                                                             ("/arm/cam/image_raw", Image)]


@pytest.mark.parametrize(("entries", "message"), [
    (["front=a"], "the model needs camera(s) ['wrist'] but parameter camera_topics does not name them"),
    (["front=a", "wrist=b", "side=c"], "names camera 'side', the model has cameras ['front', 'wrist']"),
    (["front=a", "front=b", "wrist=c"], "names camera 'front' twice"),
    (["front:=a", "wrist=b"], "names camera 'front:', the model has cameras"),
    (["front=", "wrist=b"], "entry 'front=' is not '<camera>=<topic>'"),
])
def test_bad_camera_topics_fail_in_one_line(entries, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        camera_topics(SPEC, entries)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8"])
def test_raw_frames_decode_to_rgb(encoding):
    front = camera_topics(SPEC, ())[0]
    assert np.array_equal(image_frame(front, raw_msg(FRAME, encoding)), FRAME)


def test_png_and_jpeg_frames_decode():
    wrist = camera_topics(SPEC, ())[1]
    png = image_frame(wrist, CompressedImage(format="png", data=compress_frame(FRAME, "png")))
    assert np.array_equal(png, FRAME)
    jpeg = image_frame(wrist, CompressedImage(format="rgb8; jpeg compressed bgr8", data=compress_frame(FRAME, "jpeg")))
    assert jpeg.shape == (6, 8, 3) and jpeg.dtype == np.uint8


def _mono() -> Image:
    return Image(height=6, width=8, encoding="mono8", step=8, data=bytes(48))


@pytest.mark.parametrize(("which", "msg", "parts"), [
    (0, _mono(), ["camera/front/image_raw: encoding 'mono8', expected one of ['rgb8', 'bgr8'] for image.front"]),
    (0, raw_msg(np.zeros((12, 8, 3), np.uint8)), ["camera/front/image_raw: frame 8x12, expected 8x6 (width x height)"]),
    (0, Image(height=6, width=8, encoding="rgb8", step=24, data=bytes(100)), ["data has 100 bytes, expected"]),
    (1, CompressedImage(format="jpeg", data=compress_frame(FRAME, "jpeg")[:40]),
     ["camera/wrist/image_raw/compressed: corrupt jpeg data (40 bytes)", "for image.wrist"]),
    (1, CompressedImage(format="png", data=compress_frame(np.zeros((12, 8, 3), np.uint8), "png")),
     ["camera/wrist/image_raw/compressed: frame 8x12, expected 8x6 (width x height) for image.wrist"]),
    (1, CompressedImage(format="tiff", data=b"II*\x00"), ["format 'tiff' is not supported"]),
])
def test_bad_frames_raise_one_line_naming_topic_expected_and_received(which, msg, parts):
    camera: CameraTopic = camera_topics(SPEC, ())[which]
    with pytest.raises(ObservationError) as info:
        image_frame(camera, msg)
    text = str(info.value)
    assert "\n" not in text and all(p in text for p in parts), text
