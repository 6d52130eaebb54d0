"""Where installed data lives: the package's share directory (launch/, config/, models/).

Resolved like ROS 2 does (ament index on AMENT_PREFIX_PATH), then the install prefix of this
Python environment (a pip install into a virtualenv puts data_files under ``sys.prefix``).
Never the source tree: what runs is what was installed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

PACKAGE = "flow_policy_ros"
#: policy_node's model when ``model_path`` is empty: the real-time chunking variant of the reach policy
#: (issue 21: over the delay protocol it matches the plain model's success at 0 ms, keeps 98.5-100%
#: under delay, and its peak acceleration is 0.88x the expert's against 1.53x; docs/real_time_chunking.md).
DEFAULT_MODEL = "iiwa_reach_rtc"
#: The shipped model a sim task runs when no model is named (tasks not listed run DEFAULT_MODEL).
#: reach_around keeps its plain model: its RTC variant loses 3.5 points at 0 ms (same document).
TASK_MODELS: dict[str, str] = {"reach": "iiwa_reach_rtc", "reach_around": "iiwa_reach_around",
                               "reach_object": "iiwa_reach_object"}


def share_dir() -> Path:
    """The installed ``share/flow_policy_ros`` directory; raises if the package is not installed."""
    candidates = []
    for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        if prefix:
            candidates.append(Path(prefix))
    candidates.append(Path(sys.prefix))
    for prefix in candidates:
        marker = prefix / "share" / "ament_index" / "resource_index" / "packages" / PACKAGE
        if marker.is_file():
            return prefix / "share" / PACKAGE
    raise FileNotFoundError(
        f"share directory of {PACKAGE} not found (looked in {', '.join(str(c) for c in candidates)}); "
        "install the package (`make setup`, `pip install .` or `colcon build`)"
    )


def default_model_path(name: str = DEFAULT_MODEL) -> Path:
    """Path of a shipped model, e.g. ``share/flow_policy_ros/models/iiwa_reach_rtc.onnx``."""
    path = share_dir() / "models" / f"{name}.onnx"
    if not path.is_file():
        raise FileNotFoundError(f"shipped model {name!r} not found at {path}")
    return path


def config_path(name: str) -> Path:
    """Path of an installed config file, e.g. ``config_path('policy.yaml')``."""
    path = share_dir() / "config" / name
    if not path.is_file():
        raise FileNotFoundError(f"installed config {name!r} not found at {path}")
    return path
