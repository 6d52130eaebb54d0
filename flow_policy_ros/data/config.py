"""Where the training and replay data come from in a rosbag2 recording (topics, action source)."""

from __future__ import annotations

from dataclasses import dataclass, field

from flow_policy_ros.contract import FeatureSpec, require

#: What the action of a control tick is read from (see :mod:`flow_policy_ros.data.windows`).
ACTION_SOURCES = ("commands", "joint_states", "joint_trajectory", "controller_state")
#: The DataConfig key naming the topic of each action source that reads one.
ACTION_TOPIC_KEYS = {"commands": "command_topic", "joint_trajectory": "trajectory_topic",
                     "controller_state": "controller_state_topic"}


@dataclass(frozen=True)
class DataConfig:
    """Where the training data comes from in a rosbag2 recording.

    Attributes:
        joint_states_topic: sensor_msgs/JointState topic (positions, velocities by name).
        goal_topic: geometry_msgs/PointStamped topic with the goal (the ``goal`` feature).
        feature_topics: bag topic of a vector observation feature, by feature name, where it
            differs from ``/<the feature's topic in the observation spec>``.
        command_topic: std_msgs/Float64MultiArray topic with per-tick position commands,
            in ``command_joint_names`` order (action_source 'commands').
        command_joint_names: joint order of the command arrays (defaults to the action joints).
        action_source: what the action of a tick is: 'commands' (the Float64MultiArray
            commands of a forward position controller), 'joint_states' (the executed positions),
            'joint_trajectory' (the trajectory_msgs/JointTrajectory commands of a
            JointTrajectoryController on ``trajectory_topic``, executed as the controller does)
            or 'controller_state' (the reference positions of the controller's
            control_msgs/JointTrajectoryControllerState on ``controller_state_topic``).
        trajectory_topic: trajectory_msgs/JointTrajectory topic (action_source 'joint_trajectory').
        controller_state_topic: control_msgs/JointTrajectoryControllerState topic
            (action_source 'controller_state').
    """

    joint_states_topic: str = "/joint_states"
    goal_topic: str = "/goal"
    command_topic: str = "/commands"
    command_joint_names: tuple[str, ...] = ()
    action_source: str = "commands"
    trajectory_topic: str = "/joint_trajectory_controller/joint_trajectory"
    controller_state_topic: str = "/joint_trajectory_controller/controller_state"
    feature_topics: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "command_joint_names", tuple(self.command_joint_names))
        object.__setattr__(self, "feature_topics", dict(self.feature_topics))
        require(
            self.action_source in ACTION_SOURCES,
            f"data.action_source must be one of {list(ACTION_SOURCES)}, got {self.action_source!r}",
        )

    def feature_topic(self, feature: FeatureSpec) -> str:
        """The bag topic vector feature ``feature`` is read from."""
        if feature.name in self.feature_topics:
            return self.feature_topics[feature.name]
        if feature.name == "goal":
            return self.goal_topic
        return "/" + feature.topic.lstrip("/")

    @property
    def action_topic(self) -> str | None:
        """The topic the actions are read from (None for 'joint_states')."""
        key = ACTION_TOPIC_KEYS.get(self.action_source)
        return None if key is None else str(getattr(self, key))


DEFAULT_DATA_CONFIG = DataConfig()
