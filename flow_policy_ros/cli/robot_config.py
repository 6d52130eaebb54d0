"""``flow-policy robot-config``: the robot section of a training config from the arm's URDF.

    flow-policy robot-config --urdf my_arm.urdf --out my_arm_robot.yaml
    flow-policy robot-config --urdf my_arm.urdf --base-link base_link --tip-link tool0 --velocity-scale 0.3

Prints (or writes to ``--out``) the ``policy:`` keys ``observation.joint_names``,
``action_joint_names`` and ``limits`` with a comment header naming the URDF and the factors; the
rules are in :mod:`flow_policy_ros.policy.robot`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flow_policy_ros.cli import CliError
from flow_policy_ros.policy.robot import DEFAULT_MAX_VELOCITY, DEFAULT_VELOCITY_SCALE, parse_urdf, robot_section


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--urdf", type=Path, required=True,
                        help="the arm's URDF file (xacro already expanded: `xacro arm.urdf.xacro > arm.urdf`, or save "
                             "the robot_description parameter: `ros2 param get --hide-type /robot_state_publisher "
                             "robot_description > arm.urdf`)")
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


def run(args: argparse.Namespace) -> int:
    if not args.urdf.is_file():
        raise CliError(f"--urdf {args.urdf}: file not found")
    try:
        text = args.urdf.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"--urdf {args.urdf}: cannot read it ({exc})") from exc
    if args.max_velocity is not None and args.max_velocity < 0:
        raise CliError(f"--max-velocity {args.max_velocity}: must be >= 0 (0 = no cap)")
    section = robot_section(
        parse_urdf(text, str(args.urdf)), joints=args.joints, base_link=args.base_link, tip_link=args.tip_link,
        velocity_scale=args.velocity_scale, max_velocity=args.max_velocity or None,
        continuous_limit=args.continuous_limit,
    )
    yaml_text = section.to_yaml()
    if args.out is None:
        sys.stdout.write(yaml_text)
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(yaml_text)
        print(f"{len(section.joint_names)} joints of {args.urdf} -> {args.out}")
    return 0
