"""flow-policy play republishes camera topics: sensor_msgs/Image and CompressedImage from mcap and
sqlite3 bags arrive over DDS byte-exact (a sensor-data subscriber decodes the recorded frames)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT, node_env, stop_process

from flow_policy_ros.data import bag as bagio
from flow_policy_ros.data.images import decode_compressed, decode_image

EPOCH = 1_700_000_000_000_000_000
RAW, COMPRESSED = "/camera/front/image_raw", "/camera/front/image_raw/compressed"


def camera_bag(path: Path, storage: str, count: int = 12) -> np.ndarray:
    """``count`` frames at 25 Hz on both topics (Image bgr8 and CompressedImage png); returns them (N, 24, 32, 3)."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (count, 24, 32, 3), dtype=np.uint8)
    times = EPOCH + 40_000_000 * np.arange(count)
    with bagio.BagWriter(path, storage) as writer:
        for t, frame in zip(times, frames):
            writer.write(RAW, bagio.IMAGE, bagio.image_msg(int(t), frame, "front_optical_frame", "bgr8"), int(t))
            writer.write(COMPRESSED, bagio.COMPRESSED_IMAGE,
                         bagio.compressed_image_msg(int(t), frame, "front_optical_frame", "png"), int(t))
    return frames


@pytest.mark.slow
@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_play_republishes_image_and_compressed_image_topics(tmp_path: Path, storage: str) -> None:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CompressedImage, Image

    frames = camera_bag(tmp_path / "bag", storage)
    raw: list[np.ndarray] = []
    packed: list[np.ndarray] = []
    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("play_image_listener", context=context)
    node.create_subscription(Image, RAW, lambda m: raw.append(
        decode_image(m.height, m.width, m.encoding, m.step, bytes(m.data))), qos_profile_sensor_data)
    node.create_subscription(CompressedImage, COMPRESSED, lambda m: packed.append(
        decode_compressed(m.format, bytes(m.data))), qos_profile_sensor_data)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    proc = subprocess.Popen([sys.executable, "-m", "flow_policy_ros", "play", str(tmp_path / "bag"),
                             "--wait-for-subscribers", "10", "--delay", "0.5"], cwd=REPO_ROOT, env=node_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 20.0
        while proc.poll() is None and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.002)
        for _ in range(50):
            executor.spin_once(timeout_sec=0.01)
        assert proc.poll() == 0, proc.stdout.read() if proc.stdout else ""
    finally:
        stop_process(proc)
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=context)
    assert len(raw) >= 10 and len(packed) >= 10, (len(raw), len(packed))
    recorded = {f.tobytes() for f in frames}
    assert all(f.tobytes() in recorded for f in raw + packed), "a played frame differs from every recorded one"
