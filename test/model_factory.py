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


def make_checkpoint(path: Path, seed: int = 0, objective: str = "flow", **policy_overrides: Any) -> Path:
    """Save a checkpoint of a seeded random network; small by default (hidden 32, 1 layer, H 8)."""
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
                   data_summary={"source": "synthetic (test/model_factory.py)", "config": to_dict(policy)["horizon"]}),
    )
    return path


def make_tiny_model(path: Path, seed: int = 0, **policy_overrides: Any) -> Path:
    """Export a small real policy to ``path`` (.onnx) via the package's exporter."""
    from flow_policy_ros.export.onnx_export import export_checkpoint

    path = Path(path)
    ckpt = make_checkpoint(path.with_suffix(".pt"), seed=seed, **policy_overrides)
    export_checkpoint(ckpt, path)
    return path
