"""Camera frames in LeRobotDataset v3.0: Image topics -> AV1 video as LeRobot writes it (layout, episode
columns, info, per-channel stats), frame-accurate decoding within the codec's tolerance, v3 -> bag
Image messages, file roll-over, and a corrupt or missing video as one line with exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from test_lerobot import EPOCH, NAMES, tree_digest

from flow_policy_ros.cli import main
from flow_policy_ros.data import bag as bagio
from flow_policy_ros.data.images import ImageSeries
from flow_policy_ros.data.lerobot import LeRobotWriter, image_episode_stats, vector_feature
from flow_policy_ros.data.lerobot_convert import LeRobotMapping, bag_frames, bags_to_lerobot, lerobot_to_bags
from flow_policy_ros.data.lerobot_reader import read_dataset
from flow_policy_ros.data.lerobot_video import available_encoders, decode_frames, sample_indices, video_feature
from flow_policy_ros.data.recording import EpisodeRecording

KEY = "observation.images.front"
TOPIC = "/camera/front/image_raw"
H, W = 64, 64
CAMERA_PERIOD = 80_000_000  # ns: 12.5 Hz, the sim camera's rate
CAMERA_OFFSET = 3_000_000  # ns after the control tick
#: Codec tolerance, libsvtav1 CRF 30 yuv420p (LeRobot's defaults) on these smooth test frames: mean |error|
#: per frame in grey levels (measured 2.2-2.7), and frame k is always closer to the image written at k than
#: to the one of a neighbouring camera frame (those differ by ~20 grey levels on average).
MEAN_TOLERANCE = 4.0
MAPPING = LeRobotMapping(observation={"joint_names": NAMES, "fields": ["joint_positions", "goal"]})


def camera_image(j: int) -> np.ndarray:
    """Camera frame j: smooth colour gradients that move with j, (H, W, 3) uint8."""
    y, x = np.mgrid[0:H, 0:W].astype(np.float64)
    phase = 2 * np.pi * j / 12
    r = 128 + 100 * np.sin(2 * np.pi * x / W + phase)
    g = 128 + 100 * np.cos(2 * np.pi * y / H - phase)
    b = np.full_like(x, (40 + 13 * j) % 200)
    return np.stack([r, g, b], axis=-1).round().astype(np.uint8)


def camera_bag(path: Path, seed: int, steps: int = 40) -> tuple[EpisodeRecording, np.ndarray]:
    """Joint states and commands on the 50 Hz ticks, the camera at 12.5 Hz 3 ms after every 4th tick.
    Returns the recording and the camera frame index each tick holds (-1 before the first frame)."""
    rng = np.random.default_rng(seed)
    ticks = EPOCH + seed * 10**12 + 20_000_000 * np.arange(steps, dtype=np.int64)
    positions = np.cumsum(rng.normal(scale=0.01, size=(steps, 7)), axis=0)
    n_cam = (steps * 20_000_000) // CAMERA_PERIOD
    cam_times = ticks[0] + CAMERA_OFFSET + CAMERA_PERIOD * np.arange(n_cam, dtype=np.int64)
    frames = np.stack([camera_image(j + 7 * seed) for j in range(n_cam)])
    rec = EpisodeRecording(list(NAMES), ticks, positions, np.zeros((steps, 7)), ticks[:1], rng.normal(size=(1, 3)),
                           list(NAMES), ticks, positions + 0.01, {"task": "reach the object"},
                           images={"front": ImageSeries("front_optical_frame", cam_times, frames)})
    bagio.write_episode_bag(path, rec)
    held = np.searchsorted(cam_times, ticks, side="right") - 1
    return rec, held


def assert_frame_accurate(decoded: np.ndarray, expected_index: np.ndarray, seed: int) -> None:
    """Decoded frame k is within MEAN_TOLERANCE of camera frame expected_index[k] and closer to it than to
    the camera frames before and after."""
    for k, j in enumerate(expected_index):
        err = np.abs(decoded[k].astype(int) - camera_image(j + 7 * seed).astype(int)).mean()
        assert err <= MEAN_TOLERANCE, (k, j, err)
        for other in (j - 1, j + 1):
            assert err < np.abs(decoded[k].astype(int) - camera_image(other + 7 * seed).astype(int)).mean(), (k, j, other)


def test_installed_pyav_offers_lerobots_default_encoder() -> None:
    assert "libsvtav1" in available_encoders()


def test_image_topic_becomes_a_video_feature_as_lerobot_writes_it(tmp_path: Path) -> None:
    bags, held = [], []
    for i in range(2):
        bags.append(tmp_path / "bags" / f"ep{i}")
        held.append(camera_bag(bags[-1], seed=i, steps=40 + 8 * i)[1])
    summary = bags_to_lerobot(bags, tmp_path / "ds", MAPPING)
    assert summary["cameras"] == {KEY: TOPIC}
    # rule: frame k holds the last camera frame stamped at or before t_k; tick 0 precedes the first frame
    lengths = [int((h >= 0).sum()) for h in held]
    assert summary["frames"] == sum(lengths) == (40 - 1) + (48 - 1)
    info = json.loads((tmp_path / "ds/meta/info.json").read_text())
    assert info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    feature = info["features"][KEY]
    assert {k: feature[k] for k in ("dtype", "shape", "names")} == video_feature(H, W)
    assert feature["info"] == {"video.height": H, "video.width": W, "video.codec": "av1", "video.pix_fmt": "yuv420p",
                               "video.fps": 50, "video.channels": 3, "has_audio": False, "video.g": 2, "video.crf": 30,
                               "video.preset": 12, "video.fast_decode": 0, "video.video_backend": "pyav",
                               "video.extra_options": {}, "is_depth_map": False}
    assert list(info["features"])[:3] == ["observation.state", "action", KEY]
    assert KEY not in pq.read_schema(tmp_path / "ds/data/chunk-000/file-000.parquet").names
    assert sorted(str(p.relative_to(tmp_path / "ds")) for p in (tmp_path / "ds/videos").rglob("*")
                  if p.is_file()) == [f"videos/{KEY}/chunk-000/file-000.mp4"]
    episodes = pq.read_table(tmp_path / "ds/meta/episodes/chunk-000/file-000.parquet")
    cols = episodes.column_names
    assert cols[cols.index("dataset_to_index") + 1: cols.index("dataset_to_index") + 5] == [
        f"videos/{KEY}/chunk_index", f"videos/{KEY}/file_index", f"videos/{KEY}/from_timestamp", f"videos/{KEY}/to_timestamp"]
    rows = episodes.to_pylist()
    assert [(r[f"videos/{KEY}/from_timestamp"], r[f"videos/{KEY}/to_timestamp"]) for r in rows] == [
        (0.0, lengths[0] / 50), (lengths[0] / 50, (lengths[0] + lengths[1]) / 50)]
    # per-channel stats (3, 1, 1) in [0, 1], over the raw frames as LeRobot computes them
    stats = json.loads((tmp_path / "ds/meta/stats.json").read_text())[KEY]
    assert np.array(stats["mean"]).shape == (3, 1, 1) and stats["count"] == [sum(lengths)]
    assert [r[f"stats/{KEY}/count"] for r in rows] == [[n] for n in lengths]
    first = np.stack([camera_image(j) for j in held[0][held[0] >= 0]])
    np.testing.assert_allclose(np.array(rows[0][f"stats/{KEY}/mean"]).reshape(3),
                               first.reshape(-1, 3).mean(axis=0) / 255, rtol=0, atol=1e-12)
    assert 0.0 <= np.min(stats["min"]) and np.max(stats["max"]) <= 1.0
    assert len(sample_indices(40)) == 40 and len(sample_indices(1000)) == 177  # LeRobot's estimate_num_samples
    # frame-accurate decoding, in both episodes of the shared file
    ds = read_dataset(tmp_path / "ds")
    for e, ep in enumerate(ds.episodes):
        decoded = ds.episode_frames(e, KEY)
        assert decoded.shape == (ep["length"], H, W, 3)
        assert_frame_accurate(decoded, held[e][held[e] >= 0], seed=e)


def test_dataset_to_bags_writes_images_on_the_grid_and_round_trips(tmp_path: Path) -> None:
    """v3 -> bag: sensor_msgs/Image rgb8 per frame at the frame's stamp; bag -> v3 again keeps the parquet
    columns exactly and the frames within the codec's tolerance (a second lossy pass)."""
    _, held = camera_bag(tmp_path / "bags" / "ep0", seed=0)
    bags_to_lerobot([tmp_path / "bags" / "ep0"], tmp_path / "ds", MAPPING)
    (bag,) = lerobot_to_bags(tmp_path / "ds", tmp_path / "again", MAPPING)
    stamps, frames = bagio.read_image_topic(bag, TOPIC)
    expected = held[held >= 0]
    np.testing.assert_array_equal(stamps, MAPPING.start_time_ns + 20_000_000 * np.arange(len(expected)))
    assert_frame_accurate(frames, expected, seed=0)
    frames2 = bag_frames(bag, MAPPING)
    assert list(frames2.images) == ["front"] and len(frames2.ticks_ns) == len(expected)
    bags_to_lerobot([bag], tmp_path / "ds2", MAPPING)
    a = pq.read_table(tmp_path / "ds/data/chunk-000/file-000.parquet")
    assert a.equals(pq.read_table(tmp_path / "ds2/data/chunk-000/file-000.parquet"))
    assert_frame_accurate(read_dataset(tmp_path / "ds2").episode_frames(0, KEY), expected, seed=0)


def test_video_files_roll_over_and_each_episode_decodes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    features = {"observation.state": vector_feature(["a.pos"]), KEY: video_feature(H, W)}
    with LeRobotWriter(tmp_path / "ds", 50, features, video_files_size_in_mb=1e-6, chunks_size=2) as writer:
        for e in range(3):
            n = 60 + 3 * e  # more than SVT-AV1's lookahead: the first file has muxed bytes when episode 1 comes
            writer.add_episode({"observation.state": rng.normal(size=(n, 1)),
                                KEY: np.stack([camera_image(4 * e + k) for k in range(n)])}, task="t")
    ds = read_dataset(tmp_path / "ds")
    where = [(e[f"videos/{KEY}/chunk_index"], e[f"videos/{KEY}/file_index"], e[f"videos/{KEY}/from_timestamp"])
             for e in ds.episodes]
    assert where == [(0, 0, 0.0), (0, 1, 0.0), (1, 0, 0.0)]
    for e in range(3):
        decoded = ds.episode_frames(e, KEY)
        for k in range(len(decoded)):
            assert np.abs(decoded[k].astype(int) - camera_image(4 * e + k).astype(int)).mean() <= MEAN_TOLERANCE
    with pytest.raises(Exception, match="no frame at"):
        decode_frames(ds.video_file(KEY, 0, 0), 0.0, 61, 50, KEY)  # the file holds 60 frames


def test_image_stats_of_one_episode() -> None:
    frames = np.zeros((3, 4, 4, 3), np.uint8)
    frames[..., 0] = 255
    stats = image_episode_stats(frames)
    assert stats["mean"].tolist() == [1.0, 0.0, 0.0] and stats["count"].tolist() == [3]


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


@pytest.mark.parametrize(("damage", "message"), [
    (lambda p: p.unlink(), r"file-000.mp4: missing video \(feature 'observation.images.front'\)"),
    (_truncate, r"file-000.mp4: (corrupt video \(feature 'observation.images.front'\)|feature 'observation.images.front': no frame)"),
])
def test_corrupt_or_missing_video_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], damage,
                                                     message: str) -> None:
    camera_bag(tmp_path / "bags" / "ep0", seed=0)
    bags_to_lerobot([tmp_path / "bags" / "ep0"], tmp_path / "ds", MAPPING)
    damage(tmp_path / "ds" / "videos" / KEY / "chunk-000/file-000.mp4")
    before = tree_digest(tmp_path / "ds")
    code = main(["convert", str(tmp_path / "ds"), "--to-rosbag2", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and __import__("re").search(message, err), err
    assert tree_digest(tmp_path / "ds") == before and not (tmp_path / "out").exists()


def test_mapping_camera_missing_from_bag_or_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    camera_bag(tmp_path / "bags" / "ep0", seed=0)
    (tmp_path / "m.yaml").write_text("images: {wrist: /camera/wrist/image_raw}\n")
    code = main(["convert", str(tmp_path / "bags"), "--to-lerobot", str(tmp_path / "ds"), "--mapping", str(tmp_path / "m.yaml"),
                 "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "bags/ep0: missing image topic /camera/wrist/image_raw" in err, err
    bags_to_lerobot([tmp_path / "bags" / "ep0"], tmp_path / "ds", MAPPING)
    code = main(["convert", str(tmp_path / "ds"), "--to-rosbag2", str(tmp_path / "out"), "--mapping", str(tmp_path / "m.yaml"),
                 "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "ds/meta/info.json: the mapping's images need video feature(s) ['observation.images.wrist']" in err


LEROBOT_VIDEO_FIXTURE = Path(__file__).resolve().parent / "fixtures/lerobot_v30_video_by_lerobot_0.6.1"  # see its .md


def test_video_written_by_lerobot_reads_converts_and_trains(tmp_path: Path) -> None:
    """LeRobot's own AV1 video: our decoder gives each frame within the tolerance of the image LeRobot was
    given, our image stats of those images match its stats.json (float32 there: 1e-3), and the dataset
    converts to bags (Image messages = the decoded frames) and back, and trains."""
    from flow_policy_ros.data.config import DataConfig
    from flow_policy_ros.data.lerobot import aggregate_stats
    from flow_policy_ros.policy.config import ObservationSpec, PolicyConfig
    from flow_policy_ros.policy.dataset import load_training_data
    from scripts.lerobot_readback import camera_test_image

    before = tree_digest(LEROBOT_VIDEO_FIXTURE)
    ds = read_dataset(LEROBOT_VIDEO_FIXTURE)
    assert ds.video_keys == [KEY] and ds.features[KEY]["info"]["video.codec"] == "av1"
    written = [np.stack([camera_test_image(k + 100 * e) for k in range(int(ep["length"]))]) for e, ep in enumerate(ds.episodes)]
    for e, images in enumerate(written):
        decoded = ds.episode_frames(e, KEY)
        errors = np.abs(decoded.astype(int) - images.astype(int)).mean(axis=(1, 2, 3))
        assert errors.max() <= MEAN_TOLERANCE, errors
        shifted = np.abs(decoded[1:].astype(int) - images[:-1].astype(int)).mean(axis=(1, 2, 3))
        assert np.all(errors[1:] < shifted)  # frame k is image k, not k-1
    ours = aggregate_stats([image_episode_stats(w) for w in written])
    for stat, value in ours.items():
        np.testing.assert_allclose(np.array(ds.stats[KEY][stat], float).reshape(-1), value.reshape(-1), rtol=0, atol=1e-3,
                                   err_msg=stat)
    mapping = LeRobotMapping(observation={"joint_names": NAMES, "fields": ["joint_positions", "goal"]})
    bags = lerobot_to_bags(LEROBOT_VIDEO_FIXTURE, tmp_path / "bags", mapping)
    for e, bag in enumerate(bags):
        _, frames = bagio.read_image_topic(bag, TOPIC)
        np.testing.assert_array_equal(frames, ds.episode_frames(e, KEY))
    bags_to_lerobot(bags, tmp_path / "ds", mapping)
    assert pq.read_table(tmp_path / "ds/data/chunk-000/file-000.parquet").equals(
        pq.read_table(LEROBOT_VIDEO_FIXTURE / "data/chunk-000/file-000.parquet"))
    policy = PolicyConfig(observation=ObservationSpec(tuple(NAMES), ("joint_positions", "goal")), horizon=4)
    windows = load_training_data(LEROBOT_VIDEO_FIXTURE, policy, DataConfig(), progress=False)
    assert windows.observations.shape == (55, 10) and windows.actions.shape == (55, 4, 7)
    assert tree_digest(LEROBOT_VIDEO_FIXTURE) == before


def test_a_later_bag_without_the_camera_leaves_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The first bag fixes the cameras; a later one without the topic stops the conversion with one line,
    after a video file was already open: no dataset and no temp directory are left."""
    camera_bag(tmp_path / "bags" / "ep0", seed=0)
    from test_lerobot import episode_bag

    episode_bag(tmp_path / "bags" / "ep1", seed=1)
    code = main(["convert", str(tmp_path / "bags"), "--to-lerobot", str(tmp_path / "out" / "ds"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and f"bags/ep1: missing image topic {TOPIC}" in err, err
    assert list((tmp_path / "out").iterdir()) == []
