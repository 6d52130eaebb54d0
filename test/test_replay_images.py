"""flow-policy replay with a camera model: Image (rgb8/bgr8) and CompressedImage (png/jpeg) bags in
mcap and sqlite3, the frame each decision pairs with, gaps, one-line errors and the camera plot.

The model is test/image_model.py's tiny camera graph (real ONNX, untrained): every action is
shifted by 0.1 rad · (mean pixel / 255 − 0.5), so the frame a decision used can be read back
from its chunk. The frames here are uniform (value v_k for frame k), which makes that exact.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_replay import EPOCH, synthetic_bag

from flow_policy_ros.cli import main
from flow_policy_ros.data import bag as bagio
from flow_policy_ros.data.images import ImageSeries
from flow_policy_ros.data.replay import replay_bag
from flow_policy_ros.data.replay_decisions import decision_noise
from flow_policy_ros.data.replay_source import frame_indices
from flow_policy_ros.runtime import onnx_policy

pytestmark = pytest.mark.skipif(not hasattr(onnx_policy, "image_input_name"),
                                reason="OnnxPolicy without image inputs (merge r3-campolicy)")

SIZE = (24, 32)
MAX_AGE_S = 0.1
FRAME_NS = 40_000_000  # 25 Hz


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from image_model import make_image_model

    return make_image_model(tmp_path_factory.mktemp("model") / "camera.onnx", size=SIZE, max_age_s=MAX_AGE_S,
                            seed=3)


def frame_values(count: int) -> np.ndarray:
    """The uniform value of frame k (distinct for neighbouring frames)."""
    return (np.arange(count) * 37 + 11) % 256


def camera_bag(path: Path, storage: str = "mcap", compressed: str | None = None, gap: tuple[float, float] | None = None,
               size: tuple[int, int] = SIZE, seconds: float = 2.0) -> Path:
    """synthetic_bag (joint states 100 Hz, commands 50 Hz) plus camera 'front' at 25 Hz from EPOCH - 20 ms,
    Image rgb8/bgr8 in turn or CompressedImage ``compressed``; no frame in ``gap`` (s after EPOCH)."""
    synthetic_bag(path, storage, seconds=seconds)
    count = int(seconds / (FRAME_NS * 1e-9)) + 1
    times = EPOCH - 20_000_000 + FRAME_NS * np.arange(count)
    frames = np.stack([np.full((*size, 3), v, np.uint8) for v in frame_values(count)])
    keep = np.ones(count, bool) if gap is None else ~(((times - EPOCH) * 1e-9 >= gap[0]) & ((times - EPOCH) * 1e-9 < gap[1]))
    extra = path.with_name(path.name + ".cam")
    with bagio.BagWriter(extra, storage) as writer:  # then merged: the bag API writes one bag at a time
        if compressed:
            bagio.write_image_series(writer, {"front": ImageSeries("front_optical_frame", times[keep], frames[keep])},
                                     compressed)
        else:
            for i in np.flatnonzero(keep):
                msg = bagio.image_msg(int(times[i]), frames[i], "front_optical_frame", "bgr8" if i % 2 else "rgb8")
                writer.write("/camera/front/image_raw", bagio.IMAGE, msg, int(times[i]))
    merged = path.with_name(path.name + ".merged")
    with bagio.BagWriter(merged, storage) as writer:
        raws = sorted([*bagio.iter_raw_messages(path), *bagio.iter_raw_messages(extra)], key=lambda r: r.log_time_ns)
        for raw in raws:
            writer.write_raw(raw.topic, raw.msgtype, raw.data, raw.log_time_ns)
    import shutil

    shutil.rmtree(path)
    shutil.rmtree(extra)
    merged.rename(path)
    return path


def expected_frame(ticks_ns: np.ndarray) -> np.ndarray:
    """Index of the frame each tick pairs with, computed independently of replay: the last frame
    stamped at or before tick + 5 ms (frames every 40 ms from EPOCH - 20 ms)."""
    return (ticks_ns + 5_000_000 - (EPOCH - 20_000_000)) // FRAME_NS


@pytest.mark.parametrize(("storage", "compressed"), [("mcap", None), ("sqlite3", None), ("mcap", "png"),
                                                      ("sqlite3", "png"), ("mcap", "jpeg")])
def test_each_decision_uses_the_frame_it_pairs_with(tmp_path: Path, model: Path, storage: str, compressed: str | None):
    from flow_policy_ros.runtime.policy import load_policy

    policy = load_policy(model, warmup=0)
    rep = replay_bag(camera_bag(tmp_path / "bag", storage, compressed), policy, seed=0)
    dec = rep.decisions
    want = expected_frame(dec.ticks_ns)
    values = frame_values(int(want.max()) + 1)
    assert rep.report["decisions_without_frame"] == 0 and len(dec.ticks_ns) > 80
    topic = "/camera/front/image_raw" + ("/compressed" if compressed else "")
    assert rep.report["image_topics"] == {"image.front": topic}
    mean = dec.images["image.front"].reshape(len(want), -1).mean(axis=1)
    tolerance = 2.0 if compressed == "jpeg" else 0.0  # jpeg of a uniform frame is within a level or two
    assert np.all(np.abs(mean - values[want]) <= tolerance)
    # the chunks are the model's answer to exactly those frames
    noise = decision_noise(0, len(dec.ticks_ns), policy.metadata.horizon, policy.metadata.action_dim)
    direct = policy.predict(dec.observations, noise=noise, images={"image.front": dec.images["image.front"]})
    np.testing.assert_array_equal(rep.predicted, direct)
    dark = policy.predict(dec.observations[:1], noise=noise[:1],
                          images={"image.front": np.zeros((1, *SIZE, 3), np.uint8)})
    assert not np.allclose(rep.predicted[:1], dark), "the frame does not reach the chunk"


def test_frame_indices_respect_max_age_and_the_future_tolerance():
    series = ImageSeries("f", np.array([0, 100, 200]) * 1_000_000, np.zeros((3, 2, 2, 3), np.uint8))
    ticks = np.array([-1, 0, 50, 104, 106, 199, 300, 301]) * 1_000_000
    assert frame_indices(series, ticks, 0.1).tolist() == [0, 0, 0, 1, 1, 2, 2, -1]


def test_a_camera_gap_leaves_those_decisions_out(tmp_path: Path, model: Path):
    from flow_policy_ros.runtime.policy import load_policy

    rep = replay_bag(camera_bag(tmp_path / "bag", gap=(0.6, 1.2)), load_policy(model, warmup=0))
    # frames stop after 0.58 s and resume at 1.22 s: ticks in (0.68 s, 1.22 s - 5 ms) have none within 0.1 s
    assert 20 <= rep.report["decisions_without_frame"] <= 30
    t = (rep.decisions.ticks_ns - EPOCH) * 1e-9
    assert not np.any((t > 0.685) & (t < 1.214))


@pytest.mark.parametrize(("make", "fragments"), [
    (lambda p: synthetic_bag(p), ["no image.front: the bag has neither /camera/front/image_raw nor "
                                  "/camera/front/image_raw/compressed"]),
    (lambda p: camera_bag(p, size=(48, 64)), ["/camera/front/image_raw: frames are 64x48, image.front of the model "
                                              "takes 32x24", "replay does not resize"]),
])
def test_bags_a_camera_model_cannot_use_are_one_line_errors(tmp_path: Path, model: Path, capsys, make, fragments):
    bag = make(tmp_path / "bag")
    code = main(["replay", str(bag), "--model", str(model), "--out", str(tmp_path / "out"), "--no-plots"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert all(f in err for f in fragments), err


def test_replay_cli_plots_the_camera_frames_beside_the_chunks(tmp_path: Path, model: Path):
    bag = camera_bag(tmp_path / "bag", compressed="png")
    assert main(["replay", str(bag), "--model", str(model), "--out", str(tmp_path / "out"),
                 "--json", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    plots = [Path(p) for b in report["bags"] for p in b["plots"]]
    cameras = [p for p in plots if p.name.endswith(".cameras.png")]
    assert len(cameras) == 1 and cameras[0].stat().st_size > 10_000
    from matplotlib.image import imread

    image = imread(cameras[0])
    assert image.shape[0] > 400 and image.shape[1] > 600
