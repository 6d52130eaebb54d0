"""The camera path of the policy: encoder, condition with CFG, image windows, export and OnnxPolicy."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch

from flow_policy_ros.contract import ObservationSpec, image_feature
from flow_policy_ros.data.images import ImageSeries
from flow_policy_ros.data.recording import EpisodeRecording
from flow_policy_ros.data.windows import frame_indices
from flow_policy_ros.errors import DatasetError, ObservationError
from flow_policy_ros.policy.config import DataConfig, PolicyConfig
from flow_policy_ros.policy.dataset import Windows, windows_from_recording
from flow_policy_ros.policy.image_encoder import ImageEncoder, SpatialSoftmax, random_shift
from flow_policy_ros.policy.model import VelocityNet

JOINTS = tuple(f"lbr_iiwa_joint_{i}" for i in range(1, 8))
SIZE = 24  # small frames keep the tests fast


def camera_spec(size: int = SIZE) -> ObservationSpec:
    return ObservationSpec(JOINTS, ("joint_positions", "image.front"), (image_feature("front", size, size),))


def camera_config(**overrides) -> PolicyConfig:
    values = dict(observation=camera_spec(), guided_fields=("image.front",), hidden_dim=32, num_layers=1, horizon=8,
                  solver_steps=4, image_channels=(4, 4, 8), image_keypoints=4, image_embed_dim=8)
    values.update(overrides)
    return PolicyConfig(**values)


# --------------------------------------------------------------------------- encoder


def test_random_shift_is_an_integer_shift_of_the_padded_frame():
    image = torch.zeros(1, 1, 9, 9)
    image[0, 0, 4, 4] = 1.0
    generator = torch.Generator().manual_seed(0)
    shifted = [random_shift(image, 2, generator) for _ in range(40)]
    peaks = {tuple(int(v) for v in torch.nonzero(s[0, 0])[0]) for s in shifted}
    assert all(s.shape == image.shape and float(s.sum()) == 1.0 for s in shifted)
    assert peaks <= {(r, c) for r in range(2, 7) for c in range(2, 7)} and len(peaks) > 5
    assert random_shift(image, 0) is image


def test_spatial_softmax_finds_a_peak():
    layer = SpatialSoftmax(1, 1, 5, 5)
    with torch.no_grad():
        layer.project.weight.fill_(1.0)
        layer.project.bias.zero_()
        layer.log_temperature.fill_(-5.0)  # sharp softmax
    maps = torch.zeros(1, 1, 5, 5)
    maps[0, 0, 1, 3] = 1.0  # row 1, column 3 -> x = 0.5, y = -0.5
    np.testing.assert_allclose(layer(maps).detach().numpy(), [[0.5, -0.5]], atol=1e-3)


def test_encoder_takes_uint8_and_normalises_inside():
    torch.manual_seed(0)
    encoder = ImageEncoder(SIZE, SIZE, (4, 4, 8), 4, 8, shift_pad=2)
    frames = torch.randint(0, 256, (3, SIZE, SIZE, 3), dtype=torch.uint8)
    out = encoder(frames)
    assert out.shape == (3, 8)
    torch.testing.assert_close(out, encoder(frames.to(torch.float32)))
    torch.testing.assert_close(out, encoder(frames))  # no augmentation at sampling: deterministic
    augmented = encoder(frames, augment=True, generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(augmented, out)


# --------------------------------------------------------------------------- condition and CFG


def test_null_embedding_replaces_the_camera_and_keeps_the_joint_positions():
    cfg = camera_config()
    assert cfg.condition_dim == 7 + 8 and cfg.guided_mask() == [False] * 7 + [True] * 8
    torch.manual_seed(0)
    net = VelocityNet(cfg)
    with torch.no_grad():
        net.null_condition.normal_()
    obs = torch.randn(2, 7)
    a = {"front": torch.randint(0, 256, (2, SIZE, SIZE, 3), dtype=torch.uint8)}
    b = {"front": torch.randint(0, 256, (2, SIZE, SIZE, 3), dtype=torch.uint8)}
    ca, cb = net.condition_input(obs, a), net.condition_input(obs, b)
    assert ca.shape == (2, 15)
    assert not torch.allclose(net.condition(ca), net.condition(cb))  # the conditional branch sees the image
    torch.testing.assert_close(net.unconditional(ca), net.unconditional(cb))  # the null branch does not
    assert not torch.allclose(net.unconditional(ca), net.unconditional(net.condition_input(obs + 1.0, a)))  # but the arm
    with pytest.raises(ValueError, match="front"):
        net.condition_input(obs, {})


def test_state_only_model_is_unchanged_by_the_camera_code():
    net = VelocityNet(PolicyConfig(hidden_dim=32, num_layers=1, horizon=8))
    obs = torch.randn(2, net.null_condition.shape[0])
    assert net.condition_input(obs) is obs and len(net.image_encoders) == 0
    assert not any(k.startswith("image_encoders") for k in net.state_dict())


# --------------------------------------------------------------------------- windows


def test_frame_in_force_is_the_latest_at_or_before_the_tick():
    times = np.array([100, 180, 260])
    np.testing.assert_array_equal(frame_indices(times, [99, 100, 179, 180, 259, 260, 1000]), [-1, 0, 0, 1, 1, 2, 2])


def _recording(first_frame_ns: int, size: int = SIZE) -> EpisodeRecording:
    period = 20_000_000
    ticks = np.arange(0, 40) * period
    positions = np.linspace(0.0, 0.4, len(ticks))[:, None] * np.ones((1, 7))
    frame_times = np.arange(first_frame_ns, ticks[-1] + 1, 4 * period)
    frames = np.zeros((len(frame_times), size, size, 3), np.uint8)
    frames[:, 0, 0, 0] = np.arange(len(frame_times))  # each frame carries its own index
    return EpisodeRecording(
        joint_names=list(JOINTS), joint_times_ns=ticks, positions=positions, velocities=np.zeros_like(positions),
        goal_times_ns=np.zeros(0), goals=np.zeros((0, 3)), command_joint_names=list(JOINTS),
        command_times_ns=ticks, commands=positions + 0.01, images={"front": ImageSeries("front_optical_frame", frame_times, frames)},
    )


def test_image_windows_index_the_frames_once_and_start_at_the_first_frame():
    cfg = camera_config()
    rec = _recording(first_frame_ns=3 * 20_000_000)  # ticks 0-2 precede the first frame
    windows = windows_from_recording(rec, cfg, DataConfig(), "synthetic")
    assert len(windows) == 40 - 3
    frames = windows.frames["front"]
    assert frames.shape[0] == len(rec.images["front"].times_ns)  # every frame once, not one per window
    shown = windows.window_frames("front", np.arange(len(windows)))[:, 0, 0, 0]
    ticks = np.arange(3, 40)
    np.testing.assert_array_equal(shown, (ticks - 3) // 4)  # frame k stamped at tick 3 + 4k is in force until the next


def test_image_windows_round_trip_through_npz(tmp_path):
    cfg = camera_config()
    windows = windows_from_recording(_recording(0), cfg, DataConfig(), "synthetic")
    windows.save_npz(tmp_path / "w.npz")
    back = Windows.load_npz(tmp_path / "w.npz")
    back.check_shapes(cfg, "w.npz")
    np.testing.assert_array_equal(back.frames["front"], windows.frames["front"])
    np.testing.assert_array_equal(back.frame_index["front"], windows.frame_index["front"])


def test_wrong_frame_size_or_missing_camera_is_a_dataset_error():
    with pytest.raises(DatasetError, match="front.*frames are"):
        windows_from_recording(_recording(0, size=SIZE + 2), camera_config(), DataConfig(), "ep")
    rec = _recording(0)
    rec.images.clear()
    with pytest.raises(DatasetError, match="no frames of camera 'front'"):
        windows_from_recording(rec, camera_config(), DataConfig(), "ep")


# --------------------------------------------------------------------------- export and runtime


def _camera_checkpoint(path):
    from model_factory import make_checkpoint

    cfg = camera_config()
    low = [lo - 0.1 for lo in cfg.limits.lower]
    high = [hi + 0.1 for hi in cfg.limits.upper]
    return make_checkpoint(path, observation_range={"low": low, "high": high}, observation=cfg.observation,
                           guided_fields=cfg.guided_fields, image_channels=cfg.image_channels,
                           image_keypoints=cfg.image_keypoints, image_embed_dim=cfg.image_embed_dim)


@pytest.fixture(scope="module")
def camera_model(tmp_path_factory):
    from flow_policy_ros.export.onnx_export import export_checkpoint

    root = tmp_path_factory.mktemp("camera")
    ckpt = _camera_checkpoint(root / "cam.pt")
    _, rows = export_checkpoint(ckpt, root / "cam.onnx")
    return root / "cam.onnx", ckpt, rows


def _op_counts(path) -> collections.Counter:
    import onnx

    return collections.Counter(node.op_type for node in onnx.load(str(path)).graph.node)


def test_encoder_runs_once_per_chunk_whatever_the_step_count(tmp_path, camera_model):
    from flow_policy_ros.export.onnx_export import export_checkpoint

    _, ckpt, _ = camera_model
    counts = {}
    for steps in (2, 10):
        export_checkpoint(ckpt, tmp_path / f"n{steps}.onnx", steps=steps)
        counts[steps] = _op_counts(tmp_path / f"n{steps}.onnx")
    assert counts[2]["Conv"] == counts[10]["Conv"] == 4  # three convolutions + the keypoint projection
    assert counts[10]["Gemm"] + counts[10]["MatMul"] > counts[2]["Gemm"] + counts[2]["MatMul"]  # the steps did unroll
    assert not {"Loop", "If", "Scan"} & set(counts[10])


def test_camera_graph_contract_and_parity(camera_model):
    import onnx

    path, _, rows = camera_model
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    inputs = {i.name: i.type.tensor_type for i in model.graph.input}
    assert set(inputs) == {"observation", "noise", "guidance_scale", "image_front"}
    image = inputs["image_front"]
    assert image.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_value or d.dim_param for d in image.shape.dim][1:] == [SIZE, SIZE, 3]
    assert {(r.guidance_scale, r.batch) for r in rows} == {(w, b) for w in (0.0, 1.0, 2.0) for b in (1, 8)}
    assert max(r.max_abs_diff for r in rows) <= 1e-4


def test_onnx_policy_feeds_images_and_names_the_camera_on_bad_frames(camera_model):
    from flow_policy_ros.runtime.policy import load_policy

    path, _, _ = camera_model
    policy = load_policy(path)
    assert [f.name for f in policy.metadata.observation.image_features] == ["image.front"]
    obs = np.zeros(7, np.float32)
    noise = np.zeros((8, 7), np.float32)
    rng = np.random.default_rng(0)
    a, b = (rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(2))
    out_a = policy.predict(obs, noise, images={"image.front": a})
    assert out_a.shape == (8, 7)
    assert not np.allclose(out_a, policy.predict(obs, noise, images={"image.front": b}))  # the frame matters
    batch = policy.predict(np.zeros((2, 7), np.float32), np.zeros((2, 8, 7), np.float32),
                           images={"image.front": np.stack([a, b])})
    np.testing.assert_allclose(batch[0], out_a, atol=1e-5)
    cases = [({}, "camera 'front': no frame given"),
             ({"image.front": a[:-1]}, rf"camera 'front': frame shape \({SIZE - 1}, {SIZE}, 3\), expected \({SIZE}, {SIZE}, 3\)"),
             ({"image.front": a.astype(np.float32)}, "camera 'front': frame dtype float32, expected uint8"),
             ({"image.front": a, "image.side": a}, r"unknown image feature\(s\) \['image.side'\]")]
    for images, message in cases:
        with pytest.raises(ObservationError, match=message):
            policy.predict(obs, noise, images=images)


def test_infer_passes_the_request_frames(camera_model):
    from flow_policy_ros.runtime.decisions import InferenceRequest
    from flow_policy_ros.runtime.policy import infer, load_policy

    policy = load_policy(camera_model[0])
    frame = np.full((SIZE, SIZE, 3), 7, np.uint8)
    request = InferenceRequest(np.zeros(7, np.float32), 0, 0, 0, 0, None, images={"image.front": frame})
    result = infer(policy.predict, request)
    assert result.error is None and result.actions.shape == (8, 7)
    result = infer(policy.predict, InferenceRequest(np.zeros(7, np.float32), 0, 0, 0, 0, None))
    assert result.actions is None and "camera 'front'" in result.error


def test_bench_feeds_random_frames_to_a_camera_model(camera_model):
    from flow_policy_ros.cli.bench import bench_model

    path, ckpt, _ = camera_model
    result = bench_model(path, ckpt, calls=100)
    assert result["cameras"] == {"front": [SIZE, SIZE, 3]}
    assert result["onnxruntime"]["p50_ms"] > 0 and result["torch_eager"]["p50_ms"] > 0
    assert result["max_abs_diff_vs_torch"] <= 1e-4  # the same frames went to both engines
