"""``flow-policy train``: the command-line verb (arguments, progress, report) over :mod:`flow_policy_ros.policy.train`.

Prints the dataset size and its train/validation split, the step a ``--resume`` runs to, and at
the end the checkpoint written. Ctrl-C stops after the current step, saves ``OUT/last.pt``,
says where, and exits with status 130 (a second Ctrl-C stops at once, without saving).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import torch

from flow_policy_ros.cli import EXIT_INTERRUPTED, CliError, say, write_json
from flow_policy_ros.policy.config import ExperimentConfig
from flow_policy_ros.policy.density_training import attach_to_run
from flow_policy_ros.policy.train import train


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", help="training windows (.npz) or a directory of rosbag2 episodes")
    parser.add_argument("--config", help="training config YAML (policy/data/train sections); defaults otherwise")
    parser.add_argument("--out", required=True, help="output directory for checkpoints and plots")
    parser.add_argument("--resume", help="checkpoint to continue from (e.g. OUT/last.pt); it runs on to train.steps")
    parser.add_argument("--steps", type=int, help="override train.steps")
    parser.add_argument("--seed", type=int, help="override train.seed")
    parser.add_argument("--objective", choices=["flow", "regression"], help="override train.objective")
    parser.add_argument("--val-fraction", type=float, help="override train.val_fraction (episodes held out; 0 = none)")
    parser.add_argument("--json", help="write the run summary to this JSON file")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch CPU threads per process (default 1: this small MLP trains fastest single-threaded, and "
             "several threads per process on a shared CPU oversubscribe it badly)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _apply_overrides(config: ExperimentConfig, args: argparse.Namespace) -> ExperimentConfig:
    data: dict[str, Any] = config.to_dict()
    for key in ("steps", "seed", "objective", "val_fraction"):
        value = getattr(args, key)
        if value is not None:
            data["train"][key] = value
    return ExperimentConfig.from_dict(data)


def run(args: argparse.Namespace) -> int:
    if not Path(args.data).exists():
        raise CliError(f"training data {args.data} not found")
    config = ExperimentConfig.from_yaml(args.config) if args.config else ExperimentConfig()
    config = _apply_overrides(config, args)
    if args.threads < 1:
        raise CliError(f"--threads {args.threads}: must be >= 1")
    torch.set_num_threads(args.threads)
    result = train(args.data, config, args.out, resume=args.resume, progress=not args.no_progress, log=say)
    if int(os.environ.get("RANK", "0")) == 0:
        val = "" if result.val_loss is None else f", validation loss {result.val_loss:.4f}"
        if result.interrupted:
            print(f"stopped at step {result.steps}/{config.train.steps} (Ctrl-C) after {result.seconds:.1f} s, "
                  f"final loss {result.final_loss:.4f}{val} -> {result.checkpoint_path}")
        else:
            print(f"trained {result.steps} steps in {result.seconds:.1f} s, final loss {result.final_loss:.4f}{val} "
                  f"-> {result.checkpoint_path}")
        if not result.interrupted:
            attach_to_run(result.checkpoint_path, Path(args.data), log=say)  # density.enabled: the observation density
        write_json(
            args.json,
            {"checkpoint": str(result.checkpoint_path), "final_loss": result.final_loss, "val_loss": result.val_loss,
             "steps": result.steps, "target_steps": config.train.steps, "interrupted": result.interrupted,
             "seconds": result.seconds, "log": str(result.log_path)},
        )
    return EXIT_INTERRUPTED if result.interrupted else 0
