"""The observation density of a camera model (issue 24): joint readings + the policy's own embedding,
exported in the camera graph, calibrated, exposed by OnnxPolicy.

A small seeded camera policy (random weights, 24 x 24 frames) and a synthetic data set in which the
frame and the joints depend on the same latent (a bright square's position; the joints follow it):
real components throughout (``fit_on_windows``, ``export_checkpoint``, ONNX Runtime).
"""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch

from flow_policy_ros.contract import IIWA_JOINT_NAMES, ObservationSpec, image_feature
from flow_policy_ros.errors import UsageError
from flow_policy_ros.policy.camera_density import CameraObservationDensity, EmbeddingWhitening
from flow_policy_ros.policy.config import DensityTrainConfig, PolicyConfig
from flow_policy_ros.policy.dataset import Windows

SIZE = 24
EPISODES, WINDOWS_PER_EPISODE = 60, 10
HORIZON = 8


def camera_config(size: tuple[int, int] = (SIZE, SIZE)) -> PolicyConfig:
    spec = ObservationSpec(IIWA_JOINT_NAMES, ("joint_positions", "image.front"), (image_feature("front", *size),))
    # embed 16 from 4 keypoints (8 coordinates): the embedding spans at most 8 dimensions
    return PolicyConfig(observation=spec, guided_fields=("image.front",), hidden_dim=32, num_layers=1, horizon=HORIZON,
                        solver_steps=4, image_channels=(4, 4, 8), image_keypoints=4, image_embed_dim=16)


def synthetic_windows(seed: int, episodes: int = EPISODES, joints_follow_frame: bool = True,
                      size: tuple[int, int] = (SIZE, SIZE)) -> Windows:
    """Per episode a latent c in [0, 1]^2: a bright 5x5 square at pixel position 3 + 14 c; the 7 joints
    are (c0, c1, c0 + c1, c0 - c1, ...) + small noise per window (``joints_follow_frame``), or the
    latent of another episode (False: in-range joints that contradict their frame)."""
    rng = np.random.default_rng(seed)
    latent = rng.uniform(0.0, 1.0, size=(episodes, 2))
    frames = np.full((episodes, *size, 3), 40, np.uint8)
    for e, (a, b) in enumerate(latent):
        r, c = 3 + int(round((size[0] - 10) * a)), 3 + int(round((size[1] - 10) * b))
        frames[e, r:r + 5, c:c + 5] = (220, 30, 30)
    source = latent if joints_follow_frame else latent[rng.permutation(episodes)]
    base = np.stack([source[:, 0], source[:, 1], source.sum(1), source[:, 0] - source[:, 1],
                     source[:, 0] ** 2, source[:, 1] ** 2, source[:, 0] * source[:, 1]], axis=1)
    obs = np.repeat(base, WINDOWS_PER_EPISODE, axis=0) + rng.normal(0.0, 0.01, size=(episodes * WINDOWS_PER_EPISODE, 7))
    index = np.repeat(np.arange(episodes), WINDOWS_PER_EPISODE)
    return Windows(obs, np.zeros((len(obs), HORIZON, 7)), index, {}, {"front": frames}, {"front": index})


@pytest.fixture(scope="module")
def camera_density_model(tmp_path_factory):
    """(onnx with density, onnx without, checkpoint path, held-out windows) of the tiny camera policy."""
    return make_camera_density_model(tmp_path_factory.mktemp("camdensity"))


def make_camera_density_model(root, size: tuple[int, int] = (SIZE, SIZE)):
    """Write ``root``/with.onnx (density, RK4 x 2, alpha 0.05 on 60 held-out episodes) and without.onnx of a
    seeded tiny camera policy; returns (with, without, checkpoint path, held-out windows)."""
    from model_factory import make_checkpoint

    from flow_policy_ros.export.density_export import DensityExport
    from flow_policy_ros.export.onnx_export import export_checkpoint
    from flow_policy_ros.policy.checkpoint import load_checkpoint, save_checkpoint
    from flow_policy_ros.policy.density_training import fit_on_windows

    torch.set_num_threads(1)
    cfg = camera_config(size)
    low, high = [lo - 0.1 for lo in cfg.limits.lower], [hi + 0.1 for hi in cfg.limits.upper]
    path = make_checkpoint(root / "cam.pt", observation_range={"low": low, "high": high},
                           observation=cfg.observation, guided_fields=cfg.guided_fields,
                           image_channels=cfg.image_channels, image_keypoints=cfg.image_keypoints,
                           image_embed_dim=cfg.image_embed_dim)
    ckpt = load_checkpoint(path)
    # a sharp spatial softmax (temperature 0.02): the random encoder's keypoints then follow the bright
    # square across the frame, as a trained encoder's follow the cube; at temperature 1 the embedding
    # varies by ~1e-3 of its size and float32 rounding dominates its narrow directions
    for state in (ckpt.model_state, ckpt.ema_state):
        state["image_encoders.front.keypoints.log_temperature"].fill_(np.log(0.02))
    train = synthetic_windows(0, episodes=400, size=size)
    ckpt.density = fit_on_windows(train, np.ones(len(train), bool), ckpt,
                                  DensityTrainConfig(enabled=True, steps=1000, hidden_dim=64))
    save_checkpoint(path, ckpt)
    held = synthetic_windows(1, size=size)
    held.save_npz(root / "held.npz")
    export_checkpoint(path, root / "with.onnx", density=DensityExport(root / "held.npz", alpha=0.05, steps=2))
    export_checkpoint(path, root / "without.onnx")
    return root / "with.onnx", root / "without.onnx", path, held


def _session(path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def test_whitening_keeps_the_subspace_the_last_linear_layer_can_reach():
    rng = np.random.default_rng(0)
    keypoints = rng.normal(size=(2000, 8)) * rng.uniform(0.1, 2.0, size=8)
    embeddings = keypoints @ rng.normal(size=(16, 8)).T + rng.normal(size=16)  # rank 8 in 16 dimensions
    whitening = EmbeddingWhitening.fit(embeddings)
    assert whitening.dim == 8
    u = whitening.apply(embeddings)
    np.testing.assert_allclose(u.mean(axis=0), 0.0, atol=1e-9)
    np.testing.assert_allclose(np.cov(u, rowvar=False), np.eye(8), atol=1e-8)
    with pytest.raises(ValueError, match="do not vary"):
        EmbeddingWhitening.fit(np.ones((10, 4)))


def test_checkpoint_holds_a_camera_density_that_round_trips(camera_density_model):
    from flow_policy_ros.policy.checkpoint import load_checkpoint
    from flow_policy_ros.policy.density_training import density_from_checkpoint

    _, _, path, held = camera_density_model
    ckpt = load_checkpoint(path)
    density = density_from_checkpoint(ckpt)
    assert isinstance(density, CameraObservationDensity)
    assert density.cameras == ("front",) and density.obs_dim == 7
    assert 1 <= density.whitening.dim <= 8  # 4 keypoints: at most 8 directions of the 16-d embedding
    assert ckpt.density["training"]["embedding_directions"] == density.whitening.dim
    again = CameraObservationDensity.from_dict(density.to_dict())
    obs, emb = torch.randn(5, 7), torch.randn(5, 16)
    assert torch.equal(density.log_prob(obs, emb, 2, "rk4"), again.log_prob(obs, emb, 2, "rk4"))


def test_camera_graph_has_the_score_output_with_parity_and_one_encoder(camera_density_model):
    import onnx

    from flow_policy_ros.export.onnx_export import sampler_from_checkpoint
    from flow_policy_ros.policy.checkpoint import load_checkpoint
    from flow_policy_ros.policy.density_training import density_from_checkpoint

    with_path, without_path, ckpt_path, held = camera_density_model
    model = onnx.load(str(with_path))
    assert [o.name for o in model.graph.output] == ["actions", "observation_log_likelihood"]
    ops = collections.Counter(n.op_type for n in model.graph.node)
    assert not {"Loop", "If", "Scan"} & set(ops)
    assert ops["Conv"] == 4  # the encoder runs once for both outputs
    rows = np.arange(0, len(held), 37)
    obs = held.observations[rows]
    frames = held.frames["front"][held.frame_index["front"][rows]]
    (scores,) = _session(with_path).run(["observation_log_likelihood"], {
        "observation": obs, "noise": np.zeros((len(rows), HORIZON, 7), np.float32),
        "guidance_scale": np.ones(1, np.float32), "image_front": frames})
    ckpt = load_checkpoint(ckpt_path)
    density, sampler = density_from_checkpoint(ckpt), sampler_from_checkpoint(ckpt)
    with torch.no_grad():
        observation = torch.from_numpy(obs)
        embedding = sampler.condition_input(observation, {"front": torch.from_numpy(frames)})[:, 7:]
        expected = density.log_prob(observation, embedding, 2, "rk4").double().numpy()
    assert scores.shape == (len(rows),) and scores.dtype == np.float32
    assert np.max(np.abs(scores - expected) / np.maximum(1.0, np.abs(expected))) <= 1e-4


def test_the_policy_part_is_bit_identical_to_the_graph_without_the_density(camera_density_model):
    with_path, without_path, _, _ = camera_density_model
    rng = np.random.default_rng(3)
    feeds = {"observation": rng.normal(0, 0.5, (8, 7)).astype(np.float32),
             "noise": rng.normal(size=(8, HORIZON, 7)).astype(np.float32),
             "guidance_scale": np.array([1.5], np.float32),
             "image_front": rng.integers(0, 256, (8, SIZE, SIZE, 3), dtype=np.uint8)}
    (with_actions,) = _session(with_path).run(["actions"], feeds)
    (without_actions,) = _session(without_path).run(["actions"], feeds)
    assert np.array_equal(with_actions, without_actions)


def test_threshold_is_the_conformal_quantile_of_held_out_episode_minima(camera_density_model, tmp_path):
    from flow_policy_ros.export.density_export import DensityExport, graph_scores, window_images
    from flow_policy_ros.export.onnx_export import export_checkpoint
    from flow_policy_ros.policy.density_training import episode_minima
    from flow_policy_ros.runtime.policy import load_policy

    with_path, _, ckpt_path, held = camera_density_model
    density = load_policy(with_path).metadata.density
    assert (density.solver, density.steps) == ("rk4", 2)
    assert density.model["embedding_directions"] >= 1 and density.model["cameras"] == ["front"]
    cal = density.calibration
    assert (cal["n"], cal["alpha"], cal["windows"]) == (EPISODES, 0.05, EPISODES * WINDOWS_PER_EPISODE)
    k = int(np.floor(0.05 * (EPISODES + 1)))
    assert cal["k"] == k
    scores = graph_scores(_session(with_path), held.observations, images=window_images(held))
    assert density.threshold == pytest.approx(np.sort(episode_minima(scores, held.episode_index))[k - 1], abs=0.0)
    small = synthetic_windows(2, episodes=10)
    small.save_npz(tmp_path / "small.npz")
    with pytest.raises(UsageError, match="10 held-out episodes are too few for alpha 0.05"):
        export_checkpoint(ckpt_path, tmp_path / "x.onnx", density=DensityExport(tmp_path / "small.npz", alpha=0.05, steps=2))
    assert not (tmp_path / "x.onnx").exists()


def test_onnx_policy_exposes_the_camera_models_score(camera_density_model):
    from flow_policy_ros.export.density_export import graph_scores
    from flow_policy_ros.runtime.policy import load_policy

    with_path, without_path, _, held = camera_density_model
    policy = load_policy(with_path)
    assert policy.density_threshold == policy.metadata.density.threshold
    frame = held.frames["front"][held.frame_index["front"][5]]
    actions, score = policy.predict_with_score(held.observations[5], images={"image.front": frame})
    assert actions.shape == (HORIZON, 7) and isinstance(score, float)
    expected = graph_scores(_session(with_path), held.observations[5:6], images={"image_front": frame[None]})[0]
    assert score == pytest.approx(expected, rel=1e-6)
    batch = policy.predict(held.observations[:3], images={"image.front": held.frames["front"][held.frame_index["front"][:3]]})
    assert batch.shape == (3, HORIZON, 7) and np.asarray(policy.last_log_likelihood).shape == (3,)
    plain = load_policy(without_path)
    plain.predict(held.observations[5], images={"image.front": frame})
    assert plain.last_log_likelihood is None and plain.density_threshold is None


def test_the_score_sees_both_the_frame_and_the_joints(camera_density_model):
    """The density is over the joints AND the embedding: a held-out episode's minimum score drops when
    its frames are replaced by an unseen image (uniform noise, joints unchanged) and when one joint
    reading is 0.5 rad off (frames unchanged)."""
    from flow_policy_ros.export.density_export import graph_scores, window_images

    with_path, _, _, _ = camera_density_model
    session = _session(with_path)

    def minima(windows: Windows) -> np.ndarray:
        scores = graph_scores(session, windows.observations, images=window_images(windows))
        return np.array([scores[windows.episode_index == e].min() for e in range(EPISODES)])


    held = synthetic_windows(5)
    noise_frames = synthetic_windows(5)
    noise_frames.frames["front"] = np.random.default_rng(6).integers(0, 256, noise_frames.frames["front"].shape, dtype=np.uint8)
    offset = synthetic_windows(5)
    offset.observations[:, 2] += 0.5
    normal = minima(held)
    assert np.mean(minima(noise_frames) < normal) >= 0.95  # per episode: the same joints, another frame
    assert np.mean(minima(offset) < normal) >= 0.95  # the same frames, one joint off
    assert np.median(normal - minima(noise_frames)) > 10.0  # nats: an unseen image is far out


def test_train_density_cli_gives_a_camera_checkpoint_its_density_and_keeps_the_policy(camera_density_model, tmp_path):
    from flow_policy_ros.cli import main
    from flow_policy_ros.policy.checkpoint import load_checkpoint, save_checkpoint

    with_path, _, ckpt_path, _ = camera_density_model
    plain = load_checkpoint(ckpt_path)
    plain.density = None
    save_checkpoint(tmp_path / "plain.pt", plain)
    data = with_path.parent / "held.npz"  # windows with frames
    assert main(["train-density", str(tmp_path / "plain.pt"), str(data), "--out", str(tmp_path / "d.pt"),
                 "--steps", "20", "--hidden-dim", "8"]) == 0
    trained = load_checkpoint(tmp_path / "d.pt")
    assert trained.density["model"]["kind"] == "camera_embedding"
    assert trained.density["training"]["windows"] == EPISODES * WINDOWS_PER_EPISODE
    assert all(torch.equal(trained.ema_state[k], plain.ema_state[k]) for k in plain.ema_state)
    assert main(["train-density", str(tmp_path / "plain.pt"), "unused", "--copy-from", str(tmp_path / "d.pt"),
                 "--out", str(tmp_path / "c.pt")]) == 2  # a camera density is tied to its encoder: not copied


def test_a_camera_density_of_other_cameras_is_refused_at_load(camera_density_model, tmp_path):
    from flow_policy_ros.errors import CheckpointError
    from flow_policy_ros.policy.checkpoint import load_checkpoint, save_checkpoint

    _, _, ckpt_path, _ = camera_density_model
    ckpt = load_checkpoint(ckpt_path)
    ckpt.density["model"]["cameras"] = ["side"]
    save_checkpoint(tmp_path / "bad.pt", ckpt)
    with pytest.raises(CheckpointError, match=r"camera density of cameras \['side'\].*the policy has cameras \['front'\]"):
        load_checkpoint(tmp_path / "bad.pt")


def test_train_with_density_enabled_fits_a_camera_density_on_the_training_episodes_only(camera_density_model, tmp_path):
    """``flow-policy train``'s hook (``attach_to_run``) on a camera run: the validation episodes of the
    checkpoint's split are left out, and the density is the camera kind."""
    from dataclasses import replace

    from flow_policy_ros.policy.checkpoint import load_checkpoint, save_checkpoint
    from flow_policy_ros.policy.density_training import attach_to_run

    with_path, _, ckpt_path, _ = camera_density_model
    ckpt = load_checkpoint(ckpt_path)
    ckpt.density = None
    ckpt.config = replace(ckpt.config, density=DensityTrainConfig(enabled=True, steps=20, hidden_dim=8))
    ckpt.data_summary = {**ckpt.data_summary, "split": {"val_episode_index": [0, 1, 2]}}
    save_checkpoint(tmp_path / "run.pt", ckpt)
    attach_to_run(tmp_path / "run.pt", with_path.parent / "held.npz")
    density = load_checkpoint(tmp_path / "run.pt").density
    assert density["model"]["kind"] == "camera_embedding"
    assert density["training"]["episodes"] == EPISODES - 3
    assert density["training"]["windows"] == (EPISODES - 3) * WINDOWS_PER_EPISODE
