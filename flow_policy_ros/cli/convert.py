"""``flow-policy convert``: rosbag2 episodes ⇄ LeRobotDataset v3.0, over :mod:`flow_policy_ros.data.lerobot_convert`.

    flow-policy convert BAGS... --to-lerobot OUT [--mapping config/lerobot_mapping.yaml]
    flow-policy convert DATASET --to-rosbag2 OUT [--mapping ...]

A directory that is not itself a bag stands for the bags under it (sorted), as for ``train``. Camera
Image topics become ``observation.images.<camera>`` videos (AV1 by default); docs/lerobot.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tqdm import tqdm

from flow_policy_ros.cli import CliError, expand_bags, say, write_json


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", type=Path, metavar="INPUT",
                        help="episode bags (or directories of them) for --to-lerobot; one dataset directory for --to-rosbag2")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--to-lerobot", type=Path, metavar="OUT", help="write a LeRobotDataset v3.0 here (must not exist)")
    target.add_argument("--to-rosbag2", type=Path, metavar="OUT", help="write one bag per episode into this new directory")
    parser.add_argument("--mapping", type=Path, default=None,
                        help="topic/feature mapping YAML (default: this package's topics, see config/lerobot_mapping.yaml)")
    parser.add_argument("--json", type=Path, default=None, help="write a machine-readable summary here")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from flow_policy_ros.data.lerobot_convert import bags_to_lerobot, lerobot_to_bags, load_mapping

    if args.json is not None and not args.json.parent.is_dir():
        raise CliError(f"--json {args.json}: directory {args.json.parent} does not exist")
    mapping = load_mapping(args.mapping)
    if args.to_lerobot is not None:
        bags = expand_bags(args.inputs)
        with tqdm(total=len(bags), desc="convert → lerobot", unit="ep", disable=args.no_progress) as bar:
            summary = bags_to_lerobot(bags, args.to_lerobot, mapping, progress=lambda _frames: bar.update())
        for bag, gaps in summary["gaps"].items():
            for topic, gap in gaps.items():
                if gap["count"]:
                    say(f"convert: {bag}: {topic}: {gap['count']} gap(s) over 1.5 periods (a camera: frame intervals), "
                        f"the longest {gap['longest_s']:.3f} s")
        cameras = ", ".join(f"{key} ({topic}, {mapping.video.vcodec})" for key, topic in summary["cameras"].items())
        say(f"convert: {summary['episodes']} episode(s), {summary['frames']} frames at {summary['fps']} fps"
            f"{'; videos ' + cameras if cameras else ''} → {args.to_lerobot}")
        write_json(args.json, {"to": "lerobot", "out": str(args.to_lerobot), **summary})
        return 0
    if len(args.inputs) != 1:
        raise CliError(f"--to-rosbag2 takes one dataset directory, got {len(args.inputs)} inputs")
    with tqdm(desc="convert → rosbag2", unit="ep", disable=args.no_progress) as bar:
        bags = lerobot_to_bags(args.inputs[0], args.to_rosbag2, mapping, progress=lambda _i, _name: bar.update())
    say(f"convert: {len(bags)} episode bag(s) ({mapping.storage}) → {args.to_rosbag2}")
    write_json(args.json, {"to": "rosbag2", "out": str(args.to_rosbag2), "episodes": len(bags),
                           "bags": [str(b) for b in bags], "storage": mapping.storage})
    return 0
