"""``flow-policy collect``: record scripted-expert episodes in PyBullet as rosbag2, one per episode.

    flow-policy collect --task reach_around --episodes 200 --out data/reach_around --seed 0

writes ``OUT/episode_0000/`` ... (rosbag2 directories with ``episode.json`` metadata, see
``bag.py``), prints the expert success rate and, with ``--json PATH``, writes a summary.
Episode i uses the episode seed ``seed * 1_000_000 + i`` (:func:`episode_seeds`), so
collections with different ``--seed`` never share an episode. Failed expert episodes are
written too, with ``success: false`` in their metadata, so the rate on disk is the rate
reported.
"""

from __future__ import annotations

from pathlib import Path

from flow_policy_ros.errors import UsageError

SEEDS_PER_BASE = 1_000_000
STORAGES = ("mcap", "sqlite3")


def episode_seeds(seed: int, episodes: int) -> list[int]:
    """Episode seeds of a collection: ``seed * 1_000_000 + i`` for i < ``episodes``."""
    if seed < 0:
        raise UsageError(f"--seed must be >= 0, got {seed}")
    if not 1 <= episodes <= SEEDS_PER_BASE:
        raise UsageError(f"--episodes must be in [1, {SEEDS_PER_BASE}], got {episodes}")
    return [seed * SEEDS_PER_BASE + i for i in range(episodes)]


def episode_dir(out: Path, index: int) -> Path:
    return out / f"episode_{index:04d}"
