"""``flow-policy robot-config``: the robot section of a training config from the arm's URDF.

    flow-policy robot-config --urdf my_arm.urdf --out my_arm_robot.yaml
    flow-policy robot-config --urdf my_arm.urdf --base-link base_link --tip-link tool0 --velocity-scale 0.3
    flow-policy robot-config --from-parameter /robot_state_publisher --out my_arm_robot.yaml

Prints (or writes to ``--out``) the ``policy:`` keys ``observation.joint_names``,
``action_joint_names`` and ``limits`` with a comment header naming the URDF and the factors; the
rules are in :mod:`flow_policy_ros.policy.robot`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flow_policy_ros.cli import CliError, write_json
from flow_policy_ros.policy.robot import DEFAULT_MAX_VELOCITY, DEFAULT_VELOCITY_SCALE, parse_urdf, robot_section


def configure_parser(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--urdf", type=Path,
                        help="the arm's URDF file (xacro already expanded: `xacro arm.urdf.xacro > arm.urdf`)")
    source.add_argument("--from-parameter", metavar="NODE",
                        help="read the robot_description parameter of this running node instead "
                             "(e.g. /robot_state_publisher), over DDS in the current ROS_DOMAIN_ID")
    parser.add_argument("--timeout", type=float, default=5.0,
                        help="seconds to wait for --from-parameter's node (default 5)")
    parser.add_argument("--joints", nargs="+", metavar="JOINT",
                        help="the action joints, in this order (default: the movable joints of the chain, root to tip)")
    parser.add_argument("--base-link", help="first link of the chain (default: the URDF's root link)")
    parser.add_argument("--tip-link", help="last link of the chain (default: the single tip; needed when the URDF branches)")
    parser.add_argument(
        "--velocity-scale", type=float, default=DEFAULT_VELOCITY_SCALE,
        help=f"factor in (0, 1] on the URDF velocity limits (default {DEFAULT_VELOCITY_SCALE}): a URDF's velocity "
             "limits are the motor ratings, far above a safe speed for a learned policy's first motions")
    parser.add_argument(
        "--max-velocity", type=float, default=DEFAULT_MAX_VELOCITY,
        help=f"absolute cap on every velocity limit, rad/s (m/s for prismatic joints; default {DEFAULT_MAX_VELOCITY}, "
             "the shipped iiwa models' limit); 0 for no cap")
    parser.add_argument("--continuous-limit", type=float, metavar="RAD",
                        help="position range [-RAD, RAD] for continuous joints (default: a continuous joint is an error)")
    parser.add_argument("--out", type=Path, help="write the YAML here (default: stdout)")
    parser.add_argument("--json", help="also write the joints, limits and factors to this JSON file")


def _urdf_text(args: argparse.Namespace) -> tuple[str, str]:
    """(URDF text, where it came from) of --urdf or --from-parameter."""
    if args.from_parameter is not None:
        if not args.timeout > 0:
            raise CliError(f"--timeout {args.timeout}: must be > 0 (s)")
        from flow_policy_ros.ros.remote_parameter import read_string_parameter

        text = read_string_parameter(args.from_parameter, "robot_description", args.timeout)
        return text, f"parameter robot_description of {args.from_parameter}"
    if not args.urdf.is_file():
        raise CliError(f"--urdf {args.urdf}: file not found")
    try:
        return args.urdf.read_text(), str(args.urdf)
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"--urdf {args.urdf}: cannot read it ({exc})") from exc


def run(args: argparse.Namespace) -> int:
    if args.max_velocity is not None and args.max_velocity < 0:
        raise CliError(f"--max-velocity {args.max_velocity}: must be >= 0 (0 = no cap)")
    text, source = _urdf_text(args)
    section = robot_section(
        parse_urdf(text, source), joints=args.joints, base_link=args.base_link, tip_link=args.tip_link,
        velocity_scale=args.velocity_scale, max_velocity=args.max_velocity or None,
        continuous_limit=args.continuous_limit,
    )
    write_json(args.json, {
        "source": section.source, "robot_name": section.robot_name, "joint_names": list(section.joint_names),
        "joint_types": list(section.joint_types), "lower": list(section.limits.lower),
        "upper": list(section.limits.upper), "velocity": list(section.limits.velocity),
        "urdf_velocity": list(section.urdf_velocity), "soft_limited": list(section.soft_limited),
        "velocity_scale": section.velocity_scale, "max_velocity": section.max_velocity,
        "continuous_limit": section.continuous_limit,
    })
    yaml_text = section.to_yaml()
    if args.out is None:
        sys.stdout.write(yaml_text)
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(yaml_text)
        print(f"{len(section.joint_names)} joints of {source} -> {args.out}")
    return 0
