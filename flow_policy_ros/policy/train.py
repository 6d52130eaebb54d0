"""``flow-policy train``: fit the velocity network on (observation, action-chunk) windows.

One process by default; under ``torchrun`` (WORLD_SIZE > 1) it trains data-parallel with
DistributedDataParallel: gloo on CPU, nccl on GPU, each rank drawing its own batches, rank 0
alone writing checkpoints, plots and logs.

Outputs in ``--out``: ``last.pt`` (latest checkpoint), ``step_XXXXXXX.pt`` (periodic, the last
three kept), ``loss.png`` (loss curve), ``train_summary.json``. A fixed seed gives the same
weights, and ``--resume`` continues a run exactly where its checkpoint left off (same
batches, same noise) because the random-generator state travels in the checkpoint.
"""

from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from flow_policy_ros.errors import UsageError
from flow_policy_ros.policy.checkpoint import Checkpoint, code_version, load_checkpoint, save_checkpoint
from flow_policy_ros.policy.config import ExperimentConfig, PolicyConfig, to_dict
from flow_policy_ros.policy.flow import sample_prefix_lengths, training_loss
from flow_policy_ros.policy.model import VelocityNet
from flow_policy_ros.policy.normalization import NormalizationStats, action_reference
from flow_policy_ros.reports import write_json

KEEP_PERIODIC = 3


@dataclass
class TrainResult:
    checkpoint_path: Path
    final_loss: float
    steps: int
    seconds: float


class PositionNoise:
    """Perturb observed joint positions, keep the demonstrated targets (in normalized space).

    With noise e (rad) on the positions: obs_n[:, pos] += e / obs_scale[pos]; the absolute
    targets do not move, so in the relative action frame the chunk (targets - positions)
    changes by -e for the action joints: act_n -= e / act_scale.
    """

    def __init__(self, policy_cfg: PolicyConfig, stats: NormalizationStats, std_rad: float, device: torch.device) -> None:
        positions = policy_cfg.observation.field_slices()["joint_positions"] if "joint_positions" in policy_cfg.observation.fields else None
        self.std = std_rad if positions is not None else 0.0
        self.obs_columns = list(range(positions.start, positions.stop)) if positions is not None else []
        reference = policy_cfg.action_reference_indices()
        # which perturbed column feeds each action joint's reference (relative frame only)
        self.action_from = [self.obs_columns.index(i) for i in reference]
        self.obs_scale = torch.tensor(stats.obs_scale[self.obs_columns], dtype=torch.float32, device=device)
        self.act_scale = torch.tensor(stats.act_scale, dtype=torch.float32, device=device)

    def __call__(self, obs_n: torch.Tensor, act_n: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        if self.std == 0.0:
            return obs_n, act_n
        noise = self.std * torch.randn((obs_n.shape[0], len(self.obs_columns)), generator=generator, device=obs_n.device)
        obs_n = obs_n.clone()
        obs_n[:, self.obs_columns] += noise / self.obs_scale
        if self.action_from:
            act_n = act_n - (noise[:, self.action_from] / self.act_scale)[:, None, :]
        return obs_n, act_n


class _LossModule(torch.nn.Module):
    """The training loss as a module, so DistributedDataParallel can wrap it."""

    def __init__(self, net: VelocityNet, policy_cfg: PolicyConfig, objective: str) -> None:
        super().__init__()
        self.net, self.policy_cfg, self.objective = net, policy_cfg, objective

    def forward(self, obs_n: torch.Tensor, x1: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        cfg = self.policy_cfg
        prefix_length = None
        if cfg.rtc_max_delay > 0:  # real-time chunking: a clean committed prefix of random length
            prefix_length = sample_prefix_lengths(x1.shape[0], cfg.rtc_max_delay, cfg.rtc_probability,
                                                  cfg.rtc_delay_weights, generator, x1.device)
        return training_loss(self.net, obs_n, x1, cfg.p_uncond, generator, self.objective, prefix_length).loss


def _distributed() -> tuple[int, int]:
    """(rank, world_size); initializes the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world


def _lr_factor(step: int, total: int) -> float:
    """Linear warm-up over 2% of the steps, then cosine decay to 10%."""
    warmup = max(1, total // 50)
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


@torch.no_grad()
def _update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
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
) -> TrainResult:
    """Train per ``config`` on windows from ``data_path`` (npz or rosbag2 directory)."""
    from flow_policy_ros.policy.dataset import load_training_data

    out_dir = Path(out_dir)
    rank, world = _distributed()
    device = torch.device(f"cuda:{rank % torch.cuda.device_count()}" if torch.cuda.is_available() else "cpu")
    policy_cfg, train_cfg = config.policy, config.train
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)

    windows = load_training_data(
        data_path, policy_cfg, config.data, cache_dir=out_dir / "cache" if rank == 0 else None, progress=progress and rank == 0
    )
    # the network's chunk is in the configured action frame (relative: minus the measured positions)
    model_actions = windows.actions - action_reference(windows.observations, policy_cfg.action_reference_indices())
    stats = NormalizationStats.fit(windows.observations, model_actions, policy_cfg.normalization)
    obs_n = torch.tensor(stats.normalize_obs(windows.observations), dtype=torch.float32, device=device)
    act_n = torch.tensor(stats.normalize_actions(model_actions), dtype=torch.float32, device=device)
    n_windows = obs_n.shape[0]
    position_noise = PositionNoise(policy_cfg, stats, train_cfg.position_noise_std, device)

    torch.manual_seed(train_cfg.seed)
    model = VelocityNet(policy_cfg).to(device)
    ema = copy.deepcopy(model).requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    generator = torch.Generator(device=device).manual_seed(train_cfg.seed * 1_000_003 + rank)
    start_step, loss_history = 0, []

    if resume is not None:
        ckpt = load_checkpoint(resume)
        if ckpt.config.policy != policy_cfg:
            raise UsageError(f"--resume {resume}: its policy config differs from this run's config")
        model.load_state_dict(ckpt.model_state)
        ema.load_state_dict(ckpt.ema_state)
        if ckpt.optimizer_state is not None:
            optimizer.load_state_dict(ckpt.optimizer_state)
        if ckpt.generator_state is not None and world == 1:
            generator.set_state(ckpt.generator_state)
        start_step, loss_history = ckpt.step, list(ckpt.loss_history)
        if start_step >= train_cfg.steps:
            raise UsageError(f"--resume {resume}: checkpoint is at step {start_step}, train.steps is {train_cfg.steps}")

    # DDP synchronizes gradients through its forward, so the whole loss is one module call.
    trained: torch.nn.Module = _LossModule(model, policy_cfg, train_cfg.objective)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        trained = DistributedDataParallel(trained, device_ids=[device.index] if device.type == "cuda" else None)

    summary = dict(windows.summary)
    summary.update({"windows": int(n_windows), "data_path": str(data_path), "world_size": world})

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
            loss_history=loss_history,
            code_version=code_version(),
        )

    started = time.perf_counter()
    bar = tqdm(
        range(start_step, train_cfg.steps),
        initial=start_step,
        total=train_cfg.steps,
        desc="train",
        unit="step",
        disable=not progress or rank != 0,
        dynamic_ncols=True,
    )
    running, loss_value = None, float("nan")
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = train_cfg.lr * _lr_factor(step, train_cfg.steps)
        index = torch.randint(n_windows, (train_cfg.batch_size,), generator=generator, device=device)
        batch_obs, batch_act = position_noise(obs_n[index], act_n[index], generator)
        loss = trained(batch_obs, batch_act, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        decay = min(train_cfg.ema_decay, (1.0 + step) / (10.0 + step))
        _update_ema(ema, model, decay)

        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise RuntimeError(f"training diverged at step {step}: loss {loss_value}")
        running = loss_value if running is None else 0.98 * running + 0.02 * loss_value
        done = step + 1
        if done % train_cfg.log_every == 0 or done == train_cfg.steps:
            loss_history.append([done, running])
            bar.set_postfix(loss=f"{running:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
        if rank == 0 and (done % train_cfg.checkpoint_every == 0 or done == train_cfg.steps):
            ckpt = make_checkpoint(done)
            save_checkpoint(out_dir / f"step_{done:07d}.pt", ckpt)
            save_checkpoint(out_dir / "last.pt", ckpt)
            for old in sorted(out_dir.glob("step_*.pt"))[:-KEEP_PERIODIC]:
                old.unlink()
    bar.close()
    seconds = time.perf_counter() - started

    if rank == 0:
        plot_loss(loss_history, out_dir / "loss.png", title=f"{train_cfg.objective} loss")
        write_json(
            out_dir / "train_summary.json",
            {
                "steps": train_cfg.steps,
                "final_loss": running,
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
    return TrainResult(out_dir / "last.pt", float(running if running is not None else loss_value), train_cfg.steps, seconds)


def plot_loss(history: list[list[float]], path: Path, title: str) -> None:
    """Loss curve (log scale) to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    if history:
        steps, losses = zip(*history)
        ax.plot(steps, losses, lw=1.5)
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (EMA-smoothed)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
