"""``flow-policy play``: publish a rosbag2 recording live on its topics, with its original timing.

A thin rclpy node. Messages are read with ``rosbags`` and published as their raw CDR bytes
(``Publisher.publish(bytes)``): no decode/encode on the way, any message type whose Python
class is installed works. The class comes from the bag's type string
(``sensor_msgs/msg/JointState`` → ``sensor_msgs.msg.JointState``). Camera topics go out as
recorded: sensor_msgs/Image (any encoding) and CompressedImage bytes are not decoded here, so a
policy_node subscribed to them applies its own checks (encoding, size, stamp) as it would live.

Timing: message i is released at ``start + (log_time_i − log_time_first) / rate`` on the
monotonic clock, where ``log_time_first`` is the first message at or after ``--start-offset``.
With ``--clock``, rosgraph_msgs/Clock carrying the bag time of the playback position is
published on ``/clock`` at ``--clock-rate`` Hz and right before each message, so a node with
``use_sim_time:=true`` (e.g. policy_node) runs on the recording's time. With ``--loop`` the
playback restarts (bag time jumps back, as with ``ros2 bag play --loop``).

QoS (publishers): reliable, volatile, depth 100 (matches both reliable and best-effort
subscribers, e.g. policy_node's sensor-data ``joint_states``), except topics whose last name
is ``goal``: reliable, transient local, depth 1, like the goal publisher a live node expects.

rclpy is started with the user's environment as is (ROS_DOMAIN_ID,
ROS_AUTOMATIC_DISCOVERY_RANGE, ...); this module sets none of it.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from flow_policy_ros.data import bag as bagio
from flow_policy_ros.errors import BagError, UsageError

CLOCK_TOPIC = "/clock"
RELIABLE_DEPTH = 100


def message_class(msgtype: str) -> type:
    """Python message class of a type string ``pkg/msg/Name`` (raises UsageError if not installed)."""
    parts = msgtype.split("/")
    if len(parts) != 3 or parts[1] != "msg":
        raise UsageError(f"message type {msgtype!r} is not of the form pkg/msg/Name")
    try:
        return getattr(importlib.import_module(f"{parts[0]}.msg"), parts[2])
    except (ImportError, AttributeError) as exc:
        raise UsageError(f"message type {msgtype} is not installed in this Python environment ({exc})") from exc


def is_latched(topic: str) -> bool:
    """Topics published transient local (latched): those whose last name is ``goal``."""
    return topic.rstrip("/").rsplit("/", 1)[-1] == "goal"


def release_offsets(log_times_ns: np.ndarray, rate: float, start_offset_s: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Which messages play and when.

    log_times_ns: (M,) int64, log times in bag order (non-decreasing).
    Returns (indices (P,) of the messages at or after first + start_offset, release offsets (P,)
    in s after the playback start, scaled by 1/rate).
    """
    if rate <= 0:
        raise UsageError(f"--rate must be > 0, got {rate}")
    if start_offset_s < 0:
        raise UsageError(f"--start-offset must be >= 0 s, got {start_offset_s}")
    times = np.asarray(log_times_ns, np.int64)
    if len(times) == 0:
        return np.zeros(0, np.int64), np.zeros(0)
    keep = np.flatnonzero(times >= times[0] + round(start_offset_s * 1e9))
    if len(keep) == 0:
        return keep, np.zeros(0)
    return keep, (times[keep] - times[keep[0]]) * 1e-9 / rate


def load_messages(path: Path, topics: Sequence[str] | None) -> list[bagio.RawMessage]:
    """All messages of ``path`` (only ``topics`` if given) in log-time order; errors name the problem."""
    summary = bagio.list_topics(path)
    if not summary or sum(t.count for t in summary.values()) == 0:
        raise BagError(f"{path}: empty bag (no messages)")
    if topics:
        missing = [t for t in topics if t not in summary]
        if missing:
            raise BagError(f"{path}: missing topic(s) {missing} (has {sorted(summary)})")
    for topic, info in summary.items():
        if not topics or topic in topics:
            message_class(info.msgtype)
    return list(bagio.iter_raw_messages(path, topics or None))


class BagPlayer:
    """Publishes pre-loaded raw messages with their relative timing on an rclpy node."""

    def __init__(self, node: Any, messages: Sequence[bagio.RawMessage], clock: bool, clock_rate_hz: float) -> None:
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

        self.node = node
        self.messages = messages
        self.publishers: dict[str, Any] = {}
        for raw in messages:
            if raw.topic in self.publishers:
                continue
            if is_latched(raw.topic):
                qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
            else:
                qos = QoSProfile(depth=RELIABLE_DEPTH, reliability=ReliabilityPolicy.RELIABLE)
            self.publishers[raw.topic] = node.create_publisher(message_class(raw.msgtype), raw.topic, qos)
        self.clock_pub = None
        self.clock_period_s = 1.0 / clock_rate_hz
        if clock:
            from rosgraph_msgs.msg import Clock

            self._clock_type = Clock
            self.clock_pub = node.create_publisher(Clock, CLOCK_TOPIC, QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))

    def wait_for_subscribers(self, timeout_s: float) -> list[str]:
        """Wait up to ``timeout_s`` until each of the bag's topics has a matched subscription.

        ``/clock`` is not waited for (a node with use_sim_time subscribes to it, but nothing else
        does, and playback must not stall on it). Returns the topics still without one (sorted;
        empty = all matched).
        """
        deadline = time.monotonic() + timeout_s
        while True:
            missing = sorted(t for t, p in self.publishers.items() if p.get_subscription_count() == 0)
            if not missing or time.monotonic() >= deadline:
                return missing
            time.sleep(0.05)

    def _publish_clock(self, bag_time_ns: int) -> None:
        if self.clock_pub is None:
            return
        msg = self._clock_type()
        msg.clock.sec, msg.clock.nanosec = divmod(int(bag_time_ns), 1_000_000_000)
        self.clock_pub.publish(msg)

    def play_once(self, rate: float, start_offset_s: float) -> dict[str, float]:
        """Publish every message once at its release time; returns lateness statistics (ms)."""
        times = np.array([m.log_time_ns for m in self.messages], np.int64)
        indices, offsets = release_offsets(times, rate, start_offset_s)
        if len(indices) == 0:
            return {"published": 0, "lateness_ms_p50": 0.0, "lateness_ms_max": 0.0}
        first_ns = int(times[indices[0]])
        lateness = np.zeros(len(indices))
        start = time.monotonic()
        next_clock = start
        for n, (i, offset) in enumerate(zip(indices, offsets)):
            target = start + offset
            while True:
                now = time.monotonic()
                if self.clock_pub is not None and now >= next_clock:
                    # never ahead of the message about to go out (a late loop would run past the recording)
                    self._publish_clock(min(first_ns + round((now - start) * rate * 1e9), int(times[i])))
                    next_clock = now + self.clock_period_s
                if now >= target:
                    break
                wake = min(target, next_clock) if self.clock_pub is not None else target
                time.sleep(max(0.0, min(wake - now, 0.05)))
            raw = self.messages[i]
            self._publish_clock(raw.log_time_ns)
            self.publishers[raw.topic].publish(raw.data)
            lateness[n] = (time.monotonic() - target) * 1e3
        return {"published": len(indices), "lateness_ms_p50": float(np.median(lateness)),
                "lateness_ms_max": float(lateness.max())}
