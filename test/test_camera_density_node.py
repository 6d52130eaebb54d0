"""policy_node runs a camera model's density through the existing guard, over DDS (issue 24).

A real node process runs the tiny camera policy with a density (test_camera_density's, 24 x 32
frames); this process plays the robot (``FakeRobot``) and the camera (``FakeCamera``). The density
score of each decision reaches /diagnostics with the model's threshold; with the threshold moved
above every score (``density_factory.set_threshold``), the node holds after ``density_hold_after``
decisions and sends no command.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from density_factory import set_threshold
from fake_robot import FakeRobot
from test_camera_density import make_camera_density_model
from test_policy_node_images import SIZE, FakeCamera, latest, no_commands_for, params

pytestmark = pytest.mark.slow


@pytest.fixture
def robot() -> Iterator[FakeRobot]:
    """The robot (joint states) and its camera (frames at 25 Hz) in this process."""
    fake = FakeRobot()
    fake.camera = FakeCamera(fake.node)
    try:
        yield fake
    finally:
        fake.close()


@pytest.fixture(scope="module")
def camera_density_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    with_density, _, _, _ = make_camera_density_model(tmp_path_factory.mktemp("camdensity_node"), size=SIZE)
    return with_density


def test_the_node_reports_the_camera_density_score_and_threshold(camera_density_onnx, node_process, robot, tmp_path):
    model = set_threshold(Path(shutil.copy(camera_density_onnx, tmp_path / "low.onnx")), -1e9)  # every score above it
    node_process(params=params(model))
    robot.wait_for(lambda: latest(robot).get("density_score", "nan") != "nan" and len(robot.commands) >= 10, 15.0,
                   "a density score on /diagnostics and commands")
    diag = latest(robot)
    assert diag["density_state"] == "ok" and float(diag["density_threshold"]) == -1e9, diag
    assert math.isfinite(float(diag["density_score"])) and diag["density_holds"] == "0", diag


def test_scores_below_the_threshold_hold_the_camera_model(camera_density_onnx, node_process, robot, tmp_path):
    model = set_threshold(Path(shutil.copy(camera_density_onnx, tmp_path / "high.onnx")), 1e9)  # every score below it
    node_process(params=params(model, density_hold_after=2))
    robot.wait_for(lambda: latest(robot).get("density_state") == "hold", 15.0, "a density hold")
    diag = latest(robot)
    assert int(diag["density_holds"]) >= 1 and float(diag["density_score"]) < 1e9, diag
    no_commands_for(robot, 1.0)
