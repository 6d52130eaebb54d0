"""Where the training and replay data come from in a rosbag2 recording (topics, action source)."""

from __future__ import annotations

from dataclasses import dataclass

from flow_policy_ros.contract import require


@dataclass(frozen=True)
class DataConfig:
    """Where the training data comes from in a rosbag2 recording.

    Attributes:
        joint_states_topic: sensor_msgs/JointState topic (positions, velocities by name).
        goal_topic: geometry_msgs/PointStamped topic with the goal.
        command_topic: std_msgs/Float64MultiArray topic with per-tick position commands,
            in ``command_joint_names`` order.
        command_joint_names: joint order of the command arrays (defaults to the action joints).
        action_source: 'commands' (the recorded commands) or 'joint_states' (executed positions).
    """

    joint_states_topic: str = "/joint_states"
    goal_topic: str = "/goal"
    command_topic: str = "/commands"
    command_joint_names: tuple[str, ...] = ()
    action_source: str = "commands"

    def __post_init__(self) -> None:
        object.__setattr__(self, "command_joint_names", tuple(self.command_joint_names))
        require(
            self.action_source in ("commands", "joint_states"),
            f"data.action_source must be 'commands' or 'joint_states', got {self.action_source!r}",
        )


DEFAULT_DATA_CONFIG = DataConfig()
