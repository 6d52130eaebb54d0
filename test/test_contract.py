"""The observation spec: named features, their validation, defaults, and the shipped models' specs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from flow_policy_ros.contract import (
    DEFAULT_FEATURES,
    IIWA_JOINT_NAMES,
    VECTOR_MESSAGE_TYPES,
    FeatureSpec,
    ModelIO,
    ObservationSpec,
    goal_feature,
    image_feature,
)
from flow_policy_ros.errors import ConfigError
from flow_policy_ros.policy.config import _build, to_dict
from flow_policy_ros.runtime.observation import VECTOR_READERS, observation_vector

MODELS = Path(__file__).resolve().parents[1] / "models"


def test_default_spec_is_the_round_2_layout() -> None:
    spec = ObservationSpec()
    assert spec.fields == ("joint_positions", "joint_velocities", "goal")
    assert spec.obs_dim == 17
    assert spec.field_slices() == {"joint_positions": slice(0, 7), "joint_velocities": slice(7, 14), "goal": slice(14, 17)}
    assert spec.feature("goal") == goal_feature()
    assert spec.feature("joint_positions").value_names == IIWA_JOINT_NAMES
    assert spec.state_names()[0] == "lbr_iiwa_joint_1.pos" and spec.state_names()[-1] == "goal.z"


def test_features_fill_in_defaults_and_round_trip() -> None:
    pose = FeatureSpec("ee_pose", "vector", "ee_pose", "geometry_msgs/msg/PoseStamped", 0.05, 7, frame_id="base")
    spec = ObservationSpec(joint_names=("a", "b"), fields=("ee_pose", "joint_positions", "image.wrist"),
                           features=[pose.to_json(), image_feature("wrist", 48, 64)])
    assert [f.kind for f in spec.features] == ["vector", "joint_positions", "image"]
    assert spec.obs_dim == 9 and spec.field_slices() == {"ee_pose": slice(0, 7), "joint_positions": slice(7, 9)}
    assert spec.image_features[0].camera == "wrist" and spec.image_features[0].lerobot_key == "observation.images.wrist"
    assert ObservationSpec(**json.loads(json.dumps(spec.to_json()))) == spec  # metadata form
    assert _build(ObservationSpec, to_dict(spec), "observation") == spec  # training config form
    features = {"ee_pose": np.arange(7.0), "joint_positions": [10, 11], "image.wrist": np.zeros((48, 64, 3), np.uint8)}
    np.testing.assert_array_equal(observation_vector(spec, features), [0, 1, 2, 3, 4, 5, 6, 10, 11])


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"fields": ("joint_positions", "force")}, "unknown field 'force'"),
    ({"features": [goal_feature()], "fields": ("joint_positions",)}, "'goal' is not in observation.fields"),
    ({"fields": ("image.cam",), "features": [image_feature("cam", 8, 8)]}, "at least one low-dimensional feature"),
    ({"features": [{"name": "goal", "colour": "red"}]}, "unknown key(s) ['colour']"),
])
def test_bad_specs_name_what_is_wrong(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        ObservationSpec(**kwargs)


@pytest.mark.parametrize(("args", "message"), [
    (("goal", "vector", "goal", "geometry_msgs/msg/PointStamped", None, 4), "carries 3 values, size says 4"),
    (("goal", "vector", "goal", "sensor_msgs/msg/Imu", None, 3), "not a vector message type"),
    (("image.c", "image", "c", "sensor_msgs/msg/Image", None, 0, (), "", False, (8, 8, 3)), "needs max_age_s"),
    (("image.c", "image", "c", "sensor_msgs/msg/Image", 0.1, 0, (), "", False, (8, 8)), "image_shape must be"),
    (("joint_positions", "joint_velocities", "joint_states", "sensor_msgs/msg/JointState"), "must be named"),
    (("x", "vector", "", "std_msgs/msg/Float64MultiArray", None, 2), "topic must not be empty"),
])
def test_bad_features_name_what_is_wrong(args: tuple, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        FeatureSpec(*args)


def test_every_vector_message_type_has_a_reader() -> None:
    assert set(VECTOR_READERS) == set(VECTOR_MESSAGE_TYPES)


@pytest.mark.parametrize("path", sorted(MODELS.glob("*.onnx")), ids=lambda p: p.stem)
def test_shipped_models_metadata_and_checkpoints_read_as_named_features(path: Path) -> None:
    """The models shipped before named features (metadata 'fields' only) read with the default specs."""
    from flow_policy_ros.policy.checkpoint import load_checkpoint
    from flow_policy_ros.runtime.onnx_policy import OnnxPolicy

    spec = OnnxPolicy(path, warmup=0).metadata.observation
    if "goal" in spec.fields:  # the state models: written before named features, read with the default specs
        assert spec.feature("goal") == DEFAULT_FEATURES["goal"]
        assert spec.vector_features == (goal_feature(),) and spec.obs_dim == 3 + 7 * len(spec.joint_kinds)
    else:  # the camera model: no goal; its camera is a feature of its own, outside the vector
        assert [f.kind for f in spec.image_features] == ["image"] and spec.obs_dim == 7 * len(spec.joint_kinds)
    ckpt = load_checkpoint(path.with_suffix(".pt"))
    assert ckpt.config.policy.observation == spec
    assert ModelIO(observation=spec.to_json()).observation == spec
