"""The ``flow-policy`` command: one verb per job, each implemented in its own module.

The top layer: every verb lives in its own module here (``cli/<verb>.py``) and exposes
``configure_parser(parser)`` and ``run(args) -> int`` over the library below it; nothing in the
library imports this package. Modules are imported only when their verb runs, so
``flow-policy replay`` never loads torch or pybullet. Libraries raise the domain errors of
:mod:`flow_policy_ros.errors`; this is the one place that prints them as one line naming the
problem, with exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

from flow_policy_ros.errors import FlowPolicyError, UsageError, one_line
from flow_policy_ros.reports import write_json  # noqa: F401 - the verbs' JSON writer

#: verb -> (module, one-line help)
VERBS: dict[str, tuple[str, str]] = {
    "collect": ("flow_policy_ros.cli.collect", "record scripted-expert episodes in PyBullet as rosbag2"),
    "train": ("flow_policy_ros.cli.train", "train a flow-matching policy on windows or rosbag2 episodes"),
    "train-density": ("flow_policy_ros.cli.train_density", "add an observation density (OOD score) to a trained checkpoint"),
    "distill": ("flow_policy_ros.cli.distill", "distill a flow checkpoint into a few-step student (reflow)"),
    "export": ("flow_policy_ros.cli.export", "export a checkpoint's whole sampler to one ONNX file"),
    "eval-sim": ("flow_policy_ros.cli.eval_sim", "closed-loop evaluation of an ONNX policy in PyBullet"),
    "replay": ("flow_policy_ros.cli.replay", "offline evaluation of a policy on rosbag2 recordings"),
    "play": ("flow_policy_ros.cli.play", "publish a rosbag2 recording live on its topics"),
    "bench": ("flow_policy_ros.cli.bench", "latency/throughput benchmarks"),
    "demo": ("flow_policy_ros.cli.demo", "sim_node + policy_node over ROS 2 with the shipped model"),
    "convert": ("flow_policy_ros.cli.convert", "rosbag2 episodes <-> LeRobotDataset v3.0"),
    "robot-config": ("flow_policy_ros.cli.robot_config", "the robot section of a training config (joints, limits) from a URDF"),
}


#: Bad input on the command line; printed as one line, exit status 2 (the domain's UsageError).
CliError = UsageError

#: Exit status of a run stopped by Ctrl-C (128 + SIGINT).
EXIT_INTERRUPTED = 130


def say(message: str) -> None:
    """One report line on stdout, above a verb's progress bar when there is one."""
    from tqdm import tqdm

    tqdm.write(message, file=sys.stdout)


def expand_bags(paths: Sequence[Path]) -> list[Path]:
    """Each path that is not itself a rosbag2 directory stands for the bags under it (sorted), as for train."""
    from flow_policy_ros.data.bag import find_episodes

    bags: list[Path] = []
    for path in paths:
        found = find_episodes(path) if path.is_dir() else [path]  # a missing path: the bag reader names it
        if not found:
            raise CliError(f"{path}: no rosbag2 recording (metadata.yaml) in or under it")
        bags += found
    return bags


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flow-policy", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb, (module, help_text) in VERBS.items():
        verb_parser = sub.add_parser(verb, help=help_text, description=help_text)
        verb_parser.set_defaults(_module=module)
        # configure lazily only for the chosen verb (see main) to keep start-up light
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in VERBS:
        parser.parse_args(argv)  # prints help or the usage error and exits
        return 2
    verb = argv[0]
    module = importlib.import_module(VERBS[verb][0])
    verb_parser = argparse.ArgumentParser(prog=f"flow-policy {verb}", description=VERBS[verb][1])
    module.configure_parser(verb_parser)
    args = verb_parser.parse_args(argv[1:])
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print(f"flow-policy {verb}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - the one place that turns errors into exit codes
        if isinstance(exc, (FlowPolicyError, FileNotFoundError)):  # bad input, not a bug
            print(f"flow-policy {verb}: error: {one_line(exc)}", file=sys.stderr)
            return 2
        raise
