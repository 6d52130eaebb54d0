"""The observation density of a policy checkpoint: train it, attach it, score and calibrate with it.

Camera models get a :class:`~flow_policy_ros.policy.camera_density.CameraObservationDensity` (joint
readings + the frozen encoder's whitened embedding of the frame in force), state models an
:class:`~flow_policy_ros.policy.density.ObservationDensity`; :func:`fit_on_windows` picks.

``flow-policy train`` with ``density.enabled`` calls :func:`attach_to_run` once the policy is
trained; ``flow-policy train-density CKPT DATA --out CKPT2`` calls :func:`add_density` to give an
existing checkpoint (a shipped model's ``.pt``) a density without touching its policy weights.
Either way the density is fitted on the observations of the training windows, normalized with the
checkpoint's own statistics (:meth:`ObservationDensity.from_stats`), and stored in the checkpoint
under ``density`` (:func:`density_entry`).

Calibration (:func:`conformal_threshold`): the threshold is a conformal lower quantile of the
scores of held-out in-distribution EPISODES. The score of an episode is the minimum log-likelihood
over its windows (the decision a hold would be triggered by); with n episode scores and a false-
alarm rate alpha, threshold = the k-th smallest, k = floor(alpha (n + 1)). For a new episode
exchangeable with the held-out ones, P(its minimum < threshold) <= k / (n + 1) <= alpha: at most
a fraction alpha of in-distribution episodes sees even one score below the threshold (and a hold
needs several in a row). k < 1 (n < 1/alpha - 1) is refused: the set is too small for the rate.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from flow_policy_ros.errors import UsageError
from flow_policy_ros.policy.camera_density import (
    CAMERA_KIND,
    DEFAULT_REL_TOL,
    DEFAULT_STD_FLOOR,
    CameraObservationDensity,
    train_camera_density,
    window_embeddings,
)
from flow_policy_ros.policy.checkpoint import Checkpoint, file_sha256, load_checkpoint, save_checkpoint
from flow_policy_ros.policy.config import DensityTrainConfig
from flow_policy_ros.policy.density import DensityConfig, ObservationDensity, train_density

#: The calibration rule, as recorded in the metadata.
CONFORMAL_RULE = ("episode score = min log-likelihood over its windows; threshold = k-th smallest of the n "
                  "held-out episode scores, k = floor(alpha * (n + 1))")


def fit_density(observations: np.ndarray, ckpt: Checkpoint, cfg: DensityTrainConfig,
                episodes: int | None = None) -> dict[str, Any]:
    """Train a density on ``observations`` (N, obs_dim, raw units) with ``ckpt``'s normalization;
    returns the checkpoint's ``density`` entry (:func:`density_entry`)."""
    net_cfg = DensityConfig(obs_dim=ckpt.config.policy.obs_dim, hidden_dim=cfg.hidden_dim, num_layers=cfg.num_layers,
                            activation=cfg.activation)
    trained = train_density(observations, net_cfg, stats=ckpt.stats, steps=cfg.steps, batch_size=cfg.batch_size,
                            lr=cfg.lr, data_noise=cfg.data_noise, seed=cfg.seed)
    return density_entry(trained.model, training_record(cfg, trained.losses, len(observations), episodes))


def training_record(cfg: DensityTrainConfig, losses: list[float], windows: int, episodes: int | None) -> dict[str, Any]:
    """The ``density.training`` entry: the settings, the data size and the mean of the last 50 losses."""
    tail = losses[-min(50, len(losses)):]
    training = {"steps": cfg.steps, "batch_size": cfg.batch_size, "lr": cfg.lr, "data_noise": cfg.data_noise,
                "seed": cfg.seed, "windows": int(windows), "final_loss": float(np.mean(tail))}
    if episodes is not None:
        training["episodes"] = int(episodes)
    return training


def fit_camera_density(windows: Any, keep: np.ndarray, ckpt: Checkpoint, cfg: DensityTrainConfig,
                       log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """A camera model's density (``policy.camera_density``) on the windows ``keep`` (N,) bool of
    ``windows`` (``dataset.Windows`` with frames): the checkpoint's frozen EMA encoder embeds each
    window's frame in force, the flow is fitted on [raw observation, whitened embedding]."""
    from flow_policy_ros.policy.model import VelocityNet

    net = VelocityNet(ckpt.config.policy)
    net.load_state_dict(ckpt.ema_state)
    net.eval().requires_grad_(False)
    index = {c: np.asarray(i)[keep] for c, i in windows.frame_index.items()}
    embeddings = window_embeddings(net, windows.frames, index)
    if log is not None:
        log(f"density: embedded {len(embeddings)} windows ({sum(len(f) for f in windows.frames.values())} frames)")
    net_cfg = DensityConfig(obs_dim=1, hidden_dim=cfg.hidden_dim, num_layers=cfg.num_layers, activation=cfg.activation)
    model, losses = train_camera_density(windows.observations[keep], embeddings, ckpt.stats.obs_shift, ckpt.stats.obs_scale,
                                         net_cfg, tuple(net.cameras), steps=cfg.steps, batch_size=cfg.batch_size,
                                         lr=cfg.lr, data_noise=cfg.data_noise, seed=cfg.seed)
    training = {**training_record(cfg, losses, int(keep.sum()), len(np.unique(windows.episode_index[keep]))),
                "embedding_directions": model.whitening.dim, "embedding_rel_tol": DEFAULT_REL_TOL,
                "embedding_std_floor": DEFAULT_STD_FLOOR}
    return {"model": model.to_dict(), "training": training}


def fit_on_windows(windows: Any, keep: np.ndarray, ckpt: Checkpoint, cfg: DensityTrainConfig,
                   log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The checkpoint's ``density`` entry fitted on the windows ``keep`` (N,) bool: a camera density for a
    camera model, else the observation density (:func:`fit_density`)."""
    if ckpt.config.policy.cameras:
        return fit_camera_density(windows, keep, ckpt, cfg, log)
    return fit_density(windows.observations[keep], ckpt, cfg, int(len(np.unique(windows.episode_index[keep]))))


def density_entry(model: ObservationDensity, training: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint stores: ``{"model": ObservationDensity.to_dict(), "training": {...}}``."""
    return {"model": model.to_dict(), "training": dict(training)}


def density_from_checkpoint(ckpt: Checkpoint, where: str = "checkpoint") -> ObservationDensity | CameraObservationDensity:
    """The checkpoint's density model (eval mode): a :class:`CameraObservationDensity` for a camera
    model's (``kind`` camera_embedding), else an :class:`ObservationDensity`; UsageError naming
    ``where`` when it has none."""
    if ckpt.density is None:
        raise UsageError(f"{where}: the checkpoint has no observation density (train one with "
                         "`flow-policy train-density` or density.enabled in the training config)")
    model = ckpt.density["model"]
    kind = CameraObservationDensity if model.get("kind") == CAMERA_KIND else ObservationDensity
    return kind.from_dict(model, where=f"{where}: density").eval().requires_grad_(False)


def attach_to_run(checkpoint_path: Path, data_path: Path, log: Callable[[str], None] | None = None) -> None:
    """``flow-policy train``'s hook: when the run's config has ``density.enabled``, fit the density on
    the run's training windows (``data_path``'s windows minus the validation episodes recorded in
    the checkpoint's split) and rewrite ``checkpoint_path`` (the run's last.pt) with it."""
    ckpt = load_checkpoint(checkpoint_path)
    if not ckpt.config.density.enabled:
        return
    from flow_policy_ros.policy.dataset import load_training_data

    windows = load_training_data(Path(data_path), ckpt.config.policy, ckpt.config.data, progress=False)
    held_out = (ckpt.data_summary.get("split") or {}).get("val_episode_index") or []
    keep = ~np.isin(windows.episode_index, np.asarray(held_out, dtype=np.int64))
    episodes = int(len(np.unique(windows.episode_index[keep])))
    ckpt.density = fit_on_windows(windows, keep, ckpt, ckpt.config.density, log)
    save_checkpoint(checkpoint_path, ckpt)
    if log is not None:
        log(f"density: {ckpt.config.density.steps} steps on {int(keep.sum())} training windows ({episodes} episodes), "
            f"final loss {ckpt.density['training']['final_loss']:.4f}, stored in {checkpoint_path}")


def add_density(checkpoint_path: Path, data_path: Path, out_path: Path, cfg: DensityTrainConfig,
                progress: bool = False) -> Checkpoint:
    """A copy of the checkpoint at ``checkpoint_path`` with a density fitted on the windows of
    ``data_path`` (the policy's training data); the policy's weights, statistics and config are
    copied unchanged, so its exported actions are too. ``density.training.base_checkpoint_sha256``
    keeps the hash of the checkpoint it was made from (what a distilled student names as teacher)."""
    from flow_policy_ros.policy.dataset import load_training_data

    ckpt = load_checkpoint(checkpoint_path)
    windows = load_training_data(Path(data_path), ckpt.config.policy, ckpt.config.data, progress=progress)
    ckpt.density = fit_on_windows(windows, np.ones(len(windows), bool), ckpt, cfg, print if progress else None)
    ckpt.density["training"]["data"] = Path(data_path).name
    ckpt.density["training"]["base_checkpoint_sha256"] = file_sha256(checkpoint_path)  # provenance of the policy part
    save_checkpoint(out_path, ckpt)
    return ckpt


def copy_density(source: Path, checkpoint_path: Path, out_path: Path) -> Checkpoint:
    """``checkpoint_path`` with the density of ``source``; UsageError unless both normalize the
    observation identically (the density carries that normalization)."""
    donor, ckpt = load_checkpoint(source), load_checkpoint(checkpoint_path)
    if donor.density is None:
        raise UsageError(f"--copy-from {source}: the checkpoint has no density")
    if donor.density["model"].get("kind") == CAMERA_KIND:
        raise UsageError(f"--copy-from {source}: a camera density scores its own encoder's embedding; train one instead")
    same = (np.array_equal(donor.stats.obs_shift, ckpt.stats.obs_shift)
            and np.array_equal(donor.stats.obs_scale, ckpt.stats.obs_scale)
            and donor.config.policy.observation == ckpt.config.policy.observation)
    if not same:
        raise UsageError(f"--copy-from {source}: its observation spec or normalization differs from {checkpoint_path}'s")
    ckpt.density = {**donor.density, "training": {**donor.density.get("training", {}), "copied_from": Path(source).name,
                                                  "base_checkpoint_sha256": file_sha256(checkpoint_path)}}
    save_checkpoint(out_path, ckpt)
    return ckpt


def episode_minima(scores: np.ndarray, episode_index: np.ndarray) -> np.ndarray:
    """(n_episodes,) the minimum of ``scores`` (N,) over each episode's windows (``episode_index`` (N,))."""
    episodes = np.unique(episode_index)
    return np.array([float(np.min(scores[episode_index == e])) for e in episodes])


def conformal_threshold(episode_scores: np.ndarray, alpha: float) -> tuple[float, int]:
    """(threshold, k): the k-th smallest of ``episode_scores`` (n,), k = floor(alpha (n + 1)).

    Raises UsageError (one line) when k < 1: n held-out episodes cannot support the rate alpha.
    """
    scores = np.sort(np.asarray(episode_scores, dtype=np.float64))
    n = len(scores)
    if not 0.0 < alpha < 1.0:
        raise UsageError(f"--density-alpha {alpha}: must be in (0, 1)")
    if not np.all(np.isfinite(scores)):
        raise UsageError(f"density calibration: {int(np.sum(~np.isfinite(scores)))} non-finite episode score(s)")
    k = math.floor(alpha * (n + 1) + 1e-9)
    if k < 1:
        need = math.ceil(1.0 / alpha - 1.0 - 1e-9)
        raise UsageError(f"density calibration: {n} held-out episodes are too few for alpha {alpha:g} "
                         f"(floor(alpha (n + 1)) = 0; need n >= {need})")
    return float(scores[k - 1]), k
