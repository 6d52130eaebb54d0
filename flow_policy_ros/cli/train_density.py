"""``flow-policy train-density CKPT DATA --out CKPT2``: give an existing checkpoint an observation density.

The policy's weights, statistics and config are copied unchanged (its exported actions are
bit-identical); the density is fitted on the windows of DATA (the policy's training data) with the
checkpoint's normalization (:mod:`flow_policy_ros.policy.density_training`). Export it with
``flow-policy export CKPT2 --density-calibration HELD_OUT``.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import fields
from pathlib import Path

from flow_policy_ros.cli import write_json
from flow_policy_ros.errors import UsageError
from flow_policy_ros.policy.config import DensityTrainConfig


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="checkpoint .pt of a trained policy")
    parser.add_argument("data", type=Path, help="the policy's training data (directory of rosbag2 episodes or windows .npz)")
    parser.add_argument("--out", type=Path, required=True, help="output checkpoint .pt (may equal the input)")
    defaults = DensityTrainConfig()
    for f in fields(DensityTrainConfig):
        if f.name == "enabled":
            continue
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=type(getattr(defaults, f.name)),
                            default=getattr(defaults, f.name), help=f"density.{f.name} (default {getattr(defaults, f.name)})")
    parser.add_argument("--copy-from", type=Path, default=None, metavar="CKPT",
                        help="instead of training, copy the density of CKPT, whose observation normalization must be "
                             "identical (a distilled student of the same teacher and data)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--json", type=Path, default=None, help="write the training summary here")


def run(args: argparse.Namespace) -> int:
    import torch

    from flow_policy_ros.errors import ConfigError
    from flow_policy_ros.policy.density_training import add_density

    if args.out.suffix != ".pt":
        raise UsageError(f"--out {args.out}: expected a .pt file name")
    torch.set_num_threads(max(1, args.threads))
    try:
        cfg = DensityTrainConfig(enabled=True, **{f.name: getattr(args, f.name) for f in fields(DensityTrainConfig)
                                                  if f.name != "enabled"})
    except ConfigError as exc:
        raise UsageError(str(exc)) from exc
    started = time.perf_counter()
    if args.copy_from is not None:
        from flow_policy_ros.policy.density_training import copy_density

        copy_density(args.copy_from, args.checkpoint, args.out)
        print(f"density copied from {args.copy_from} (identical observation normalization); wrote {args.out}")
        return 0
    ckpt = add_density(args.checkpoint, args.data, args.out, cfg)
    training = ckpt.density["training"]
    seconds = time.perf_counter() - started
    print(f"density: {training['steps']} steps on {training['windows']} windows ({training.get('episodes')} episodes) "
          f"in {seconds:.0f} s, final loss {training['final_loss']:.4f}; wrote {args.out}")
    write_json(args.json, {"checkpoint": str(args.out), "seconds": seconds, "training": training})
    return 0
