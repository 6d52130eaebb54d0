"""The robot section of a training config, read from the arm's URDF (``flow-policy robot-config``).

Pure Python (``xml.etree``, no ROS, no torch): a URDF text in, the action joints and their
limits out, as the ``policy`` keys of a training config::

    policy:
      observation: {joint_names: [...]}
      action_joint_names: [...]
      limits: {lower: [...], upper: [...], velocity: [...]}

Which joints: the movable joints (revolute, prismatic, continuous) of one kinematic chain, root
to tip, in order. Fixed joints carry no command and are skipped; a ``<mimic>`` joint follows
another joint and is skipped too (its driver moves it). Without ``base_link``/``tip_link`` the
chain is the one from the root link to the leaves when the tree has a single longest chain (an
arm, or an arm whose hand has one commanded finger and mimic ones); a tree that branches into
several commanded chains needs ``tip_link`` or an explicit joint list.

Limits, per joint, in URDF units (rad and rad/s; m and m/s for a prismatic joint):

- position: ``<limit lower upper>``, tightened by ``<safety_controller soft_lower_limit
  soft_upper_limit>`` when the URDF has one (the soft limits are what the robot's own
  controllers stay within). A continuous joint has none: an error unless ``continuous_limit``
  gives a symmetric range.
- velocity: ``min(velocity_scale * <limit velocity>, max_velocity)``. A URDF's velocity limit is
  the motor's rating (10 rad/s for the iiwa in pybullet_data; the real arm is rated 1.7-3.1
  rad/s), far above a speed to take a learned policy's first motions at; the node's
  ``max_velocity_scale`` can lower it further at run time, never raise it.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ElementTree
from collections.abc import Sequence
from dataclasses import dataclass

import yaml

from flow_policy_ros.contract import IIWA_JOINT_NAMES, JointLimits
from flow_policy_ros.errors import ConfigError

#: Joint types that a position command moves.
MOVABLE_TYPES = ("revolute", "prismatic", "continuous")
#: Default factor on the URDF velocity limit.
DEFAULT_VELOCITY_SCALE = 0.5
#: Default absolute cap on the velocity limit (rad/s): the conservative limit the shipped iiwa
#: models use (contract.IIWA_VELOCITY_LIMIT), well below most arms' ratings.
DEFAULT_MAX_VELOCITY = 1.5


def require_given_limits(policy: dict, where: str = "policy") -> None:
    """Refuse a policy config (as read from YAML/JSON) whose limits would silently be the iiwa's.

    ``JointLimits``' defaults are the iiwa's, in the iiwa's joint order; for any other action joints
    (other names, or the iiwa's in another order) ``limits`` must be given with lower, upper and
    velocity. Raises ConfigError naming the joints and pointing at ``flow-policy robot-config``.
    """
    names = tuple(policy.get("action_joint_names", IIWA_JOINT_NAMES))
    if names == IIWA_JOINT_NAMES:
        return
    limits = policy.get("limits")
    given = set(limits) if isinstance(limits, dict) else ({"lower", "upper", "velocity"} if limits is not None else set())
    missing = [key for key in ("lower", "upper", "velocity") if key not in given]
    if missing:
        shown = list(names) if len(names) <= 4 else [*names[:3], "..."]
        what = "is not given" if len(missing) == 3 else f"lacks {'/'.join(missing)}"
        raise ConfigError(
            f"{where}.limits {what}: the action joints {shown} are not the iiwa's {IIWA_JOINT_NAMES[0]}..7, "
            f"whose limits the defaults are; give your arm's limits (lower, upper, velocity) or generate them "
            f"with `flow-policy robot-config --urdf ARM.urdf`")


@dataclass(frozen=True)
class UrdfJoint:
    """One ``<joint>`` of a URDF, as far as commanding it is concerned.

    Attributes:
        name: joint name (as the driver publishes it in JointState).
        type: URDF joint type ('revolute', 'prismatic', 'continuous', 'fixed', ...).
        parent: parent link name.
        child: child link name.
        lower: ``<limit lower>`` (rad or m), None when absent.
        upper: ``<limit upper>`` (rad or m), None when absent.
        velocity: ``<limit velocity>`` (rad/s or m/s), None when absent.
        soft_lower: ``<safety_controller soft_lower_limit>``, None when absent.
        soft_upper: ``<safety_controller soft_upper_limit>``, None when absent.
        mimic: the joint this one mimics, None for an independent joint.
        has_limit: the joint has a ``<limit>`` element.
    """

    name: str
    type: str
    parent: str
    child: str
    lower: float | None = None
    upper: float | None = None
    velocity: float | None = None
    soft_lower: float | None = None
    soft_upper: float | None = None
    mimic: str | None = None
    has_limit: bool = False

    @property
    def movable(self) -> bool:
        """Commanded by position: a movable type and not a mimic of another joint."""
        return self.type in MOVABLE_TYPES and self.mimic is None


@dataclass(frozen=True)
class Urdf:
    """The joints of a URDF (document order) and its name; ``source`` names the file for messages."""

    robot_name: str
    joints: tuple[UrdfJoint, ...]
    source: str

    def joint(self, name: str) -> UrdfJoint:
        for joint in self.joints:
            if joint.name == name:
                return joint
        raise ConfigError(f"{self.source}: no joint {name!r}; joints: {[j.name for j in self.joints]}")

    def links(self) -> set[str]:
        return {j.parent for j in self.joints} | {j.child for j in self.joints}

    def parent_joint(self, link: str) -> UrdfJoint | None:
        """The joint whose child is ``link`` (None for the root)."""
        return next((j for j in self.joints if j.child == link), None)


@dataclass(frozen=True)
class RobotSection:
    """The robot section of a training config, with where each number came from.

    Attributes:
        joint_names: action (and observed) joints, in order.
        limits: position limits (rad; m for prismatic joints) and velocity limits (rad/s; m/s).
        joint_types: URDF type of each joint.
        urdf_velocity: the URDF's velocity limit of each joint (before scale and cap).
        soft_limited: per joint, True where ``<safety_controller>`` soft limits tightened the range.
        source: the URDF (file path or parameter) the section was read from.
        robot_name: ``<robot name>``.
        velocity_scale: factor applied to the URDF velocity limits.
        max_velocity: absolute cap on the velocity limits (None: no cap).
        continuous_limit: symmetric range given to continuous joints (None: none allowed).
    """

    joint_names: tuple[str, ...]
    limits: JointLimits
    joint_types: tuple[str, ...]
    urdf_velocity: tuple[float, ...]
    soft_limited: tuple[bool, ...]
    source: str
    robot_name: str
    velocity_scale: float
    max_velocity: float | None
    continuous_limit: float | None

    def to_yaml(self) -> str:
        """The section as YAML: a comment header (source, factors, per-joint trace), then ``policy:``."""
        cap = "no cap" if self.max_velocity is None else f"--max-velocity {self.max_velocity:g}"
        lines = [
            f"# Robot section generated by `flow-policy robot-config` from the URDF {self.source} "
            f"(robot {self.robot_name!r}).",
            "# Position limits: URDF <limit lower/upper>, tightened by <safety_controller> soft limits where given",
            "# (rad; m for prismatic joints).",
            f"# Velocity limits: min({self.velocity_scale:g} x URDF <limit velocity>, {cap}) (rad/s; m/s): a URDF",
            "# velocity is the motor rating, far above a safe speed for a policy's first motions; policy_node's",
            "# max_velocity_scale lowers it further at run time. Copy these keys into the policy section of a",
            "# training config (e.g. config/train_reach.yaml), keeping its observation.fields.",
        ]
        for i, name in enumerate(self.joint_names):
            soft = ", soft limits" if self.soft_limited[i] else ""
            lines.append(
                f"#   {name}: {self.joint_types[i]}, [{self.limits.lower[i]:.6g}, {self.limits.upper[i]:.6g}]{soft}, "
                f"velocity {self.urdf_velocity[i]:g} -> {self.limits.velocity[i]:.6g}"
            )
        names = _flow_list(self.joint_names)
        lines += [
            "policy:",
            "  observation:",
            f"    joint_names: {names}",
            f"  action_joint_names: {names}",
            "  limits:",
            f"    lower: {_flow_list(self.limits.lower)}",
            f"    upper: {_flow_list(self.limits.upper)}",
            f"    velocity: {_flow_list(self.limits.velocity)}",
        ]
        return "\n".join(lines) + "\n"


def _flow_list(values: Sequence[object]) -> str:
    """A YAML flow sequence; floats in their shortest exact form (repr), a name quoted only where
    YAML would read it as something else (``on``, ``1``, ``a, b``)."""
    return "[" + ", ".join(repr(float(v)) if isinstance(v, float) else _yaml_name(str(v)) for v in values) + "]"


def _yaml_name(name: str) -> str:
    plain = name.replace("_", "").replace("-", "").replace("/", "").isalnum() and name[:1].isalpha()
    if plain and yaml.safe_load(name) == name:
        return name
    return json.dumps(name)  # a JSON string is a YAML double-quoted scalar


def _float(element: ElementTree.Element | None, attribute: str, where: str) -> float | None:
    if element is None or attribute not in element.attrib:
        return None
    text = element.attrib[attribute]
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{where}: {attribute}={text!r} is not a number") from None
    if not math.isfinite(value):
        raise ConfigError(f"{where}: {attribute}={text!r} is not finite")
    return value


def parse_urdf(text: str, source: str) -> Urdf:
    """Parse a URDF document (its joints; links only through them).

    Args:
        text: the URDF XML (already xacro-expanded, as ``robot_description`` holds it).
        source: file path or parameter name, for messages.
    Raises:
        ConfigError: not XML, not a ``<robot>``, a joint without name/parent/child, a non-number.
    """
    try:
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError as exc:
        raise ConfigError(f"{source}: not valid URDF XML ({exc})") from None
    if root.tag != "robot":
        raise ConfigError(f"{source}: the root element is <{root.tag}>, expected <robot>")
    joints = []
    for element in root.findall("joint"):
        name = element.get("name")
        parent, child = element.find("parent"), element.find("child")
        if not name or parent is None or child is None or not parent.get("link") or not child.get("link"):
            raise ConfigError(f"{source}: a <joint> lacks its name, <parent link> or <child link> (joint {name!r})")
        where = f"{source}: joint {name!r}"
        limit, safety, mimic = element.find("limit"), element.find("safety_controller"), element.find("mimic")
        joints.append(UrdfJoint(
            name=name, type=element.get("type", ""), parent=parent.get("link", ""), child=child.get("link", ""),
            lower=_float(limit, "lower", where), upper=_float(limit, "upper", where),
            velocity=_float(limit, "velocity", where),
            soft_lower=_float(safety, "soft_lower_limit", where), soft_upper=_float(safety, "soft_upper_limit", where),
            mimic=None if mimic is None else mimic.get("joint", "?"), has_limit=limit is not None,
        ))
    if not joints:
        raise ConfigError(f"{source}: the URDF has no <joint>")
    names = [j.name for j in joints]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"{source}: duplicate joint names {duplicates}")
    return Urdf(root.get("name", ""), tuple(joints), source)


def chain(urdf: Urdf, base_link: str | None = None, tip_link: str | None = None) -> list[str]:
    """Movable joints from ``base_link`` (default: the root) to ``tip_link``, in order.

    Without ``tip_link``: the chain to the leaves, when the movable joints towards every leaf are
    prefixes of one longest chain (an arm; an arm with mimic or fixed branches); else an error
    naming the branches to choose from.
    """
    links = urdf.links()
    for flag, link in (("--base-link", base_link), ("--tip-link", tip_link)):
        if link is not None and link not in links:
            raise ConfigError(f"{urdf.source}: {flag} {link!r} is not a link of the URDF; links: {sorted(links)}")
    roots = sorted({j.parent for j in urdf.joints} - {j.child for j in urdf.joints})
    if len(roots) != 1:
        raise ConfigError(f"{urdf.source}: the URDF is not one tree (root links {roots})")
    base = base_link or roots[0]
    if tip_link is not None:
        tips = [tip_link]
    else:
        parents = {j.parent for j in urdf.joints}
        tips = sorted(j.child for j in urdf.joints if j.child not in parents)
    chains: dict[str, list[str]] = {}
    for tip in tips:
        joints, link = [], tip
        while link != base:
            joint = urdf.parent_joint(link)
            if joint is None:
                if tip_link is not None:
                    raise ConfigError(f"{urdf.source}: --tip-link {tip!r} is not below --base-link {base!r}")
                break  # a leaf outside the subtree of base_link
            joints.append(joint)
            link = joint.parent
        else:
            chains[tip] = [j.name for j in reversed(joints) if j.movable]
    if not chains:
        raise ConfigError(f"{urdf.source}: no link below {base!r}")
    longest = max(chains.values(), key=len)
    branches = {tip: names for tip, names in chains.items() if names != longest[: len(names)]}
    if branches:
        ends = sorted({tip for tip, names in chains.items() if names == longest} | set(branches))
        raise ConfigError(f"{urdf.source}: the URDF branches into several commanded chains (tips {ends}); "
                          "choose one with --tip-link or list the joints with --joints")
    if not longest:
        raise ConfigError(f"{urdf.source}: no movable joint between {base!r} and {tip_link or 'the tips'}")
    return longest


def robot_section(urdf: Urdf, joints: Sequence[str] | None = None, base_link: str | None = None,
                  tip_link: str | None = None, velocity_scale: float = DEFAULT_VELOCITY_SCALE,
                  max_velocity: float | None = DEFAULT_MAX_VELOCITY,
                  continuous_limit: float | None = None) -> RobotSection:
    """The action joints and their limits (see the module docstring for the rules).

    Args:
        urdf: the parsed URDF.
        joints: the joints to use, in this order (default: :func:`chain`).
        base_link, tip_link: the chain's ends (default: root and the single tip).
        velocity_scale: factor in (0, 1] on the URDF velocity limits.
        max_velocity: absolute cap (rad/s; m/s for prismatic), None for none.
        continuous_limit: range [-L, L] (rad) for continuous joints; None: a continuous joint is an error.
    Raises:
        ConfigError: naming the URDF, the joint and what is missing or invalid.
    """
    where = urdf.source
    if not 0 < velocity_scale <= 1:
        raise ConfigError(f"--velocity-scale must be in (0, 1], got {velocity_scale}")
    if max_velocity is not None and not (math.isfinite(max_velocity) and max_velocity > 0):
        raise ConfigError(f"--max-velocity must be a positive number, got {max_velocity}")
    if continuous_limit is not None and not (math.isfinite(continuous_limit) and continuous_limit > 0):
        raise ConfigError(f"--continuous-limit must be a positive number (rad), got {continuous_limit}")
    if joints:
        names = list(joints)
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError(f"--joints names {duplicates} more than once")
    else:
        names = chain(urdf, base_link, tip_link)
    lower, upper, velocity, types, urdf_velocity, soft = [], [], [], [], [], []
    for name in names:
        joint = urdf.joint(name)
        at = f"{where}: joint {name!r}"
        if joint.mimic is not None:
            raise ConfigError(f"{at} mimics {joint.mimic!r}: its driver moves it, it takes no command of its own")
        if joint.type not in MOVABLE_TYPES:
            raise ConfigError(f"{at} is {joint.type or 'untyped'}, not one of the movable types {list(MOVABLE_TYPES)}")
        if joint.type == "continuous":
            if continuous_limit is None:
                raise ConfigError(f"{at} is continuous (no position limits); give --continuous-limit RAD for a "
                                  "symmetric range, or pick other joints with --joints")
            lo, hi = -continuous_limit, continuous_limit
        else:
            if not joint.has_limit:
                raise ConfigError(f"{at} ({joint.type}) has no <limit> element; the URDF must give lower, upper, velocity")
            if joint.lower is None or joint.upper is None:
                missing = [k for k, v in (("lower", joint.lower), ("upper", joint.upper)) if v is None]
                raise ConfigError(f"{at}: <limit> lacks {' and '.join(missing)}")
            lo, hi = joint.lower, joint.upper
        tightened = False
        if joint.soft_lower is not None and joint.soft_lower > lo:
            lo, tightened = joint.soft_lower, True
        if joint.soft_upper is not None and joint.soft_upper < hi:
            hi, tightened = joint.soft_upper, True
        if not lo < hi:
            raise ConfigError(f"{at}: lower limit {lo} is not below upper limit {hi}")
        if joint.velocity is None or joint.velocity <= 0:
            if max_velocity is None:
                raise ConfigError(f"{at}: <limit> has no positive velocity ({joint.velocity}); give --max-velocity")
            rated, limit = float("nan"), max_velocity
        else:
            rated = joint.velocity
            limit = velocity_scale * rated if max_velocity is None else min(velocity_scale * rated, max_velocity)
        lower.append(lo)
        upper.append(hi)
        velocity.append(limit)
        types.append(joint.type)
        urdf_velocity.append(rated)
        soft.append(tightened)
    return RobotSection(tuple(names), JointLimits(tuple(lower), tuple(upper), tuple(velocity)), tuple(types),
                        tuple(urdf_velocity), tuple(soft), urdf.source, urdf.robot_name, velocity_scale,
                        max_velocity, continuous_limit)
