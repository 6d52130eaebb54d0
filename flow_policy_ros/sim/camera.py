"""A fixed RGB camera in the PyBullet scene, rendered on the CPU (``ER_TINY_RENDERER``).

World frame: robot base at the origin, x forward, y left, z up (m). The default camera stands
in front of the robot (eye (1.05, 0, 1.10) m) looking back and down at (0.54, 0, 0.34) m with a
46 degree vertical field of view: the whole reach_object table (x 0.355-0.795, y -0.36..0.36 m,
top at z = 0.275 m) fills the lower two thirds of the image, the wrist and end effector the
top third; a 4.5 cm cube is about 5 pixels wide at 96 x 96. The objects lie between the
camera and the arm, so the arm hides the object only when the end effector is over it (framing
chosen by looking at frames: see the report of issue 19).

Images are (H, W, 3) uint8 RGB, row 0 at the top, the layout of a sensor_msgs/Image with
encoding ``rgb8`` and ``step = 3 * W``. The optical frame is named ``<name>_optical_frame``
(REP 103: z forward along the view axis, x right, y down in the image).

Rendering is deterministic: the same scene state gives the same bytes (fixed light, no noise;
checked in test/test_sim_camera.py). Cost of one 96 x 96 frame of the reach_object scene on this
shared 2-core machine, median over 100 frames (``PYTHONPATH=. python scripts/measure_render.py``):
7.5 ms of CPU, 9.4 ms wall at load average 2.2 and 14-20 ms wall at load 5 (84 x 84 costs about
the same: the arm's meshes, not the pixels, dominate). A 6 s episode at 12.5 Hz renders 76
frames: ~0.6-1.5 s per recorded episode.

Frame schedule. Camera frame k is taken at physics step ``ceil(k * 240 / rate_hz)``
(:meth:`CameraSpec.frame_step`), exact on average like the control ticks of ``sim.arm``; at the
default 12.5 Hz with 50 Hz control these are exactly the steps of every 4th control tick, i.e.
of every decision of a policy that replans every 4 ticks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pybullet
import yaml

#: Physics rate of the scene (Hz); equal to ``sim.arm.PHYSICS_HZ`` (kept here to avoid a cycle).
_PHYSICS_HZ = 240
#: The ROS parameter prefix of camera settings in config/sim.yaml (``camera_eye``, ``camera_fov_deg``, ...).
PARAMETER_PREFIX = "camera_"


@dataclass(frozen=True)
class CameraSpec:
    """Pose, optics, size and rate of one fixed camera.

    Attributes:
        name: camera name: the feature ``image.<name>``, topic ``camera/<name>/image_raw``.
        eye: (3,) camera position (m, world frame).
        target: (3,) point the optical axis passes through (m, world frame).
        up: (3,) world direction that appears up in the image.
        fov_deg: vertical field of view (degrees).
        width: image width (pixels).
        height: image height (pixels).
        rate_hz: frame rate (Hz) in sim_node and in recorded episodes.
        near_m: near clipping plane (m).
        far_m: far clipping plane (m).
        light_direction: (3,) direction towards the light (world frame), fixed for determinism.
    """

    name: str = "front"
    eye: tuple[float, float, float] = (1.05, 0.0, 1.10)
    target: tuple[float, float, float] = (0.54, 0.0, 0.34)
    up: tuple[float, float, float] = (0.0, 0.0, 1.0)
    fov_deg: float = 46.0
    width: int = 96
    height: int = 96
    rate_hz: float = 12.5
    near_m: float = 0.05
    far_m: float = 5.0
    light_direction: tuple[float, float, float] = (0.6, 0.3, 1.0)

    def __post_init__(self) -> None:
        for key in ("eye", "target", "up", "light_direction"):
            value = tuple(float(v) for v in getattr(self, key))
            if len(value) != 3 or not all(math.isfinite(v) for v in value):
                raise ValueError(f"camera {self.name!r}: {key} must be 3 finite numbers (m, world frame), got {value}")
            object.__setattr__(self, key, value)
        if not self.name or not all(c.isalnum() or c == "_" for c in self.name):
            raise ValueError(f"camera name must be non-empty [A-Za-z0-9_] (it is part of a topic name), got {self.name!r}")
        if not 1.0 <= self.fov_deg <= 170.0:
            raise ValueError(f"camera {self.name!r}: fov_deg must be in [1, 170] degrees, got {self.fov_deg}")
        for key in ("width", "height"):
            if not isinstance(getattr(self, key), int) or not 8 <= getattr(self, key) <= 1024:
                raise ValueError(f"camera {self.name!r}: {key} must be an int in [8, 1024] pixels, got {getattr(self, key)!r}")
        if not 0.0 < self.rate_hz <= _PHYSICS_HZ:
            raise ValueError(f"camera {self.name!r}: rate_hz must be in (0, {_PHYSICS_HZ}] Hz, got {self.rate_hz}")
        if not 0.0 < self.near_m < self.far_m:
            raise ValueError(f"camera {self.name!r}: need 0 < near_m < far_m, got {self.near_m}, {self.far_m}")
        axis = np.subtract(self.target, self.eye)
        if np.linalg.norm(axis) < 1e-6 or np.linalg.norm(np.cross(axis, self.up)) < 1e-6:
            raise ValueError(f"camera {self.name!r}: eye {self.eye} and target {self.target} must differ and "
                             f"the view axis must not be parallel to up {self.up}")

    @property
    def topic(self) -> str:
        """Relative topic of the raw images: ``camera/<name>/image_raw``."""
        return f"camera/{self.name}/image_raw"

    @property
    def optical_frame(self) -> str:
        """frame_id of the images: ``<name>_optical_frame``."""
        return f"{self.name}_optical_frame"

    def frame_step(self, k: int) -> int:
        """Physics step (240 Hz) at which frame ``k`` is taken: ceil(k * 240 / rate_hz)."""
        return math.ceil(k * Fraction(_PHYSICS_HZ) / Fraction(str(self.rate_hz)))

    def view_matrix(self) -> tuple[float, ...]:
        return tuple(pybullet.computeViewMatrix(self.eye, self.target, self.up))

    def projection_matrix(self) -> tuple[float, ...]:
        return tuple(pybullet.computeProjectionMatrixFOV(self.fov_deg, self.width / self.height, self.near_m, self.far_m))

    def project(self, points_m: np.ndarray) -> np.ndarray:
        """Pixel coordinates (N, 2) as (column, row) of world points (N, 3) m; row 0 at the top."""
        points = np.atleast_2d(np.asarray(points_m, dtype=np.float64))
        view = np.asarray(self.view_matrix()).reshape(4, 4).T  # pybullet matrices are column-major
        proj = np.asarray(self.projection_matrix()).reshape(4, 4).T
        clip = (proj @ view @ np.c_[points, np.ones(len(points))].T).T
        ndc = clip[:, :2] / clip[:, 3:4]
        col = (ndc[:, 0] + 1.0) / 2.0 * self.width
        row = (1.0 - ndc[:, 1]) / 2.0 * self.height
        return np.c_[col, row]


def render_rgb(client: Any, camera: CameraSpec) -> np.ndarray:
    """Render ``camera``'s view in ``client`` (a BulletClient) with the CPU renderer: (H, W, 3) uint8 RGB."""
    width, height, rgba, _, _ = client.getCameraImage(
        camera.width,
        camera.height,
        viewMatrix=camera.view_matrix(),
        projectionMatrix=camera.projection_matrix(),
        lightDirection=camera.light_direction,
        shadow=1,
        renderer=pybullet.ER_TINY_RENDERER,
    )
    image = np.asarray(rgba, dtype=np.uint8).reshape(height, width, 4)
    return np.ascontiguousarray(image[:, :, :3])


CAMERA_MODES = ("auto", "enabled", "disabled")


def camera_from_parameters(parameters: Mapping[str, Any]) -> CameraSpec:
    """A CameraSpec from ROS-style parameters ``camera_name``, ``camera_eye``, ... (absent = the default).

    Unknown ``camera_*`` keys (other than ``camera``, the on/off mode) are refused, naming the key.
    """
    known = {f.name for f in fields(CameraSpec)}
    values: dict[str, Any] = {}
    for key, value in parameters.items():
        if not key.startswith(PARAMETER_PREFIX):
            continue
        field_name = key[len(PARAMETER_PREFIX):]
        if field_name not in known:
            raise ValueError(f"unknown camera parameter {key!r}; expected camera_ + one of {sorted(known)}")
        values[field_name] = tuple(value) if isinstance(value, (list, tuple)) else value
    return CameraSpec(**values)


def load_camera(path: Path, node_name: str = "sim_node") -> CameraSpec:
    """The camera of a sim_node parameter file (``<node_name>: ros__parameters: camera_*``)."""
    try:
        document = yaml.safe_load(Path(path).read_text())
        parameters = document[node_name]["ros__parameters"]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: cannot read {node_name}.ros__parameters ({type(exc).__name__}: {exc})") from exc
    try:
        return camera_from_parameters(parameters)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from exc


def camera_enabled(mode: str, task_uses_camera: bool) -> bool:
    """Whether the camera runs: 'auto' = when the task needs it, 'enabled', 'disabled'."""
    if mode not in CAMERA_MODES:
        raise ValueError(f"camera mode must be one of {CAMERA_MODES}, got {mode!r}")
    return mode == "enabled" or (mode == "auto" and task_uses_camera)
