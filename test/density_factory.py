"""Tiny policies with an observation density for tests: a real checkpoint, a real density fitted on
synthetic observations, a real export with calibration; the threshold can be set afterwards, so a
test controls which observations score below it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from model_factory import make_checkpoint

from flow_policy_ros.policy.config import DensityTrainConfig


def make_density_model(tmp: Path, observations: np.ndarray, horizon: int = 8, steps: int = 300,
                       hidden_dim: int = 32) -> Path:
    """Export ``tmp``/d.onnx: a tiny policy with a density fitted on ``observations`` (N, 17) and
    calibrated (alpha 0.05) on 40 episodes of them."""
    from flow_policy_ros.export.density_export import DensityExport
    from flow_policy_ros.export.onnx_export import export_checkpoint
    from flow_policy_ros.policy.checkpoint import load_checkpoint, save_checkpoint
    from flow_policy_ros.policy.dataset import Windows
    from flow_policy_ros.policy.density_training import fit_density

    ckpt_path = make_checkpoint(tmp / "p.pt", horizon=horizon)
    ckpt = load_checkpoint(ckpt_path)
    ckpt.density = fit_density(observations, ckpt, DensityTrainConfig(enabled=True, steps=steps, hidden_dim=hidden_dim))
    save_checkpoint(ckpt_path, ckpt)
    n = 40 * (len(observations) // 40)
    Windows(observations[:n], np.zeros((n, horizon, 7)), np.repeat(np.arange(40), n // 40)).save_npz(tmp / "held.npz")
    export_checkpoint(ckpt_path, tmp / "d.onnx", density=DensityExport(tmp / "held.npz", alpha=0.05))
    return tmp / "d.onnx"


def set_threshold(model: Path, threshold: float) -> Path:
    """Rewrite the density threshold in ``model``'s metadata (in place)."""
    import onnx

    proto = onnx.load(str(model))
    entry = next(p for p in proto.metadata_props if p.key == "flow_policy")
    meta = json.loads(entry.value)
    meta["density"]["threshold"] = float(threshold)
    entry.value = json.dumps(meta, sort_keys=True)
    onnx.save(proto, str(model))
    return model
