"""``flow-policy train``: fit the velocity network on (observation, action-chunk) windows.

One process by default; under ``torchrun`` (WORLD_SIZE > 1) it trains data-parallel with
DistributedDataParallel: gloo on CPU, nccl on GPU, each rank drawing its own batches, rank 0
alone writing checkpoints, plots and logs.

Outputs in ``--out``: ``last.pt`` (latest checkpoint), ``step_XXXXXXX.pt`` (periodic, the last
three kept), ``train_log.csv`` (step, train loss, validation loss, learning rate, wall time),
``loss.png`` (training and validation loss), ``train_summary.json``. A fixed seed gives the same
weights, and ``--resume`` continues a run exactly where its checkpoint left off (same
batches, same noise) because the random-generator state travels in the checkpoint.

Validation: ``train.val_fraction`` of the episodes (whole episodes, chosen with ``train.seed``)
never enter a training batch nor the normalization statistics; every ``train.val_every`` steps
the EMA weights' loss on them is logged. Ctrl-C stops after the current step and writes
``last.pt`` first (see :class:`~flow_policy_ros.policy.train_log.StopOnInterrupt`).
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from flow_policy_ros.errors import UsageError
from flow_policy_ros.policy.aux_target import AuxTarget, FrameLag, validation_rmse
from flow_policy_ros.policy.checkpoint import Checkpoint, code_version, load_checkpoint, save_checkpoint
from flow_policy_ros.policy.config import ExperimentConfig, JointLimits, PolicyConfig, aux_feature, to_dict
from flow_policy_ros.policy.flow import sample_prefix_lengths, training_loss
from flow_policy_ros.policy.model import VelocityNet
from flow_policy_ros.policy.normalization import NormalizationStats, action_reference
from flow_policy_ros.policy.train_log import CSV_NAME, StopOnInterrupt, TrainingLog, plot_loss  # noqa: F401 - plot_loss re-exported
from flow_policy_ros.reports import content_sha256, portable_path, write_json

KEEP_PERIODIC = 3


#: Windows per forward pass of the validation loss.
VAL_BATCH = 4096


@dataclass
class TrainResult:
    """What a run ended with: the checkpoint written last, its step, the last losses.

    ``interrupted`` is True when Ctrl-C stopped the run early (``steps`` < ``train.steps``);
    ``val_loss`` is None without a validation split.
    """

    checkpoint_path: Path
    final_loss: float
    steps: int
    seconds: float
    val_loss: float | None = None
    interrupted: bool = False
    log_path: Path | None = None


@dataclass(frozen=True)
class EpisodeSplit:
    """Window indices of the training and validation episodes (whole episodes on each side)."""

    train: np.ndarray
    val: np.ndarray
    val_episodes: np.ndarray

    def summary(self, episode_index: np.ndarray, val_fraction: float) -> dict[str, Any]:
        return {"val_fraction": val_fraction, "by": "episode",
                "train_episodes": int(len(np.unique(episode_index[self.train]))),
                "val_episodes": int(len(self.val_episodes)),
                "train_windows": int(len(self.train)), "val_windows": int(len(self.val)),
                "val_episode_index": [int(e) for e in self.val_episodes]}


#: Fewest training episodes a validation split may leave (a split that would leave fewer is refused).
MIN_TRAIN_EPISODES = 2


def split_episodes(episode_index: np.ndarray, val_fraction: float, seed: int) -> EpisodeSplit:
    """Hold out ``val_fraction`` of the episodes (at least one when > 0, and never so many that
    fewer than ``MIN_TRAIN_EPISODES`` train), chosen with ``seed``.

    Args:
        episode_index: (N,) episode of each window.
        val_fraction: in [0, 1); 0 = no validation.
        seed: the run's seed (its own numpy stream: the split never moves the torch streams).
    Raises:
        UsageError: a split was asked for but the data has too few episodes to hold one out and
            keep ``MIN_TRAIN_EPISODES`` for training.
    """
    episode_index = np.asarray(episode_index)
    everything = np.arange(len(episode_index))
    if val_fraction == 0:
        return EpisodeSplit(everything, everything[:0], np.zeros(0, np.int64))
    episodes = np.unique(episode_index)
    if len(episodes) < MIN_TRAIN_EPISODES + 1:
        raise UsageError(f"train.val_fraction {val_fraction} holds out whole episodes, but the data has "
                         f"{len(episodes)} episode(s): holding out one would leave {len(episodes) - 1} to train on "
                         f"(at least {MIN_TRAIN_EPISODES}); record more episodes or pass --val-fraction 0 "
                         "(train.val_fraction: 0) to train on all of them without validation")
    n_val = min(len(episodes) - MIN_TRAIN_EPISODES, max(1, round(val_fraction * len(episodes))))
    val_episodes = np.sort(np.random.default_rng(seed).choice(episodes, size=n_val, replace=False))
    is_val = np.isin(episode_index, val_episodes)
    return EpisodeSplit(everything[~is_val], everything[is_val], val_episodes)


def held_out_names(val_episodes: np.ndarray, summary: dict[str, Any], shown: int = 5) -> str:
    """The held-out episodes by name (``summary['sources']``, the episode directories) or index,
    the first ``shown`` of them: 'held out: episode_0003, episode_0017 and 48 more'."""
    sources = summary.get("sources")
    names = [str(sources[e]) if isinstance(sources, list) and 0 <= e < len(sources) else f"episode index {e}"
             for e in (int(v) for v in val_episodes)]
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return "held out: " + ", ".join(names[:shown]) + more


#: Windows per forward pass of the validation loss of a camera model (frames are big).
VAL_BATCH_IMAGES = 512

#: Frames of a batch: camera -> (B, Hc, Wc, 3) uint8 for window indices (B,) of the split.
FramesFn = Callable[[torch.Tensor], dict[str, torch.Tensor]]


@torch.no_grad()
def validation_loss(loss: torch.nn.Module, obs_n: torch.Tensor, act_n: torch.Tensor, seed: int,
                    frames: FramesFn | None = None) -> float:
    """Mean loss (per window) over all of ``obs_n`` (V, obs_dim) / ``act_n`` (V, H, A), with a
    fixed noise stream (``seed``) so that values at different steps differ only by the weights.
    ``frames`` (camera models): the frames of windows [start, stop) (no augmentation here)."""
    generator = torch.Generator(device=obs_n.device).manual_seed(seed)
    total = 0.0
    batch = VAL_BATCH if frames is None else VAL_BATCH_IMAGES
    for start in range(0, len(obs_n), batch):
        stop = min(start + batch, len(obs_n))
        images = None if frames is None else frames(torch.arange(start, stop, device=obs_n.device))
        total += float(loss(obs_n[start:stop], act_n[start:stop], generator, images)) * (stop - start)
    return total / len(obs_n)


def limits_source(policy_cfg: PolicyConfig) -> str:
    """Where the model's joint limits came from, for the checkpoint's data summary and the ONNX metadata."""
    if policy_cfg.limits == JointLimits():
        return "iiwa defaults (flow_policy_ros.contract; no policy.limits in the config)"
    return "config (policy.limits)"


def _stop_requested(stop: StopOnInterrupt, world: int) -> bool:
    """Every rank stops at the same step: under DDP the flag is all-reduced (max)."""
    if world == 1:
        return stop.requested
    import torch.distributed as dist

    flag = torch.tensor([1.0 if stop.requested else 0.0])
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item() > 0)


class PositionNoise:
    """Perturb observed joint positions, keep the demonstrated targets (in normalized space).

    With noise e (rad) on the positions: obs_n[:, pos] += e / obs_scale[pos]; the absolute
    targets do not move, so in the relative action frame the chunk (targets - positions)
    changes by -e for the action joints: act_n -= e / act_scale. With ``blend_steps`` R > 0 the
    targets instead return to the demonstration smoothly, target h = demo h + e (1 - s(h / R)),
    so the relative chunk changes by -e s(h / R) (s: quintic smoothstep, 0 at h = 0, 1 from h = R).
    """

    def __init__(self, policy_cfg: PolicyConfig, stats: NormalizationStats, std_rad: float, device: torch.device,
                 blend_steps: int = 0) -> None:
        positions = policy_cfg.observation.field_slices()["joint_positions"] if "joint_positions" in policy_cfg.observation.fields else None
        self.std = std_rad if positions is not None else 0.0
        self.obs_columns = list(range(positions.start, positions.stop)) if positions is not None else []
        reference = policy_cfg.action_reference_indices()
        # which perturbed column feeds each action joint's reference (relative frame only)
        self.action_from = [self.obs_columns.index(i) for i in reference]
        self.obs_scale = torch.tensor(stats.obs_scale[self.obs_columns], dtype=torch.float32, device=device)
        self.act_scale = torch.tensor(stats.act_scale, dtype=torch.float32, device=device)
        x = torch.clamp(torch.arange(policy_cfg.horizon, dtype=torch.float32, device=device) / max(blend_steps, 1), 0.0, 1.0)
        self.blend = (x**3 * (10 - 15 * x + 6 * x**2)) if blend_steps > 0 else torch.ones_like(x)  # (H,)

    def __call__(self, obs_n: torch.Tensor, act_n: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        if self.std == 0.0:
            return obs_n, act_n
        noise = self.std * torch.randn((obs_n.shape[0], len(self.obs_columns)), generator=generator, device=obs_n.device)
        obs_n = obs_n.clone()
        obs_n[:, self.obs_columns] += noise / self.obs_scale
        if self.action_from:
            act_n = act_n - (noise[:, self.action_from] / self.act_scale)[:, None, :] * self.blend[None, :, None]
        return obs_n, act_n


class PrefixNoise:
    """Perturb the committed prefix of real-time chunking samples (normalized space), see
    ``TrainConfig.rtc_prefix_noise_std``.

    For a sample with prefix length d > 0, per joint an offset e (rad) and a velocity v (rad/s):
    delta(h) = (e + v (h - d + 1) dt) * b(h), b = 1 on the prefix rows h < d and
    1 - s((h - d + 1) / R) after them (s: quintic smoothstep); the chunk's targets move by delta
    (act_n += delta / act_scale), the observation stays. d = 0 samples are left alone.
    """

    def __init__(self, policy_cfg: PolicyConfig, stats: NormalizationStats, std_rad: float, std_rad_s: float,
                 blend_steps: int, device: torch.device) -> None:
        self.std_rad, self.std_rad_s, self.blend_steps = std_rad, std_rad_s, blend_steps
        self.period = policy_cfg.control_period_s
        self.act_scale = torch.tensor(stats.act_scale, dtype=torch.float32, device=device)
        self.rows = torch.arange(policy_cfg.horizon, dtype=torch.float32, device=device)

    @property
    def enabled(self) -> bool:
        return self.std_rad > 0 or self.std_rad_s > 0

    def delta(self, d: torch.Tensor, e: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The perturbation (B, H, A) in rad for prefix lengths d (B,), offsets e and velocities v (B, A)."""
        after = self.rows[None, :] - (d.to(torch.float32)[:, None] - 1.0)  # h - d + 1: <= 0 on the prefix
        x = torch.clamp(after / self.blend_steps, 0.0, 1.0)
        blend = 1.0 - x**3 * (10 - 15 * x + 6 * x**2)
        delta = (e[:, None, :] + v[:, None, :] * (after * self.period)[:, :, None]) * blend[:, :, None]
        return delta * (d > 0).to(delta.dtype)[:, None, None]

    def __call__(self, act_n: torch.Tensor, d: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if not self.enabled:
            return act_n
        shape = (act_n.shape[0], act_n.shape[2])
        e = self.std_rad * torch.randn(shape, generator=generator, device=act_n.device)
        v = self.std_rad_s * torch.randn(shape, generator=generator, device=act_n.device)
        return act_n + self.delta(d, e, v) / self.act_scale[None, None, :]


class _LossModule(torch.nn.Module):
    """The training loss as a module, so DistributedDataParallel can wrap it."""

    def __init__(self, net: VelocityNet, policy_cfg: PolicyConfig, objective: str,
                 prefix_noise: PrefixNoise | None = None, aux: AuxTarget | None = None) -> None:
        super().__init__()
        self.net, self.policy_cfg, self.objective, self.prefix_noise = net, policy_cfg, objective, prefix_noise
        self.aux = aux
        self.last_aux_loss = 0.0  # the aux term of the last forward (logged apart from the flow loss)

    def forward(self, obs_n: torch.Tensor, x1: torch.Tensor, generator: torch.Generator,
                images: dict[str, torch.Tensor] | None = None, augment: bool = False,
                aux_target: torch.Tensor | None = None) -> torch.Tensor:
        """The flow-matching (or regression) loss of a batch, plus the aux head's (``aux_target`` (B, d)
        given: camera models with ``train.image_aux_feature``)."""
        cfg = self.policy_cfg
        aux_loss = None
        if images is not None:  # camera models: condition input = [obs_n, image embeddings], encoder trained too
            condition = self.net.condition_input(obs_n, images, augment, generator)
            if self.aux is not None and aux_target is not None:
                aux_loss = self.aux.loss(self.aux.embedding(condition, obs_n.shape[1]), aux_target)
                self.last_aux_loss = float(aux_loss.detach())
            obs_n = condition
        prefix_length = None
        if cfg.rtc_max_delay > 0:  # real-time chunking: a committed prefix of random length
            prefix_length = sample_prefix_lengths(x1.shape[0], cfg.rtc_max_delay, cfg.rtc_probability,
                                                  cfg.rtc_delay_weights, generator, x1.device)
            if self.prefix_noise is not None:
                x1 = self.prefix_noise(x1, prefix_length, generator)
        loss = training_loss(self.net, obs_n, x1, cfg.p_uncond, generator, self.objective, prefix_length).loss
        return loss if aux_loss is None else loss + aux_loss


def _distributed() -> tuple[int, int]:
    """(rank, world_size); initializes the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world


def lr_factor(step: int, total: int) -> float:
    """Linear warm-up over 2% of the steps, then cosine decay to 10%."""
    warmup = max(1, total // 50)
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


@torch.no_grad()
def ema_decay(step: int, target: float) -> float:
    """EMA decay at ``step``: (1 + step) / (10 + step) early on (the average follows the fast-moving
    start), ``target`` once that exceeds it."""
    return min(target, (1.0 + step) / (10.0 + step))


def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for ema_param, param in zip(ema.parameters(), model.parameters()):
        ema_param.lerp_(param, 1.0 - decay)
    for ema_buffer, buffer in zip(ema.buffers(), model.buffers()):
        ema_buffer.copy_(buffer)


def train(
    data_path: str | Path,
    config: ExperimentConfig,
    out_dir: str | Path,
    resume: str | Path | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train per ``config`` on windows from ``data_path`` (npz or rosbag2 directory).

    ``log`` receives the run's one-line reports (dataset size and split, resume target,
    validation losses without a progress bar, where an interrupted run saved its checkpoint);
    rank 0 only. None: silent.
    """
    from flow_policy_ros.policy.dataset import load_training_data

    out_dir = Path(out_dir)
    rank, world = _distributed()
    device = torch.device(f"cuda:{rank % torch.cuda.device_count()}" if torch.cuda.is_available() else "cpu")
    policy_cfg, train_cfg = config.policy, config.train
    say = log if (log is not None and rank == 0) else (lambda _message: None)
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)

    # a --resume that cannot run is refused before the (possibly long) data loading
    resumed = None if resume is None else load_checkpoint(resume)
    if resumed is not None:
        if resumed.config.policy != policy_cfg:
            raise UsageError(f"--resume {resume}: its policy config differs from this run's config")
        if resumed.step >= train_cfg.steps:
            where = ("the run finished at step" if resumed.step == train_cfg.steps else "the checkpoint is at step")
            raise UsageError(f"--resume {resume}: {where} {resumed.step} of train.steps {train_cfg.steps}; pass "
                             f"--steps M with M > {resumed.step} (the new total) to train further")
        if resumed.aux_state is not None and not train_cfg.image_aux_feature:
            raise UsageError(f"--resume {resume}: trained with train.image_aux_feature "
                             f"{resumed.aux_state.get('feature')!r}; keep it (and its weight) in the config to resume")

    aux_spec = aux_feature(config)
    windows = load_training_data(
        data_path, policy_cfg, config.data, cache_dir=out_dir / "cache" if rank == 0 else None, progress=progress and rank == 0,
        aux=aux_spec,
    )
    split = split_episodes(windows.episode_index, train_cfg.val_fraction, train_cfg.seed)
    n_episodes = len(np.unique(windows.episode_index))
    say(f"data: {n_episodes} episodes, {len(windows)} windows (H={policy_cfg.horizon}) from {data_path}")
    if len(split.val):
        say(f"split by episode (val_fraction {train_cfg.val_fraction:g}, seed {train_cfg.seed}): "
            f"train {n_episodes - len(split.val_episodes)} episodes / {len(split.train)} windows, "
            f"validation {len(split.val_episodes)} episodes / {len(split.val)} windows "
            f"({held_out_names(split.val_episodes, windows.summary)}; --val-fraction 0 trains on every episode)")
    else:
        say("no validation split (train.val_fraction 0): every episode trains")
    # the network's chunk is in the configured action frame (relative: minus the measured positions)
    model_actions = windows.actions - action_reference(windows.observations, policy_cfg.action_reference_indices())
    # statistics from the training episodes only: nothing about the held-out ones leaks into the model
    stats = NormalizationStats.fit(windows.observations[split.train], model_actions[split.train], policy_cfg.normalization)
    obs_all = torch.tensor(stats.normalize_obs(windows.observations), dtype=torch.float32, device=device)
    act_all = torch.tensor(stats.normalize_actions(model_actions), dtype=torch.float32, device=device)
    train_index = torch.as_tensor(split.train, device=device)
    obs_n, act_n = obs_all[train_index], act_all[train_index]
    val_index = torch.as_tensor(split.val, device=device)
    obs_val, act_val = obs_all[val_index], act_all[val_index]
    del obs_all, act_all
    aux_all = torch.tensor(windows.aux, dtype=torch.float32, device=device)
    aux_train, aux_val = aux_all[train_index], aux_all[val_index]
    # camera models: every frame once (uint8, shared with the numpy arrays), indexed per window
    cameras = policy_cfg.cameras
    frames_all = {c: torch.from_numpy(windows.frames[c]).to(device) for c in cameras}
    index_all = {c: torch.from_numpy(windows.frame_index[c]).to(device) for c in cameras}
    train_frame_index = {c: index_all[c][train_index] for c in cameras}
    val_frame_index = {c: index_all[c][val_index] for c in cameras}
    lag = FrameLag(train_cfg.image_lag_frames, windows, cameras, train_index, device)

    def train_frames(index: torch.Tensor) -> dict[str, torch.Tensor] | None:
        if not cameras:
            return None
        return {c: frames_all[c][lag(c, train_frame_index[c][index], index, generator)] for c in cameras}

    def val_frames(index: torch.Tensor) -> dict[str, torch.Tensor]:
        return {c: frames_all[c][val_frame_index[c][index]] for c in cameras}
    if cameras:
        say(f"cameras {list(cameras)}: {sum(len(f) for f in frames_all.values())} frames "
            f"({sum(f.numel() for f in frames_all.values()) / 1e6:.0f} MB uint8, stored once, indexed per window)")
    n_windows = obs_n.shape[0]
    position_noise = PositionNoise(policy_cfg, stats, train_cfg.position_noise_std, device,
                                   train_cfg.position_noise_blend_steps)

    torch.manual_seed(train_cfg.seed)
    model = VelocityNet(policy_cfg).to(device)
    ema = copy.deepcopy(model).requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    generator = torch.Generator(device=device).manual_seed(train_cfg.seed * 1_000_003 + rank)
    start_step, history = 0, []
    aux = None
    if aux_spec is not None:  # statistics of the training windows only, like the normalization
        train_targets = windows.aux[split.train]
        aux = AuxTarget(policy_cfg.condition_dim - policy_cfg.obs_dim, train_targets.mean(axis=0),
                        train_targets.std(axis=0), train_cfg.image_aux_weight, aux_spec.name).to(device)
        if resumed is not None and resumed.aux_state is not None:
            aux.load_state_dict(resumed.aux_state["state"])
            optimizer.add_param_group({"params": list(aux.parameters())})  # as saved: before the state loads

    if resumed is not None:
        ckpt = resumed
        model.load_state_dict(ckpt.model_state)
        ema.load_state_dict(ckpt.ema_state)
        if ckpt.optimizer_state is not None:
            optimizer.load_state_dict(ckpt.optimizer_state)
        if ckpt.generator_state is not None and world == 1:
            generator.set_state(ckpt.generator_state)
        start_step, history = ckpt.step, list(ckpt.loss_history)
        say(f"resuming {resume} at step {start_step}: training to step {train_cfg.steps} "
            f"({train_cfg.steps - start_step} steps to go)")
    if aux is not None and (resumed is None or resumed.aux_state is None):  # a new head joins the optimizer
        optimizer.add_param_group({"params": list(aux.parameters())})
    if aux is not None:
        say(f"train.image_aux_feature {aux.feature!r} (weight {aux.weight:g}): a linear head predicts it from the "
            f"camera embedding (training only; scales {np.round(aux.std.cpu().numpy(), 4).tolist()})")

    # DDP synchronizes gradients through its forward, so the whole loss is one module call.
    prefix_noise = PrefixNoise(policy_cfg, stats, train_cfg.rtc_prefix_noise_std, train_cfg.rtc_prefix_velocity_noise_std,
                               train_cfg.rtc_prefix_blend_steps, device)
    # the validation loss (below) measures demonstrated prefixes only: no prefix noise there
    trained: torch.nn.Module = _LossModule(model, policy_cfg, train_cfg.objective, prefix_noise, aux)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        trained = DistributedDataParallel(trained, device_ids=[device.index] if device.type == "cuda" else None)
    val_loss_of_ema = _LossModule(ema, policy_cfg, train_cfg.objective)
    val_seed = train_cfg.seed * 1_000_003 + 7_777_777

    summary = dict(windows.summary)
    summary.update({"windows": int(len(windows)), "data_path": portable_path(data_path),
                    "data_sha256": content_sha256(data_path) if rank == 0 else "", "world_size": world,
                    "split": split.summary(windows.episode_index, train_cfg.val_fraction),
                    "limits_source": limits_source(policy_cfg)})
    if "root" in summary:
        summary["root"] = portable_path(summary["root"])
    if "cache" in summary:  # shipped checkpoints carry no path of the machine that trained them
        summary["cache"] = {**summary["cache"], "file": portable_path(summary["cache"]["file"])}
    train_log = TrainingLog(out_dir / CSV_NAME if rank == 0 else None, history)
    say(f"training to step {train_cfg.steps} in {out_dir} (log {out_dir / CSV_NAME}, Ctrl-C saves a checkpoint)")

    def make_checkpoint(step: int) -> Checkpoint:
        return Checkpoint(
            config=config,
            stats=stats,
            model_state={k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            ema_state={k: v.detach().cpu().clone() for k, v in ema.state_dict().items()},
            step=step,
            optimizer_state=optimizer.state_dict(),
            generator_state=generator.get_state(),
            data_summary=summary,
            loss_history=train_log.rows,
            code_version=code_version(),
            aux_state=None if aux is None else aux.state(),
        )

    started = time.perf_counter()
    wall_offset = train_log.wall_time_s
    bar = tqdm(
        range(start_step, train_cfg.steps),
        initial=start_step,
        total=train_cfg.steps,
        desc="train",
        unit="step",
        disable=not progress or rank != 0,
        dynamic_ncols=True,
    )
    running, loss_value, done, val_loss = None, float("nan"), start_step, train_log.last_val_loss()
    saved_step = start_step if resume is not None else None
    with StopOnInterrupt() as stop:
        for step in bar:
            if _stop_requested(stop, world):
                break
            lr = train_cfg.lr * lr_factor(step, train_cfg.steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            index = torch.randint(n_windows, (train_cfg.batch_size,), generator=generator, device=device)
            batch_obs, batch_act = position_noise(obs_n[index], act_n[index], generator)
            loss = trained(batch_obs, batch_act, generator, train_frames(index), True,
                           aux_train[index] if aux is not None else None)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            if aux is not None:
                torch.nn.utils.clip_grad_norm_(aux.parameters(), 1.0)
            optimizer.step()
            update_ema(ema, model, ema_decay(step, train_cfg.ema_decay))

            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                raise RuntimeError(f"training diverged at step {step}: loss {loss_value}")
            if aux is not None:  # the logged train loss is the flow loss alone, comparable to the validation loss
                loss_value -= getattr(trained, "module", trained).last_aux_loss
            running = loss_value if running is None else 0.98 * running + 0.02 * loss_value
            done = step + 1
            validate = len(obs_val) > 0 and (done % train_cfg.val_every == 0 or done == train_cfg.steps)
            if validate:
                val_loss = validation_loss(val_loss_of_ema, obs_val, act_val, val_seed, val_frames if cameras else None)
                if not progress:
                    aux_note = ""
                    if aux is not None:  # what the head reads from the image on held-out episodes
                        rmse = validation_rmse(model, aux, obs_val, val_frames, aux_val)
                        aux_note = f", {aux.feature} from the image: validation RMSE {rmse:.4f}"
                    say(f"step {done}/{train_cfg.steps}: train loss {running:.4f}, validation loss {val_loss:.4f}{aux_note}")
            if validate or done % train_cfg.log_every == 0 or done == train_cfg.steps:
                train_log.add(done, running, val_loss if validate else None, lr,
                              wall_offset + time.perf_counter() - started)
                postfix = {"loss": f"{running:.4f}", "lr": f"{lr:.2e}"}
                if val_loss is not None:
                    postfix["val"] = f"{val_loss:.4f}"
                bar.set_postfix(postfix)
            if rank == 0 and (done % train_cfg.checkpoint_every == 0 or done == train_cfg.steps):
                ckpt = make_checkpoint(done)
                save_checkpoint(out_dir / f"step_{done:07d}.pt", ckpt)
                save_checkpoint(out_dir / "last.pt", ckpt)
                saved_step = done
                for old in sorted(out_dir.glob("step_*.pt"))[:-KEEP_PERIODIC]:
                    old.unlink()
        interrupted = stop.requested and done < train_cfg.steps
    bar.close()
    seconds = time.perf_counter() - started

    if rank == 0:
        if interrupted and saved_step != done:
            save_checkpoint(out_dir / "last.pt", make_checkpoint(done))
        if interrupted:
            say(f"interrupted at step {done}/{train_cfg.steps}: checkpoint saved to {out_dir / 'last.pt'}; "
                f"continue with --resume {out_dir / 'last.pt'}")
        train_log.plot(out_dir / "loss.png", title=f"{train_cfg.objective} loss")
        write_json(
            out_dir / "train_summary.json",
            {
                "steps": done,
                "target_steps": train_cfg.steps,
                "interrupted": interrupted,
                "final_loss": running,
                "final_val_loss": val_loss,
                "seconds": seconds,
                "world_size": world,
                "data": summary,
                "config": to_dict(config),
            },
        )
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    final = float(running if running is not None else loss_value)
    return TrainResult(out_dir / "last.pt", final, done, seconds, val_loss, interrupted,
                       out_dir / CSV_NAME if rank == 0 else None)
