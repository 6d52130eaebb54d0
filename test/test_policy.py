"""runtime/policy.py: load_policy picks the engine, ChunkPolicy is what callers see, infer answers requests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from model_factory import make_tiny_model

from flow_policy_ros.errors import InvalidOutputError, ModelFileError, ObservationError
from flow_policy_ros.runtime.controller import InferenceRequest
from flow_policy_ros.runtime.onnx_policy import CPU, OnnxPolicy
from flow_policy_ros.runtime.policy import ChunkPolicy, infer, load_policy

MODELS = Path(__file__).resolve().parents[1] / "models"


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("pol") / "tiny.onnx", seed=1)


def _request(obs_dim: int, w: float | None = 1.0, tick: int = 5) -> InferenceRequest:
    return InferenceRequest(np.full(obs_dim, 0.1, np.float32), tick, received_ns=40, stamp_ns=30, generation=3,
                            guidance_scale=w)


def test_load_policy_gives_a_chunk_policy_with_the_same_stream_as_the_engine(model_path):
    policy = load_policy(model_path, providers=[CPU], seed=7, warmup=1)
    assert isinstance(policy, ChunkPolicy) and isinstance(policy, OnnxPolicy)
    direct = OnnxPolicy(model_path, providers=[CPU], seed=7, warmup=1)
    obs = np.zeros(policy.metadata.obs_dim, np.float32)
    assert np.array_equal(policy.predict(obs), direct.predict(obs))


def test_load_policy_refuses_an_unknown_file_type_naming_it(tmp_path):
    path = tmp_path / "policy.engine"
    path.write_bytes(b"x")
    with pytest.raises(ModelFileError, match=r"policy\.engine: unknown model file type '\.engine'"):
        load_policy(path)


def test_reseed_restarts_the_noise_stream_as_a_fresh_load_with_that_seed(model_path):
    """The in-process loop reseeds per episode; the draws must be those of a policy loaded with the seed."""
    policy = load_policy(model_path, providers=[CPU], seed=0, warmup=1)
    obs = np.zeros(policy.metadata.obs_dim, np.float32)
    policy.predict(obs)  # advance the stream
    policy.reseed(123)
    fresh = OnnxPolicy(model_path, providers=[CPU], seed=123, warmup=1)
    assert np.array_equal(policy.sample_noise(), np.random.default_rng(123).standard_normal(
        (policy.metadata.horizon, policy.metadata.action_dim)).astype(np.float32))
    policy.reseed(123)
    assert np.array_equal(policy.predict(obs), fresh.predict(obs))


def test_images_are_refused_by_a_model_without_image_inputs(model_path):
    policy = load_policy(model_path, providers=[CPU], warmup=1)
    with pytest.raises(ObservationError, match=r"no image inputs, got images \['wrist'\]"):
        policy.predict(np.zeros(policy.metadata.obs_dim, np.float32), images={"wrist": np.zeros((4, 4, 3), np.uint8)})


def test_infer_returns_the_chunk_with_the_requests_bookkeeping(model_path):
    policy = load_policy(model_path, providers=[CPU], seed=2, warmup=1)
    request = _request(policy.metadata.obs_dim)
    result = infer(policy.predict, request)
    policy.reseed(2)
    expected = policy.predict(request.observation, guidance_scale=1.0)
    assert (result.tick, result.received_ns, result.stamp_ns, result.generation) == (5, 40, 30, 3)
    assert result.error is None and not result.invalid_output and result.latency_s > 0
    assert result.actions.dtype == np.float64 and np.array_equal(result.actions, expected.astype(np.float64))


def test_infer_marks_an_invalid_output_and_holds_or_raises_on_any_other_failure():
    def invalid(observation, guidance_scale):
        raise InvalidOutputError("m.onnx: output 'actions' has 2 NaN/inf value(s) of 56")

    def broken(observation, guidance_scale):
        raise RuntimeError("device lost\ndetails")

    result = infer(invalid, _request(3), hold_on_error=False)  # an invalid output is a result even then
    assert result.invalid_output and result.actions is None and "NaN/inf" in result.error
    held = infer(broken, _request(3))
    assert not held.invalid_output and held.actions is None and held.error == "RuntimeError: device lost details"
    with pytest.raises(RuntimeError, match="device lost"):
        infer(broken, _request(3), hold_on_error=False)


def test_infer_passes_the_prefix_only_when_there_is_one():
    seen: list[dict] = []

    def predict(observation, **kwargs):
        seen.append(kwargs)
        return np.zeros((4, 7), np.float32)

    infer(predict, _request(3, w=None))
    prefix = np.ones((4, 7))
    infer(predict, InferenceRequest(np.zeros(3, np.float32), 1, 0, 0, 0, 2.0, prefix, 2))
    assert seen[0] == {"guidance_scale": None}
    assert seen[1]["prefix_length"] == 2 and seen[1]["prefix_actions"] is prefix and seen[1]["guidance_scale"] == 2.0
