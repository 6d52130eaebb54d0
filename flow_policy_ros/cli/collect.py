"""``flow-policy collect``: the command-line verb (arguments, progress, report) over :mod:`flow_policy_ros.sim.collect`."""

from __future__ import annotations

import argparse
import collections
from pathlib import Path

from tqdm import tqdm

from flow_policy_ros.cli import CliError, write_json
from flow_policy_ros.sim.camera import CAMERA_MODES, CameraSpec, camera_enabled, load_camera
from flow_policy_ros.sim.collect import (
    STORAGES,
    episode_dir,
    episode_seeds,
    recording_data_config,
)
from flow_policy_ros.sim.env import SimEnv
from flow_policy_ros.sim.experts import ScriptedExpert
from flow_policy_ros.sim.rollout import run_expert_episode
from flow_policy_ros.sim.tasks import CAMERA_TASKS, TASKS


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", required=True, choices=TASKS, help="which task to demonstrate")
    parser.add_argument("--episodes", type=int, required=True, help="number of episodes to record")
    parser.add_argument("--out", type=Path, required=True, help="output directory (one bag per episode)")
    parser.add_argument("--seed", type=int, default=0, help="collection seed (episode seeds derive from it)")
    parser.add_argument("--storage", choices=STORAGES, default="mcap", help="rosbag2 storage plugin")
    parser.add_argument("--camera", choices=CAMERA_MODES, default="auto",
                        help="record the camera: auto = for camera tasks (reach_object) only")
    parser.add_argument("--sim-config", type=Path, default=None,
                        help="sim_node parameter file whose camera_* settings to use (default: the built-in camera, "
                             "as in config/sim.yaml)")
    parser.add_argument("--json", type=Path, default=None, help="write a machine-readable summary here")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from flow_policy_ros.data.bag import write_episode_bag

    seeds = episode_seeds(args.seed, args.episodes)
    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {out}: exists and is not a directory")
    taken = [str(episode_dir(out, i)) for i in range(len(seeds)) if episode_dir(out, i).exists()]
    if taken:
        raise CliError(f"--out {out}: {len(taken)} episode(s) already exist, e.g. {taken[0]}; choose another directory")
    if args.json is not None and not args.json.parent.is_dir():
        raise CliError(f"--json {args.json}: directory {args.json.parent} does not exist")
    camera = None
    if camera_enabled(args.camera, args.task in CAMERA_TASKS):
        try:
            camera = CameraSpec() if args.sim_config is None else load_camera(args.sim_config)
        except ValueError as exc:
            raise CliError(f"--sim-config: {exc}") from exc
    data_config = recording_data_config(args.task)
    out.mkdir(parents=True, exist_ok=True)

    successes = 0
    routes: collections.Counter[str] = collections.Counter()
    failed_seeds: list[int] = []
    with SimEnv(record=True, camera=camera) as env:
        expert = ScriptedExpert()
        try:
            bar = tqdm(list(enumerate(seeds)), desc=f"collect {args.task}", unit="ep", disable=args.no_progress)
            for index, seed in bar:
                recording = run_expert_episode(args.task, seed, env=env, expert=expert)
                recording.metadata["episode_index"] = index
                write_episode_bag(episode_dir(out, index), recording, storage=args.storage, data_config=data_config)
                if recording.metadata["success"]:
                    successes += 1
                else:
                    failed_seeds.append(seed)
                if recording.metadata["route"] is not None:
                    routes[str(recording.metadata["route"])] += 1
                bar.set_postfix(success=f"{successes}/{index + 1}")
        finally:
            expert.close()

    rate = successes / len(seeds)
    print(f"expert success rate on {args.task}: {successes}/{len(seeds)} = {rate:.1%} (bags in {out})")
    if routes:
        print("routes: " + ", ".join(f"{name} {count}" for name, count in sorted(routes.items())))
    write_json(
        args.json,
        {
            "task": args.task,
            "episodes": len(seeds),
            "seed": args.seed,
            "episode_seeds": [seeds[0], seeds[-1]],
            "successes": successes,
            "success_rate": rate,
            "failed_seeds": failed_seeds,
            "routes": dict(routes),
            "storage": args.storage,
            "camera": None if camera is None else {"name": camera.name, "width": camera.width,
                                                   "height": camera.height, "rate_hz": camera.rate_hz},
            "goal_topic": data_config.goal_topic,
            "out": str(out),
            "command": (
                f"flow-policy collect --task {args.task} --episodes {args.episodes} --out {out} "
                f"--seed {args.seed} --storage {args.storage} --camera {args.camera}"
                + (f" --sim-config {args.sim_config}" if args.sim_config is not None else "")
            ),
        },
    )
    return 0
