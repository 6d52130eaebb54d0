"""``flow-policy distill``: a few-step student from a many-step flow teacher (rectified-flow reflow).

Why reflow (Liu et al. 2022, "Flow straight and fast"; the seed texts' "fast" preset): the
teacher's N-step sampler defines a deterministic map from noise x0 to a chunk x1 for every
observation. Training the same network on the STRAIGHT path between those paired points
(x_t = (1 - t) x0 + t x1, target x1 - x0) makes the student's trajectories straight, so one or
two Euler steps land where the teacher's N steps do. It needs no new network head (shortcut
models and MeanFlow add a step-size input), no new export path (the student is an ordinary
checkpoint; ``flow-policy export`` unrolls its ``solver_steps``) and no extra data: pairs are
drawn online from the training observations, a fresh x0 every step, so the student never sees
the same pair twice.

Classifier-free guidance stays a run-time input: each branch is distilled on its own. A sample
is conditional (the teacher's conditional field alone, i.e. w = 1) or, with probability
``uncond_fraction``, unconditional (the null condition, w = 0); the student keeps both branches
and the exported graph combines them with the w it is given, as every model here does. At the
trained w = 1 the student reproduces the teacher's conditional map; at other w the straight
combination of the branches approximates the teacher's guided ODE (exact for w in {0, 1}).

Flow times: a fraction ``grid_fraction`` (default half) of the samples take t on the student's own
grid {k / N_student} (the only times its sampler evaluates), the rest t ~ U(0, 1) (the reflow
objective proper, which keeps the field consistent between grid points). The student starts from the teacher's EMA weights.

Everything runs in the teacher's flow space (spline coefficients with a chunk basis), with the
teacher's noise temperature (``policy.noise_scale``), its normalization statistics, its
position-noise augmentation of the observations and its train/validation episode split. The
validation figure is the student-teacher gap: mean squared difference (normalized units) of the
student's N_student-step chunk and the teacher's chunk from the same noise, on held-out episodes.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from flow_policy_ros.errors import UsageError
from flow_policy_ros.policy.checkpoint import Checkpoint, code_version, file_sha256, load_checkpoint, save_checkpoint
from flow_policy_ros.policy.flow import evaluation_times, integrate, interpolate, target_velocity
from flow_policy_ros.policy.model import VelocityNet
from flow_policy_ros.policy.train import PositionNoise, ema_decay, lr_factor, split_episodes, update_ema
from flow_policy_ros.policy.train_log import CSV_NAME, StopOnInterrupt, TrainingLog
from flow_policy_ros.reports import portable_path, write_json

#: Held-out observations used for the student-teacher gap.
GAP_WINDOWS = 2048


@dataclass(frozen=True)
class DistillSettings:
    """Settings of one distillation run.

    Attributes:
        student_steps: Euler steps N of the student's sampler (its ``policy.solver_steps``), >= 1.
        steps: optimizer steps.
        teacher_steps: Euler steps of the teacher's sampler that makes the pairs (0: the teacher's own).
        batch_size: pairs per step.
        lr: AdamW peak learning rate (warm-up, cosine to 10%, as ``train``).
        uncond_fraction: fraction of pairs from the unconditional branch.
        seed: seed of batches, noise, branch choice and flow times.
        val_every: steps between student-teacher gap evaluations.
        grid_fraction: fraction of flow times on the student's grid {k / N} (the rest uniform).
    """

    student_steps: int = 1
    steps: int = 10000
    teacher_steps: int = 0
    batch_size: int = 256
    lr: float = 3e-4
    uncond_fraction: float = 0.25
    seed: int = 0
    val_every: int = 500
    grid_fraction: float = 0.5

    def check(self) -> None:
        """UsageError naming the setting that is out of range."""
        for name, low in (("student_steps", 1), ("steps", 1), ("teacher_steps", 0), ("batch_size", 1), ("val_every", 1)):
            if getattr(self, name) < low:
                raise UsageError(f"distill: {name} must be >= {low}, got {getattr(self, name)}")
        if not self.lr > 0:
            raise UsageError(f"distill: lr must be > 0, got {self.lr}")
        for name in ("uncond_fraction", "grid_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise UsageError(f"distill: {name} must be in [0, 1], got {getattr(self, name)}")


@dataclass
class DistillResult:
    """The student checkpoint written last, its step, the final loss and student-teacher gap."""

    checkpoint_path: Path
    final_loss: float
    steps: int
    seconds: float
    gap: float | None
    interrupted: bool = False


@torch.no_grad()
def teacher_endpoints(teacher: VelocityNet, obs_n: torch.Tensor, x0: torch.Tensor, drop: torch.Tensor,
                      steps: int) -> torch.Tensor:
    """Where the teacher's ``steps``-step Euler sampler takes flow states x0 (B, K, A), per branch.

    Rows with ``drop`` (B,) True follow the unconditional field (w = 0), the others the
    conditional field (w = 1); obs_n (B, obs_dim) normalized. Returns x1 (B, K, A).
    """
    cond = teacher.condition(obs_n, drop)
    shape = x0.shape

    def velocity(x: torch.Tensor, t: float) -> torch.Tensor:
        t_const = torch.full((1,), t, dtype=x.dtype, device=x.device)
        return teacher.velocity_flat(x, t_const, cond)

    return integrate(velocity, x0.reshape(shape[0], -1), steps).reshape(shape)


def student_times(batch: int, student_steps: int, generator: torch.Generator, device: torch.device,
                  grid_fraction: float = 0.5) -> torch.Tensor:
    """Flow times (B,): a ``grid_fraction`` on the student's Euler grid {k / N}, the rest uniform in [0, 1)."""
    grid = torch.tensor(evaluation_times("euler", student_steps), dtype=torch.float32, device=device)
    on_grid = grid[torch.randint(len(grid), (batch,), generator=generator, device=device)]
    uniform = torch.rand(batch, generator=generator, device=device)
    pick = torch.rand(batch, generator=generator, device=device) < grid_fraction
    return torch.where(pick, on_grid, uniform)


def reflow_loss(student: VelocityNet, obs_n: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor, drop: torch.Tensor,
                t: torch.Tensor) -> torch.Tensor:
    """Mean squared error of the student's velocity on the straight path between paired x0, x1 (B, K, A)."""
    x_t = interpolate(x0, x1, t)
    prediction = student(x_t, t, student.condition(obs_n, drop))
    return torch.mean((prediction - target_velocity(x0, x1)) ** 2)


def draw_noise(model: VelocityNet, batch: int, horizon: int, action_dim: int, noise_scale: float,
               generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """x0 in flow space (B, K, A): the sampler's noise (B, H, A) ~ N(0, I), scaled by tau, encoded."""
    noise = torch.randn((batch, horizon, action_dim), generator=generator, device=device)
    return model.encode(noise_scale * noise)


@torch.no_grad()
def student_teacher_gap(student: VelocityNet, teacher: VelocityNet, obs_n: torch.Tensor, settings: DistillSettings,
                        teacher_steps: int, noise_scale: float, horizon: int, action_dim: int, seed: int) -> float:
    """Mean squared difference of the student's and the teacher's conditional chunks (flow space)
    from the same noise, over ``obs_n`` (V, obs_dim), with a fixed noise stream."""
    generator = torch.Generator(device=obs_n.device).manual_seed(seed)
    x0 = draw_noise(teacher, len(obs_n), horizon, action_dim, noise_scale, generator, obs_n.device)
    keep = torch.zeros(len(obs_n), dtype=torch.bool, device=obs_n.device)
    want = teacher_endpoints(teacher, obs_n, x0, keep, teacher_steps)
    got = teacher_endpoints(student, obs_n, x0, keep, settings.student_steps)
    return float(torch.mean((got - want) ** 2))


def distill(
    teacher_path: str | Path,
    data_path: str | Path,
    out_dir: str | Path,
    settings: DistillSettings,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> DistillResult:
    """Distill the flow teacher at ``teacher_path`` into a ``settings.student_steps``-step student.

    ``data_path``: the teacher's training data (npz windows or a directory of rosbag2 episodes;
    only the observations are used). Writes ``OUT/last.pt`` (an ordinary checkpoint whose
    ``policy.solver_steps`` is the student's N: ``flow-policy export`` unrolls it), ``train_log.csv``
    (loss; the gap in the validation column), ``loss.png`` and ``distill_summary.json``. Ctrl-C
    stops after the current step and saves ``last.pt``.
    """
    from flow_policy_ros.policy.dataset import load_training_data

    settings.check()
    say = log or (lambda _message: None)
    teacher_path, out_dir = Path(teacher_path), Path(out_dir)
    ckpt = load_checkpoint(teacher_path)
    config = ckpt.config
    policy_cfg = config.policy
    if config.train.objective != "flow":
        raise UsageError(f"{teacher_path}: a {config.train.objective!r} checkpoint has no flow to distill")
    if policy_cfg.rtc_max_delay > 0:
        raise UsageError(f"{teacher_path}: real-time chunking teachers (rtc_max_delay {policy_cfg.rtc_max_delay}) "
                         "are not supported by distill")
    teacher_steps = settings.teacher_steps or policy_cfg.solver_steps
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device("cpu")

    windows = load_training_data(Path(data_path), policy_cfg, config.data, cache_dir=None, progress=progress)
    split = split_episodes(windows.episode_index, config.train.val_fraction, config.train.seed)
    stats = ckpt.stats
    obs_all = torch.tensor(stats.normalize_obs(windows.observations), dtype=torch.float32)
    obs_n = obs_all[torch.as_tensor(split.train)]
    val_rows = np.asarray(split.val)[: GAP_WINDOWS]
    obs_val = obs_all[torch.as_tensor(val_rows)] if len(val_rows) else obs_n[:GAP_WINDOWS]
    say(f"teacher {teacher_path.name}: {teacher_steps}-step Euler, noise scale {policy_cfg.noise_scale:g}; "
        f"student: {settings.student_steps}-step Euler, {settings.steps} steps; "
        f"observations from {len(obs_n)} training windows ({len(np.unique(windows.episode_index))} episodes)")
    position_noise = PositionNoise(policy_cfg, stats, config.train.position_noise_std, device,
                                   config.train.position_noise_blend_steps)

    teacher = VelocityNet(policy_cfg)
    teacher.load_state_dict(ckpt.ema_state)
    teacher.eval().requires_grad_(False)
    torch.manual_seed(settings.seed)
    student = copy.deepcopy(teacher).train().requires_grad_(True)
    ema = copy.deepcopy(student).requires_grad_(False)
    optimizer = torch.optim.AdamW(student.parameters(), lr=settings.lr, weight_decay=config.train.weight_decay)
    generator = torch.Generator(device=device).manual_seed(settings.seed * 1_000_003 + 424_242)
    horizon, action_dim = policy_cfg.horizon, policy_cfg.action_dim
    gap_args = (settings, teacher_steps, policy_cfg.noise_scale, horizon, action_dim, settings.seed + 99)
    gap0 = student_teacher_gap(ema, teacher, obs_val, *gap_args)
    say(f"student-teacher gap before distillation (teacher weights at {settings.student_steps} step(s)): {gap0:.5f}")

    student_config = replace(config, policy=replace(policy_cfg, solver_steps=settings.student_steps))
    summary = dict(ckpt.data_summary)
    summary.update({
        "distillation_method": "reflow",
        "distilled_from": portable_path(teacher_path),
        "teacher_sha256": file_sha256(teacher_path),
        "teacher_euler_steps": teacher_steps,
        "distill_steps": settings.steps,
        "distill_uncond_fraction": settings.uncond_fraction,
    })
    train_log = TrainingLog(out_dir / CSV_NAME)

    def make_checkpoint(step: int) -> Checkpoint:
        return Checkpoint(
            config=student_config, stats=stats,
            model_state={k: v.detach().clone() for k, v in student.state_dict().items()},
            ema_state={k: v.detach().clone() for k, v in ema.state_dict().items()},
            step=step, data_summary=summary, loss_history=train_log.rows, code_version=code_version(),
        )

    started = time.perf_counter()
    bar = tqdm(range(settings.steps), desc="distill", unit="step", disable=not progress, dynamic_ncols=True)
    running, gap, done = None, gap0, 0
    with StopOnInterrupt() as stop:
        for step in bar:
            if stop.requested:
                break
            lr = settings.lr * lr_factor(step, settings.steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            index = torch.randint(len(obs_n), (settings.batch_size,), generator=generator)
            batch_obs, _ = position_noise(obs_n[index], torch.zeros(settings.batch_size, horizon, action_dim), generator)
            drop = torch.rand(settings.batch_size, generator=generator) < settings.uncond_fraction
            x0 = draw_noise(teacher, settings.batch_size, horizon, action_dim, policy_cfg.noise_scale, generator, device)
            x1 = teacher_endpoints(teacher, batch_obs, x0, drop, teacher_steps)
            t = student_times(settings.batch_size, settings.student_steps, generator, device, settings.grid_fraction)
            loss = reflow_loss(student, batch_obs, x0, x1, drop, t)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
            optimizer.step()
            update_ema(ema, student, ema_decay(step, config.train.ema_decay))
            value = float(loss.detach())
            if not math.isfinite(value):
                raise RuntimeError(f"distillation diverged at step {step}: loss {value}")
            running = value if running is None else 0.98 * running + 0.02 * value
            done = step + 1
            validate = done % settings.val_every == 0 or done == settings.steps
            if validate:
                gap = student_teacher_gap(ema, teacher, obs_val, *gap_args)
                if not progress:
                    say(f"step {done}/{settings.steps}: loss {running:.5f}, student-teacher gap {gap:.5f}")
            if validate or done % config.train.log_every == 0:
                train_log.add(done, running, gap if validate else None, lr, time.perf_counter() - started)
                bar.set_postfix(loss=f"{running:.5f}", gap=f"{gap:.5f}")
        interrupted = stop.requested and done < settings.steps
    bar.close()
    seconds = time.perf_counter() - started
    save_checkpoint(out_dir / "last.pt", make_checkpoint(done))
    if interrupted:
        say(f"interrupted at step {done}/{settings.steps}: checkpoint saved to {out_dir / 'last.pt'}")
    train_log.plot(out_dir / "loss.png", title="reflow distillation loss (validation column: student-teacher gap)")
    final = float(running if running is not None else float("nan"))
    write_json(out_dir / "distill_summary.json", {
        "teacher": portable_path(teacher_path), "steps": done, "target_steps": settings.steps,
        "interrupted": interrupted, "final_loss": final, "gap_before": gap0, "gap": gap, "seconds": seconds,
        "settings": settings.__dict__, "teacher_euler_steps": teacher_steps,
    })
    return DistillResult(out_dir / "last.pt", final, done, seconds, gap, interrupted)
