"""``flow-policy collect``: record scripted-expert episodes in PyBullet as rosbag2, one per episode.

    flow-policy collect --task reach_around --episodes 200 --out data/reach_around --seed 0

writes ``OUT/episode_0000/`` ... (rosbag2 directories with ``episode.json`` metadata, see
``bag.py``), prints the expert success rate and, with ``--json PATH``, writes a summary.
Episode i uses the episode seed ``seed * 1_000_000 + i`` (:func:`episode_seeds`), so
collections with different ``--seed`` never share an episode. Failed expert episodes are
written too, with ``success: false`` in their metadata, so the rate on disk is the rate
reported.

Camera tasks (``reach_object``) record the camera (``--camera auto``, the default; ``enabled``
adds it to any task) as sensor_msgs/msg/Image rgb8 on ``/camera/<name>/image_raw`` at the
camera's rate, pose and size from ``--sim-config`` (a sim_node parameter file; default: the
:class:`~flow_policy_ros.sim.camera.CameraSpec` defaults, which config/sim.yaml repeats). They
have no ``/goal`` topic: the object's true position is logged as a PointStamped on
:data:`OBJECT_POSITION_TOPIC` instead (ground truth for an oracle policy and for checks; a
camera policy must not read it), once a second like the goal of the other tasks.
"""

from __future__ import annotations

from pathlib import Path

from flow_policy_ros.data.config import DEFAULT_DATA_CONFIG, DataConfig
from flow_policy_ros.errors import UsageError
from flow_policy_ros.sim.tasks import CAMERA_TASKS

SEEDS_PER_BASE = 1_000_000
STORAGES = ("mcap", "sqlite3")
#: Where camera tasks log the object's true position (m, world frame) instead of ``/goal``.
OBJECT_POSITION_TOPIC = "/object_position"


def recording_data_config(task: str) -> DataConfig:
    """Topics an episode of ``task`` is written with: the default, or the object position instead of /goal."""
    return DataConfig(goal_topic=OBJECT_POSITION_TOPIC) if task in CAMERA_TASKS else DEFAULT_DATA_CONFIG


def episode_seeds(seed: int, episodes: int) -> list[int]:
    """Episode seeds of a collection: ``seed * 1_000_000 + i`` for i < ``episodes``."""
    if seed < 0:
        raise UsageError(f"--seed must be >= 0, got {seed}")
    if not 1 <= episodes <= SEEDS_PER_BASE:
        raise UsageError(f"--episodes must be in [1, {SEEDS_PER_BASE}], got {episodes}")
    return [seed * SEEDS_PER_BASE + i for i in range(episodes)]


def episode_dir(out: Path, index: int) -> Path:
    return out / f"episode_{index:04d}"
