"""Real (untrained) policies for tests: a seeded network with non-trivial weights, real
statistics and a real export through ``flow_policy_ros.export.onnx_export``. Nothing here is a mock."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from flow_policy_ros.policy.checkpoint import Checkpoint, save_checkpoint
from flow_policy_ros.policy.config import ExperimentConfig, PolicyConfig, TrainConfig, to_dict
from flow_policy_ros.policy.model import VelocityNet
from flow_policy_ros.policy.normalization import NormalizationStats


def wide_observation_range(policy: PolicyConfig) -> dict[str, list[float]]:
    """A training range that covers everything an iiwa can observe: joint positions over their
    limits (+0.1 rad), velocities ±3 rad/s, goals in a 4 m box. The tiny models' statistics come
    from random numbers, so their real range means nothing; with this one the out-of-distribution
    guard only trips on inputs no arm produces (tests of the guard pass a narrow range)."""
    limits = dict(zip(policy.action_joint_names, zip(policy.limits.lower, policy.limits.upper)))
    low, high = [], []
    for name in policy.observation.fields:
        if name == "goal":
            low += [-2.0, -2.0, -2.0]
            high += [2.0, 2.0, 2.0]
            continue
        for joint in policy.observation.joint_names:
            lo, hi = limits.get(joint, (-3.1, 3.1)) if name == "joint_positions" else (-3.0, 3.0)
            low.append(lo - 0.1 if name == "joint_positions" else lo)
            high.append(hi + 0.1 if name == "joint_positions" else hi)
    return {"low": low, "high": high}


def make_checkpoint(path: Path, seed: int = 0, objective: str = "flow",
                    observation_range: dict[str, list[float]] | None = None, **policy_overrides: Any) -> Path:
    """Save a checkpoint of a seeded random network; small by default (hidden 32, 1 layer, H 8).

    ``observation_range`` ({'low', 'high'}, obs_dim each) is the training range the export puts in
    the metadata; default :func:`wide_observation_range`.
    """
    defaults: dict[str, Any] = {"hidden_dim": 32, "num_layers": 1, "horizon": 8, "euler_steps": 4}
    defaults.update(policy_overrides)
    policy = PolicyConfig(**defaults)
    config = ExperimentConfig(policy=policy, train=TrainConfig(objective=objective, seed=seed))
    torch.manual_seed(seed)
    net = VelocityNet(policy)
    with torch.no_grad():  # the output layer starts at zero; give it weights so outputs depend on inputs
        net.output_proj.weight.normal_(0.0, 0.2)
        net.null_condition.normal_(0.0, 1.0)
    rng = np.random.default_rng(seed)
    lower, upper = np.array(policy.limits.lower), np.array(policy.limits.upper)
    actions = rng.uniform(lower * 0.5, upper * 0.5, size=(64, policy.horizon, policy.action_dim))
    observations = rng.normal(0.0, 0.5, size=(64, policy.obs_dim))
    stats = NormalizationStats.fit(observations, actions, policy.normalization)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    save_checkpoint(
        path,
        Checkpoint(config=config, stats=stats, model_state=state, ema_state=state, step=0,
                   data_summary={"source": "synthetic (test/model_factory.py)", "config": to_dict(policy)["horizon"],
                                 "observation_range": observation_range or wide_observation_range(policy)}),
    )
    return path


def make_tiny_model(path: Path, seed: int = 0, observation_range: dict[str, list[float]] | None = None,
                    **policy_overrides: Any) -> Path:
    """Export a small real policy to ``path`` (.onnx) via the package's exporter."""
    from flow_policy_ros.export.onnx_export import export_checkpoint

    path = Path(path)
    ckpt = make_checkpoint(path.with_suffix(".pt"), seed=seed, observation_range=observation_range, **policy_overrides)
    export_checkpoint(ckpt, path)
    return path
