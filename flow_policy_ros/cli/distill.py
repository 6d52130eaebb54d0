"""``flow-policy distill``: the command-line verb over :mod:`flow_policy_ros.policy.distill`.

Distills a many-step flow checkpoint into a few-step student (rectified-flow reflow) and
writes an ordinary checkpoint: ``flow-policy export OUT/last.pt --out student.onnx`` unrolls
its ``--student-steps``. Ctrl-C stops after the current step and saves ``OUT/last.pt``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from flow_policy_ros.cli import EXIT_INTERRUPTED, CliError, say, write_json
from flow_policy_ros.policy.distill import DistillSettings, distill


def configure_parser(parser: argparse.ArgumentParser) -> None:
    defaults = DistillSettings()
    parser.add_argument("teacher", help="flow checkpoint .pt to distill (written by `flow-policy train`)")
    parser.add_argument("data", help="the teacher's training data (.npz windows or a directory of rosbag2 episodes)")
    parser.add_argument("--out", required=True, help="output directory (last.pt, train_log.csv, loss.png)")
    parser.add_argument("--student-steps", type=int, default=defaults.student_steps,
                        help=f"Euler steps of the student's sampler (default {defaults.student_steps})")
    parser.add_argument("--steps", type=int, default=defaults.steps,
                        help=f"optimizer steps (default {defaults.steps})")
    parser.add_argument("--teacher-steps", type=int, default=defaults.teacher_steps,
                        help="Euler steps of the teacher's sampler that makes the pairs (default: its own)")
    parser.add_argument("--lr", type=float, default=defaults.lr, help=f"peak learning rate (default {defaults.lr:g})")
    parser.add_argument("--uncond-fraction", type=float, default=defaults.uncond_fraction,
                        help=f"fraction of unconditional-branch pairs (default {defaults.uncond_fraction:g})")
    parser.add_argument("--grid-fraction", type=float, default=defaults.grid_fraction,
                        help=f"fraction of flow times on the student's step grid, the rest uniform (default {defaults.grid_fraction:g})")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1, as train)")
    parser.add_argument("--json", help="write the run summary to this JSON file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    if not Path(args.teacher).is_file():
        raise CliError(f"teacher checkpoint {args.teacher} not found")
    if not Path(args.data).exists():
        raise CliError(f"training data {args.data} not found")
    if args.threads < 1:
        raise CliError(f"--threads {args.threads}: must be >= 1")
    settings = DistillSettings(student_steps=args.student_steps, steps=args.steps, teacher_steps=args.teacher_steps,
                               lr=args.lr, uncond_fraction=args.uncond_fraction, seed=args.seed,
                               grid_fraction=args.grid_fraction)
    torch.set_num_threads(args.threads)
    result = distill(args.teacher, args.data, args.out, settings, progress=not args.no_progress, log=say)
    gap = "" if result.gap is None else f", student-teacher gap {result.gap:.5f}"
    verb = "stopped (Ctrl-C) at" if result.interrupted else "distilled"
    print(f"{verb} {result.steps} steps in {result.seconds:.1f} s, loss {result.final_loss:.5f}{gap} "
          f"-> {result.checkpoint_path}")
    write_json(args.json, {"checkpoint": str(result.checkpoint_path), "final_loss": result.final_loss,
                           "gap": result.gap, "steps": result.steps, "seconds": result.seconds,
                           "interrupted": result.interrupted, "student_steps": args.student_steps})
    return EXIT_INTERRUPTED if result.interrupted else 0
