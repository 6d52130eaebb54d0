#!/usr/bin/env python3
"""Episode directories without (or only with) goals inside a box "hole" of the goal region, for the
protocol's goal shift (docs/density_shield.md): the density is trained and calibrated on episodes
whose goals avoid the hole, so a goal inside it is inside every axis's range but outside the
training region.

    python scripts/density_goal_hole.py data/reach/seed1 --task reach --seed 1 \\
        --hole 0.52 0.63 -0.12 0.12 0.33 0.47 --out data/reach_hole/seed1

Episode i of ``flow-policy collect --seed S`` has episode seed S * 1,000,000 + i, so its goal is
``sample_episode(task, seed).goal``; the kept episodes are copied into ``--out`` (the bag finder
does not follow symlinks).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("episodes", type=Path, help="a `flow-policy collect --out` directory")
    parser.add_argument("--task", required=True)
    parser.add_argument("--seed", type=int, required=True, help="the collection's --seed")
    parser.add_argument("--hole", type=float, nargs=6, required=True, metavar=("X0", "X1", "Y0", "Y1", "Z0", "Z1"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    from flow_policy_ros.sim.collect import episode_dir, episode_seeds
    from flow_policy_ros.sim.tasks import sample_episode

    box = np.asarray(args.hole).reshape(3, 2)
    args.out.mkdir(parents=True, exist_ok=True)
    count = len(sorted(args.episodes.glob("episode_*")))
    kept = 0
    for index, seed in enumerate(episode_seeds(args.seed, count)):
        goal = sample_episode(args.task, seed).goal
        if np.all((goal >= box[:, 0]) & (goal <= box[:, 1])):
            continue
        target = args.out / episode_dir(Path("."), index).name
        if not target.exists():
            shutil.copytree(episode_dir(args.episodes, index), target)
        kept += 1
    print(f"{kept}/{count} episodes with goals outside the hole -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
