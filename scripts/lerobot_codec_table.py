"""Codec table for LeRobot camera videos (docs/lerobot.md): which encoders the installed PyAV offers, and
per codec the size, speed and error of our writer/reader on real sim camera frames.

    PYTHONPATH=. .venv/bin/python scripts/lerobot_codec_table.py BAG [--episodes-from DIR]

BAG: an episode bag with /camera/front/image_raw (``flow-policy collect --task reach_object --camera enabled``).
Its frames are held onto the 50 fps grid as the converter does, written with LeRobotWriter through each
codec (LeRobot's settings: g 2, CRF 30 where the codec takes it, yuv420p) and decoded with
LeRobotDataset.episode_frames; error = |decoded frame k - frame written at k| in grey levels (0-255),
frame check = decoded frame k is nearer the frame written at k than the camera frame before or after it,
counted where those differ by more than CLEAR grey levels (a nearly still arm changes the image by less
than the codec's error, and such frames cannot be told apart after encoding by any reader).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flow_policy_ros.data.lerobot import LeRobotWriter, vector_feature  # noqa: E402
from flow_policy_ros.data.lerobot_convert import LeRobotMapping, bag_frames  # noqa: E402
from flow_policy_ros.data.lerobot_reader import read_dataset  # noqa: E402
from flow_policy_ros.data.lerobot_video import (  # noqa: E402
    LEROBOT_CODECS,
    VideoSettings,
    _av,
    available_encoders,
    video_feature,
)

#: Mean difference (grey levels) above which two camera frames count as distinguishable for the frame check.
CLEAR = 3.0
#: codec -> settings (LeRobot's VideoEncoderConfig defaults: preset 12 is SVT-AV1's; x264/x265 use their default)
CANDIDATES = {
    "libsvtav1": VideoSettings("libsvtav1", preset=12),
    "h264": VideoSettings("h264", preset=None),
    "hevc": VideoSettings("hevc", preset=None),
    "libaom-av1": VideoSettings("libaom-av1", preset=None),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bag", type=Path)
    args = parser.parse_args()
    av = _av()
    print(f"PyAV {av.__version__} (FFmpeg {getattr(av, 'ffmpeg_version_info', '?')}): "
          f"encoders of LeRobot's codecs {list(LEROBOT_CODECS)} offered: {available_encoders()}")
    mapping = LeRobotMapping(observation={"joint_names": [], "fields": ["joint_positions"]},
                             data={"goal_topic": "/object_position"}, images={"front": "/camera/front/image_raw"})
    frames = bag_frames(args.bag, mapping).images["front"]
    distinct = np.flatnonzero(np.r_[True, np.any(frames[1:] != frames[:-1], axis=(1, 2, 3))])
    print(f"{args.bag}: {len(frames)} frames at 50 fps ({len(distinct)} distinct camera frames), {frames.shape[1:]}")
    print("| codec (encoder) | stream | bytes/frame | encode ms/frame | decode ms/frame | mean / p99 / max abs error "
          f"| frame k nearest its own (neighbours > {CLEAR} apart) |")
    print("|---|---|---|---|---|---|---|")
    for name, settings in CANDIDATES.items():
        if name not in available_encoders():
            print(f"| {name} | not in this PyAV wheel | | | | | |")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp) / "ds"
            features = {"observation.state": vector_feature(["x"]), "observation.images.front": video_feature(*frames.shape[1:3])}
            start = time.perf_counter()
            with LeRobotWriter(root, 50, features, video=settings) as writer:
                writer.add_episode({"observation.state": np.zeros((len(frames), 1)), "observation.images.front": frames}, "t")
            encode = time.perf_counter() - start
            ds = read_dataset(root)
            start = time.perf_counter()
            decoded = ds.episode_frames(0, "observation.images.front")
            decode = time.perf_counter() - start
            size = sum(p.stat().st_size for p in (root / "videos").rglob("*.mp4"))
            info = ds.features["observation.images.front"]["info"]
        err = np.abs(decoded.astype(np.int16) - frames.astype(np.int16))
        # frame k is nearer the frame written at k than a neighbouring camera frame that differs from it by
        # more than CLEAR grey levels (mean); smaller scene changes are below the codec's error
        own = np.searchsorted(distinct, np.arange(len(frames)), side="right") - 1
        checked = correct = 0
        for k, d in enumerate(decoded.astype(np.int16)):
            mine = frames[distinct[own[k]]].astype(np.int16)
            for j in (own[k] - 1, own[k] + 1):
                if 0 <= j < len(distinct) and np.abs(frames[distinct[j]].astype(np.int16) - mine).mean() > CLEAR:
                    checked += 1
                    correct += np.abs(mine - d).mean() < np.abs(frames[distinct[j]].astype(np.int16) - d).mean()
        print(f"| {name} | {info['video.codec']} {info['video.pix_fmt']} | {size / len(frames):.0f} | "
              f"{encode / len(frames) * 1e3:.2f} | {decode / len(frames) * 1e3:.2f} | "
              f"{err.mean():.2f} / {np.percentile(err, 99):.0f} / {err.max()} | {correct}/{checked} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
