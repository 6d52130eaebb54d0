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


#: The tiny models' default training action range (rad, every joint): their untrained outputs reach
#: several rad beyond the joint limits, so with this range the output range guard only trips on
#: outputs no trained model produces (tests of the guard pass a narrow range).
WIDE_ACTION_RANGE = 50.0


def make_checkpoint(path: Path, seed: int = 0, objective: str = "flow",
                    observation_range: dict[str, list[float]] | None = None,
                    action_range: dict[str, list[float]] | None = None, **policy_overrides: Any) -> Path:
    """Save a checkpoint of a seeded random network; small by default (hidden 32, 1 layer, H 8).

    ``observation_range`` ({'low', 'high'}, obs_dim each) is the training range the export puts in
    the metadata; default :func:`wide_observation_range`. ``action_range`` ({'low', 'high'}, one
    per action joint, rad) the training action range (data summary); default ±WIDE_ACTION_RANGE;
    ``{}``: none recorded (the export derives it from the normalization statistics).
    """
    defaults: dict[str, Any] = {"hidden_dim": 32, "num_layers": 1, "horizon": 8, "solver_steps": 4}
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
                                 "observation_range": observation_range or wide_observation_range(policy),
                                 **_action_range_entry(action_range, policy.action_dim)}),
    )
    return path


def _action_range_entry(action_range: dict[str, list[float]] | None, action_dim: int) -> dict[str, Any]:
    if action_range is None:
        return {"action_range": {"low": [-WIDE_ACTION_RANGE] * action_dim, "high": [WIDE_ACTION_RANGE] * action_dim}}
    return {"action_range": action_range} if action_range else {}


def make_tiny_model(path: Path, seed: int = 0, observation_range: dict[str, list[float]] | None = None,
                    action_range: dict[str, list[float]] | None = None, **policy_overrides: Any) -> Path:
    """Export a small real policy to ``path`` (.onnx) via the package's exporter (``action_range``:
    see :func:`make_checkpoint`)."""
    from flow_policy_ros.export.onnx_export import export_checkpoint

    path = Path(path)
    ckpt = make_checkpoint(path.with_suffix(".pt"), seed=seed, observation_range=observation_range,
                           action_range=action_range, **policy_overrides)
    export_checkpoint(ckpt, path)
    return path


def with_broken_output(src: Path, dst: Path, kind: str, index: int = 0, threshold: float = 0.0, value: float = 3.0,
                       otherwise: list[float] | None = None) -> Path:
    """Copy the real exported model ``src`` to ``dst`` with its output changed by a few onnx.helper nodes.

    kind: 'nan' (every output NaN), 'nan_if_negative' (NaN when observation[index] < threshold, finite otherwise),
    'short' (only the first H/2 rows; the declared shape stays symbolic), 'declared_short' (the output
    declared as [B, H/2, A] while the metadata says H), 'constant' (every action ``value`` rad, finite:
    e.g. 3 rad off a training range that says otherwise), 'constant_if_below' (``value`` when
    observation[index] < threshold, else ``otherwise``: one value per action joint (rad), default 0).
    """
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(src))
    graph = model.graph
    out = graph.output[0]
    for node in graph.node:
        node.output[:] = ["actions_raw" if o == "actions" else o for o in node.output]
    horizon = int(json_metadata(model)["horizon"])
    if kind == "nan":
        graph.initializer.append(helper.make_tensor("nan_c", TensorProto.FLOAT, [1], [float("nan")]))
        graph.node.append(helper.make_node("Mul", ["actions_raw", "nan_c"], ["actions"]))
    elif kind == "nan_if_negative":
        graph.initializer.extend([helper.make_tensor("s0", TensorProto.INT64, [1], [index]),
                                  helper.make_tensor("s1", TensorProto.INT64, [1], [index + 1]),
                                  helper.make_tensor("ax", TensorProto.INT64, [1], [1]),
                                  helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0]),
                                  helper.make_tensor("threshold", TensorProto.FLOAT, [1], [threshold])])
        graph.node.extend([
            helper.make_node("Slice", ["observation", "s0", "s1", "ax"], ["obs_i"]),  # (B, 1)
            helper.make_node("Sub", ["obs_i", "threshold"], ["obs0"]),
            helper.make_node("Sqrt", ["obs0"], ["root"]),  # NaN where observation[index] < threshold
            helper.make_node("Mul", ["root", "zero"], ["nan_or_zero"]),
            helper.make_node("Unsqueeze", ["nan_or_zero", "ax"], ["nan_or_zero3"]),  # (B, 1, 1)
            helper.make_node("Add", ["actions_raw", "nan_or_zero3"], ["actions"]),
        ])
    elif kind in ("short", "declared_short"):
        graph.initializer.extend([helper.make_tensor("s0", TensorProto.INT64, [1], [0]),
                                  helper.make_tensor("sh", TensorProto.INT64, [1], [horizon // 2]),
                                  helper.make_tensor("ax", TensorProto.INT64, [1], [1])])
        graph.node.append(helper.make_node("Slice", ["actions_raw", "s0", "sh", "ax"], ["actions"]))
        if kind == "declared_short":
            out.type.tensor_type.shape.dim[1].ClearField("dim_param")
            out.type.tensor_type.shape.dim[1].dim_value = horizon // 2
    elif kind in ("constant", "constant_if_below"):
        graph.initializer.extend([helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0]),
                                  helper.make_tensor("value", TensorProto.FLOAT, [1], [value])])
        graph.node.append(helper.make_node("Mul", ["actions_raw", "zero"], ["zeros"]))  # (B, H, A) of 0
        if kind == "constant":
            graph.node.append(helper.make_node("Add", ["zeros", "value"], ["actions"]))
        else:
            graph.initializer.extend([helper.make_tensor("s0", TensorProto.INT64, [1], [index]),
                                      helper.make_tensor("s1", TensorProto.INT64, [1], [index + 1]),
                                      helper.make_tensor("ax", TensorProto.INT64, [1], [1]),
                                      helper.make_tensor("threshold", TensorProto.FLOAT, [1], [threshold])])
            graph.node.extend([
                helper.make_node("Slice", ["observation", "s0", "s1", "ax"], ["obs_i"]),  # (B, 1)
                helper.make_node("Less", ["obs_i", "threshold"], ["below"]),
                helper.make_node("Cast", ["below"], ["below_f"], to=TensorProto.FLOAT),
                helper.make_node("Unsqueeze", ["below_f", "ax"], ["below3"]),  # (B, 1, 1)
                helper.make_node("Mul", ["below3", "jump"], ["offset3"]),  # (B, 1, A): value - otherwise if below
                helper.make_node("Add", ["zeros", "otherwise"], ["level"]),
                helper.make_node("Add", ["level", "offset3"], ["actions"]),
            ])
            base = np.zeros(out_dim(out)) if otherwise is None else np.asarray(otherwise, dtype=np.float64)
            graph.initializer.extend([helper.make_tensor("otherwise", TensorProto.FLOAT, [base.size], base.tolist()),
                                      helper.make_tensor("jump", TensorProto.FLOAT, [base.size],
                                                         (value - base).tolist())])
    else:
        raise ValueError(f"unknown kind {kind!r}")
    onnx.save(model, str(dst))
    return Path(dst)


def out_dim(output: Any) -> int:
    """The action dimension (last axis) an ONNX graph output declares."""
    return int(output.type.tensor_type.shape.dim[-1].dim_value)


def json_metadata(model: Any) -> dict[str, Any]:
    """The flow_policy metadata of a loaded onnx ModelProto as a dict."""
    import json

    return json.loads({p.key: p.value for p in model.metadata_props}["flow_policy"])
