"""Config validation names the offending value; JSON/YAML round trips are exact."""

from __future__ import annotations

import json

import pytest
import yaml

from flow_policy_ros.policy.config import ConfigError, ExperimentConfig, ObservationSpec, PolicyConfig, TrainConfig


def test_defaults_describe_the_iiwa_policy():
    cfg = PolicyConfig()
    assert (cfg.horizon, cfg.action_dim, cfg.solver_steps, cfg.obs_dim) == (16, 7, 10, 17)
    assert cfg.observation.field_slices() == {"joint_positions": slice(0, 7), "joint_velocities": slice(7, 14), "goal": slice(14, 17)}
    assert cfg.guided_mask() == [False] * 14 + [True] * 3


def test_json_and_yaml_round_trip_exactly(tmp_path):
    cfg = ExperimentConfig(policy=PolicyConfig(horizon=8, p_uncond=0.2), train=TrainConfig(steps=123, seed=9))
    assert ExperimentConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    assert ExperimentConfig.from_yaml(path) == cfg


@pytest.mark.parametrize(
    "policy, message",
    [
        ({"horizon": 0}, "horizon must be >= 1, got 0"),
        ({"p_uncond": 1.0}, r"p_uncond must be in \[0, 1\), got 1.0"),
        ({"normalization": "zscore"}, "normalization must be one of"),
        ({"guided_fields": ["goal", "joint_torques"]}, "'joint_torques' is not an observation field"),
        ({"action_joint_names": ["a", "a"]}, "duplicates"),
        ({"observation": {"fields": ["goal", "color"]}}, "unknown field 'color'"),
        ({"limits": {"lower": [0.0], "upper": [1.0], "velocity": [1.0]}}, "limits cover 1 joints but action_joint_names has 7"),
        ({"hidden": 3}, r"unknown key\(s\) \['hidden'\]"),
    ],
)
def test_validation_messages_name_the_value(policy, message):
    with pytest.raises(ConfigError, match=message):
        ExperimentConfig.from_dict({"policy": policy})


def test_yaml_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        ExperimentConfig.from_yaml(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("policy: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        ExperimentConfig.from_yaml(bad)
    typo = tmp_path / "typo.yaml"
    typo.write_text("trian: {steps: 3}\n")
    with pytest.raises(ConfigError, match=r"typo.yaml: config: unknown key\(s\) \['trian'\]"):
        ExperimentConfig.from_yaml(typo)


def test_observation_spec_sizes():
    spec = ObservationSpec(joint_names=("a", "b"), fields=("goal", "joint_velocities"))
    assert spec.obs_dim == 5
    assert spec.field_slices() == {"goal": slice(0, 3), "joint_velocities": slice(3, 5)}


def test_relative_action_frame_needs_observed_positions_of_the_action_joints():
    cfg = PolicyConfig()
    assert cfg.action_frame == "relative" and cfg.action_reference_indices() == list(range(7))
    spec = ObservationSpec(fields=("joint_velocities", "goal"))
    with pytest.raises(ConfigError, match="action_frame 'relative' needs the positions"):
        PolicyConfig(observation=spec)
    assert PolicyConfig(observation=spec, action_frame="absolute").action_reference_indices() == []
    reordered = ObservationSpec(joint_names=tuple(reversed(cfg.action_joint_names)), fields=("goal", "joint_positions"))
    assert PolicyConfig(observation=reordered).action_reference_indices() == [3 + 6 - i for i in range(7)]


def test_the_old_name_of_solver_steps_still_reads_and_both_names_are_refused():
    """``euler_steps`` was the step count of any solver; configs and checkpoints written before the
    rename carry it."""
    old = ExperimentConfig.from_dict({"policy": {"euler_steps": 3}})
    assert old.policy.solver_steps == 3 and "euler_steps" not in old.to_dict()["policy"]
    assert ExperimentConfig.from_dict(old.to_dict()) == old
    with pytest.raises(ConfigError, match=r"policy: both 'euler_steps' \(its old name\) and 'solver_steps' given"):
        ExperimentConfig.from_dict({"policy": {"euler_steps": 3, "solver_steps": 3}})
