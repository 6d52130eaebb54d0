"""The ``flow-policy`` command: one verb per job, each implemented in its own module.

Every verb module exposes ``configure_parser(parser)`` and ``run(args) -> int``. Modules are
imported only when their verb runs, so ``flow-policy replay`` never loads torch or pybullet.
Bad input raises ``CliError`` (or one of the package's own error types), which is printed as
one line naming the problem, with exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Any

#: verb -> (module, one-line help)
VERBS: dict[str, tuple[str, str]] = {
    "collect": ("flow_policy_ros.sim.collect", "record scripted-expert episodes in PyBullet as rosbag2"),
    "train": ("flow_policy_ros.train", "train a flow-matching policy on windows or rosbag2 episodes"),
    "export": ("flow_policy_ros.export", "export a checkpoint's whole sampler to one ONNX file"),
    "eval-sim": ("flow_policy_ros.sim.evaluate", "closed-loop evaluation of an ONNX policy in PyBullet"),
    "replay": ("flow_policy_ros.replay", "offline evaluation of a policy on rosbag2 recordings"),
    "play": ("flow_policy_ros.play", "publish a rosbag2 recording live on its topics"),
    "bench": ("flow_policy_ros.bench", "latency/throughput benchmarks"),
    "demo": ("flow_policy_ros.demo", "sim_node + policy_node over ROS 2 with the shipped model"),
}


class CliError(Exception):
    """Bad input on the command line; printed as one line, exit status 2."""


def write_json(path: str | Path | None, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically (no-op when path is None)."""
    if path is None:
        return
    path = Path(path)
    if not path.parent.is_dir():
        raise CliError(f"--json {path}: directory {path.parent} does not exist")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


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
        return 130
    except Exception as exc:  # noqa: BLE001 - the one place that turns errors into exit codes
        if _is_user_error(exc):
            print(f"flow-policy {verb}: error: {exc}", file=sys.stderr)
            return 2
        raise


def _is_user_error(exc: Exception) -> bool:
    """Errors caused by bad input (one line, exit 2) as opposed to bugs (traceback)."""
    # imported by module path: under `python -m flow_policy_ros.cli` this file is __main__
    from flow_policy_ros.cli import CliError as PackageCliError
    from flow_policy_ros.config import ConfigError
    from flow_policy_ros.errors import FlowPolicyError

    return isinstance(exc, (CliError, PackageCliError, ConfigError, FlowPolicyError, FileNotFoundError))


if __name__ == "__main__":
    sys.exit(main())
