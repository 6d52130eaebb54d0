#!/usr/bin/env python3
"""Per-row flow-matching loss of a checkpoint on training windows (which rows of the chunk it has learned).

For each row h of the chunk: E ||v(x_t, t, c)[h] - (x1 - x0)[h]||^2 over ``--windows`` random
windows of a windows cache (``runs/<run>/cache/windows-*.npz``), with t ~ U(0, 1), no condition
dropout, no position noise, EMA weights; with a smooth basis the velocity error is decoded to
action rows (x = M c); with ``--prefix D`` (RTC models) the first D rows of the target are the
network's prefix input, as in training. Also prints each row's spread of the normalized target:
a loss near 1 (= Var(x0)) on a row means the network leaves the noise in place there.

    .venv/bin/python scripts/per_row_loss.py runs/reach_around_rtc/last.pt runs/reach_around_rtc/cache/windows-*.npz
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("cache", type=Path, help="windows .npz of the same horizon")
    parser.add_argument("--windows", type=int, default=4096)
    parser.add_argument("--prefix", type=int, nargs="+", default=[0], help="prefix lengths d to evaluate (RTC models)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    import torch

    from flow_policy_ros.policy.checkpoint import load_checkpoint
    from flow_policy_ros.policy.flow import prefix_mask
    from flow_policy_ros.policy.model import VelocityNet
    from flow_policy_ros.policy.normalization import action_reference

    ckpt = load_checkpoint(args.checkpoint)
    cfg = ckpt.config.policy
    net = VelocityNet(cfg)
    net.load_state_dict(ckpt.ema_state)
    net.eval()
    data = np.load(args.cache)
    idx = np.sort(np.random.default_rng(args.seed).choice(len(data["observations"]), args.windows, replace=False))
    obs, act = data["observations"][idx], data["actions"][idx]
    if act.shape[1] != cfg.horizon:
        parser.error(f"{args.cache}: chunks of {act.shape[1]} actions, the checkpoint's horizon is {cfg.horizon}")
    rel = act - action_reference(obs, cfg.action_reference_indices())
    obs_n = torch.tensor(ckpt.stats.normalize_obs(obs), dtype=torch.float32)
    actions = torch.tensor(ckpt.stats.normalize_actions(rel), dtype=torch.float32)
    x1 = net.encode(actions)
    gen = torch.Generator().manual_seed(args.seed)
    np.set_printoptions(precision=3, suppress=True, linewidth=250)
    for d in args.prefix:
        x0 = torch.randn(x1.shape, generator=gen)
        t = torch.rand(x1.shape[0], generator=gen)
        x_t = (1 - t)[:, None, None] * x0 + t[:, None, None] * x1
        with torch.no_grad():
            prefix_feat = net.prefix_features(actions, prefix_mask(torch.full((len(actions),), d), cfg.horizon)) if d else None
            pred = net(x_t, t, net.condition(obs_n), prefix_feat)
            error = net.decode(pred - (x1 - x0))
        print(f"d={d} per-row loss:", (error**2).mean((0, 2)).numpy())
    print("per-row std of the normalized target:", actions.std(0).mean(1).numpy())
    return 0


if __name__ == "__main__":
    sys.exit(main())
