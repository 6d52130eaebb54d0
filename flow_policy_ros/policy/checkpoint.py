"""Checkpoint file format: weights, EMA weights, optimizer, config, statistics, provenance.

A checkpoint is a ``torch.save`` dict loaded with ``weights_only=True`` (no pickled code).
``format`` identifies it; anything else is rejected with a message naming the file.
``density`` (optional): the observation density of issue 24
(:func:`flow_policy_ros.policy.density_training.density_entry`); a checkpoint without it loads
with ``density`` None.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from flow_policy_ros.errors import CheckpointError, one_line
from flow_policy_ros.policy.config import ConfigError, ExperimentConfig
from flow_policy_ros.policy.normalization import NormalizationStats, StatisticsError

#: ``kind`` of a camera density (``policy.camera_density``) in a checkpoint's ``density.model``.
CAMERA_KIND = "camera_embedding"

FORMAT = "flow_policy_ros.checkpoint"
VERSION = 1


@dataclass
class Checkpoint:
    """Everything needed to resume training or export a policy."""

    config: ExperimentConfig
    stats: NormalizationStats
    model_state: dict[str, torch.Tensor]
    ema_state: dict[str, torch.Tensor]
    step: int = 0
    optimizer_state: dict[str, Any] | None = None
    generator_state: torch.Tensor | None = None
    data_summary: dict[str, Any] = field(default_factory=dict)
    loss_history: list[list[float]] = field(default_factory=list)
    code_version: str = ""
    density: dict[str, Any] | None = None
    #: a camera model's training-only head (``policy/aux_target.py``): {feature, weight, state}
    aux_state: dict[str, Any] | None = None


def code_version() -> str:
    """Package version plus git commit of the source tree when available."""
    from flow_policy_ros import __version__

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{__version__}+{commit}" if commit else __version__


def save_checkpoint(path: str | Path, ckpt: Checkpoint) -> None:
    """Write atomically (temp file + rename), so an interrupted save never leaves a torn file."""
    path = Path(path)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "config": ckpt.config.to_dict(),
        "stats": ckpt.stats.to_dict(),
        "model": ckpt.model_state,
        "ema": ckpt.ema_state,
        "step": ckpt.step,
        "optimizer": ckpt.optimizer_state,
        "generator": ckpt.generator_state,
        "data_summary": ckpt.data_summary,
        "loss_history": ckpt.loss_history,
        "code_version": ckpt.code_version,
    }
    if ckpt.density is not None:
        payload["density"] = ckpt.density
    if ckpt.aux_state is not None:
        payload["aux"] = ckpt.aux_state
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(payload, tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Load and validate; errors name the file and what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a corrupt file
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{path}: not a flow_policy_ros checkpoint (format {found!r}, expected {FORMAT!r})")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {payload.get('version')!r}, this code reads {VERSION}")
    for key in ("config", "stats", "model", "ema"):
        if key not in payload:
            raise CheckpointError(f"{path}: checkpoint lacks {key!r}")
    try:
        config = ExperimentConfig.from_dict(payload["config"])
        stats = NormalizationStats.from_dict(payload["stats"], where=f"{path}: stats")
    except (ConfigError, StatisticsError) as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    if stats.obs_dim != config.policy.obs_dim or stats.action_dim != config.policy.action_dim:
        raise CheckpointError(
            f"{path}: statistics cover obs_dim {stats.obs_dim}/A {stats.action_dim}, config says "
            f"{config.policy.obs_dim}/{config.policy.action_dim}"
        )
    for key in ("model", "ema"):
        check_weights(payload[key], config, f"{path}: {key!r} weights")
    density = payload.get("density")
    if density is not None:
        check_density(density, config, f"{path}: density")
    return Checkpoint(
        config=config,
        stats=stats,
        model_state=payload["model"],
        ema_state=payload["ema"],
        step=int(payload.get("step", 0)),
        optimizer_state=payload.get("optimizer"),
        generator_state=payload.get("generator"),
        data_summary=payload.get("data_summary") or {},
        loss_history=payload.get("loss_history") or [],
        code_version=payload.get("code_version", ""),
        density=density,
        aux_state=payload.get("aux"),
    )


def check_density(entry: Any, config: ExperimentConfig, where: str) -> None:
    """Raise CheckpointError naming ``where`` unless ``entry`` has the shape of a density over the
    config's observation (the weights are loaded strictly by ``density_training.density_from_checkpoint``)."""
    model = entry.get("model") if isinstance(entry, dict) else None
    if isinstance(model, dict) and model.get("kind") == CAMERA_KIND:
        check_camera_density(model, config, where)
        return
    if not isinstance(model, dict) or not all(k in model for k in ("config", "obs_shift", "obs_scale", "state")):
        raise CheckpointError(f"{where}: expected {{'model': {{config, obs_shift, obs_scale, state}}, 'training': ...}}")
    obs_dim = model["config"].get("obs_dim") if isinstance(model["config"], dict) else None
    if obs_dim != config.policy.obs_dim:
        raise CheckpointError(f"{where}: models {obs_dim} observation values, the policy has {config.policy.obs_dim}")


def check_camera_density(model: dict[str, Any], config: ExperimentConfig, where: str) -> None:
    """A camera density (``policy.camera_density``) must score this policy's cameras and observation;
    its flow models the observation plus its whitened embedding directions."""
    cameras, obs_dim = model.get("cameras"), model.get("observation_dim")
    components, flow = model.get("embedding_components"), model.get("density")
    if list(cameras or []) != list(config.policy.cameras) or obs_dim != config.policy.obs_dim:
        raise CheckpointError(f"{where}: a camera density of cameras {cameras} and {obs_dim} observation values, "
                              f"the policy has cameras {list(config.policy.cameras)} and {config.policy.obs_dim}")
    if not isinstance(components, list) or not isinstance(flow, dict) or not isinstance(flow.get("config"), dict):
        raise CheckpointError(f"{where}: expected embedding_components and a density {{config, obs_shift, obs_scale, state}}")
    if flow["config"].get("obs_dim") != obs_dim + len(components):
        raise CheckpointError(f"{where}: its flow models {flow['config'].get('obs_dim')} values, expected "
                              f"{obs_dim} + {len(components)} embedding directions")


def check_weights(state: Any, config: ExperimentConfig, where: str) -> None:
    """Raise CheckpointError naming ``where`` unless ``state`` loads strictly into the config's network.

    torch's own message (missing/unexpected keys, size mismatches) spans many lines; it is
    flattened, and cut after its first two problems.
    """
    from flow_policy_ros.policy.model import VelocityNet

    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{where} are not a state dict of tensors")
    try:
        VelocityNet(config.policy).load_state_dict(state)
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:
        problems = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()]
        detail = "; ".join(problems[:2]) + (f"; and {len(problems) - 2} more" if len(problems) > 2 else "")
        raise CheckpointError(f"{where} do not fit the network of its config ({detail or one_line(exc)})") from exc


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
