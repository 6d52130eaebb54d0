"""The sim camera (``sim/camera.py``), the reach_object task and its expert, images in SimEnv."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from flow_policy_ros.sim import camera as camera_module
from flow_policy_ros.sim.arm import PHYSICS_HZ, IiwaArm
from flow_policy_ros.sim.camera import CameraSpec, camera_enabled, camera_from_parameters, load_camera
from flow_policy_ros.sim.env import SimEnv
from flow_policy_ros.sim.experts import ScriptedExpert
from flow_policy_ros.sim.rollout import run_expert_episode
from flow_policy_ros.sim.tasks import (
    DISTRACTOR_MIN_DISTANCE_M,
    OBJECT_XY_BOX,
    TABLE_TOP_Z_M,
    sample_episode,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
CAMERA = CameraSpec()


def is_red(image: np.ndarray) -> np.ndarray:
    r, g, b = (image[..., i].astype(int) for i in range(3))
    return (r > 120) & (g < 60) & (b < 60)


def is_blue(image: np.ndarray) -> np.ndarray:
    r, g, b = (image[..., i].astype(int) for i in range(3))
    return (b > 120) & (r < 60) & (g < 90)


def near(mask: np.ndarray, pixel: np.ndarray, radius: float = 4.0) -> int:
    """Number of True pixels of ``mask`` within ``radius`` px of ``pixel`` (column, row)."""
    rows, cols = np.nonzero(mask)
    return int(np.sum(np.hypot(cols + 0.5 - pixel[0], rows + 0.5 - pixel[1]) <= radius))


@pytest.fixture(scope="module")
def arm() -> IiwaArm:
    with IiwaArm() as arm:
        yield arm


def test_render_is_uint8_rgb_of_the_configured_size(arm: IiwaArm) -> None:
    spec = sample_episode("reach_object", 0)
    arm.reset(spec.start_q, visuals=spec.visuals)
    image = arm.render(CameraSpec(width=64, height=48))
    assert image.shape == (48, 64, 3) and image.dtype == np.uint8 and image.flags.c_contiguous
    assert arm.render(CAMERA).shape == (96, 96, 3)


def test_render_is_deterministic_and_does_not_step_physics(arm: IiwaArm) -> None:
    spec = sample_episode("reach_object", 3)
    arm.reset(spec.start_q, visuals=spec.visuals)
    first = arm.render(CAMERA)
    step = arm.physics_step
    assert np.array_equal(first, arm.render(CAMERA)) and arm.physics_step == step
    # the same state rebuilt after another scene renders the same bytes
    other = sample_episode("reach_object", 4)
    arm.reset(other.start_q, visuals=other.visuals)
    assert not np.array_equal(first, arm.render(CAMERA))
    arm.reset(spec.start_q, visuals=spec.visuals)
    assert np.array_equal(first, arm.render(CAMERA))


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_object_and_distractor_are_seen_where_they_project(arm: IiwaArm, seed: int) -> None:
    spec = sample_episode("reach_object", seed)
    arm.reset(spec.start_q, visuals=spec.visuals)
    image = arm.render(CAMERA)
    objects = {v.name: v for v in spec.visuals}
    object_px = CAMERA.project(np.asarray(objects["object"].center))[0]
    distractor_px = CAMERA.project(np.asarray(objects["distractor_0"].center))[0]
    assert np.all((object_px >= 0) & (object_px < 96)) and np.all((distractor_px >= 0) & (distractor_px < 96))
    assert near(is_red(image), object_px) >= 6, f"seed {seed}: no red cube at pixel {object_px.round(1)}"
    assert near(is_blue(image), distractor_px) >= 6, f"seed {seed}: no blue cube at pixel {distractor_px.round(1)}"
    # each colour appears only at its own cube: the distractor is not red, the object not blue
    assert near(is_red(image), distractor_px) == 0 and near(is_blue(image), object_px) == 0
    assert is_red(image).sum() == near(is_red(image), object_px, radius=6.0)


def test_without_objects_the_scene_has_no_red_or_blue(arm: IiwaArm) -> None:
    arm.reset(sample_episode("reach", 0).start_q)
    image = arm.render(CAMERA)
    assert not is_red(image).any() and not is_blue(image).any()


def test_reach_object_sampling() -> None:
    box = np.asarray(OBJECT_XY_BOX)
    for seed in range(300):
        spec = sample_episode("reach_object", seed)
        objects = {v.name: v for v in spec.visuals}
        assert set(objects) == {"table", "object", "distractor_0"}
        assert np.array_equal(spec.goal, objects["object"].center)
        xy = np.asarray(objects["object"].center[:2])
        distractor_xy = np.asarray(objects["distractor_0"].center[:2])
        assert np.all((xy >= box[:, 0]) & (xy <= box[:, 1])) and np.all((distractor_xy >= box[:, 0]) & (distractor_xy <= box[:, 1]))
        assert np.linalg.norm(xy - distractor_xy) >= DISTRACTOR_MIN_DISTANCE_M
        assert objects["object"].center[2] - objects["object"].half_extents[2] == pytest.approx(TABLE_TOP_Z_M)
        assert spec.uses_camera and spec.obstacle is None and spec.expert_side is None
    a, b = sample_episode("reach_object", 11), sample_episode("reach_object", 11)
    assert a.visuals == b.visuals and np.array_equal(a.start_q, b.start_q)
    assert a.to_metadata()["visuals"][1]["name"] == "object"
    assert "visuals" not in sample_episode("reach", 11).to_metadata()
    assert not sample_episode("reach", 11).uses_camera


def test_reach_object_expert_succeeds_on_seeds() -> None:
    with SimEnv(record=False) as env:
        expert = ScriptedExpert()
        try:
            for seed in range(5):
                spec = env.reset("reach_object", seed)
                expert.plan(spec)
                while not env.done:
                    env.step(expert.command(env.next_tick_time_s))
                status = env.status()
                assert status.success and status.final_distance_m < 0.005 and status.clipped_commands == 0, (seed, status)
        finally:
            expert.close()


def test_visual_objects_do_not_change_the_physics() -> None:
    """The same commands with and without the reach_object scene give identical joint trajectories."""
    spec = sample_episode("reach_object", 2)
    paths = []
    for visuals in (spec.visuals, ()):
        with IiwaArm() as arm:
            arm.reset(spec.start_q, visuals=visuals)
            target = np.asarray(spec.start_q) + 0.2
            paths.append(np.stack([arm.step_control(target).positions for _ in range(20)]))
    assert np.array_equal(paths[0], paths[1])


def test_env_records_frames_on_the_camera_schedule() -> None:
    with SimEnv(record=True, camera=CAMERA) as env:
        recording = run_expert_episode("reach_object", 5, env=env)
    series = recording.images[CAMERA.name]
    assert series.frame_id == "front_optical_frame"
    assert series.frames.shape == (76, 96, 96, 3) and series.frames.dtype == np.uint8  # 6 s at 12.5 Hz, t = 0 included
    steps = [CAMERA.frame_step(k) for k in range(76)]
    t0 = recording.joint_times_ns[0]
    assert np.array_equal(series.times_ns - t0, [(n * 10**9 + 120) // 240 for n in steps])
    assert recording.metadata["camera"] == {"name": "front", "rate_hz": 12.5, "width": 96, "height": 96}
    # frames at every 4th 50 Hz tick: the schedule of a policy replanning every 4 ticks
    assert steps[:4] == [0, 20, 39, 58] and all(n == int(np.ceil(4.8 * 4 * k)) for k, n in enumerate(steps))


def test_env_without_camera_records_no_images() -> None:
    recording = run_expert_episode("reach", 0)
    assert recording.images == {}
    with SimEnv(record=False) as env:
        env.reset("reach_object", 0)
        assert env.observe().images == {}


def test_observation_carries_the_latest_frame() -> None:
    with SimEnv(record=False, camera=CAMERA) as env:
        env.reset("reach_object", 1)
        stamp0, frame0 = env.observe().images["front"]
        for _ in range(3):
            env.step(env.observe().positions)
        assert env.observe().images["front"][0] == stamp0  # next frame at tick 4
        env.step(env.observe().positions)
        stamp1, frame1 = env.observe().images["front"]
        assert stamp1 - stamp0 == 83_333_333 and frame1.shape == frame0.shape


def test_camera_schedule_uses_the_physics_rate_of_the_arm() -> None:
    assert camera_module._PHYSICS_HZ == PHYSICS_HZ  # duplicated in camera.py to avoid an import cycle
    assert CameraSpec(rate_hz=240.0).frame_step(7) == 7 and CameraSpec(rate_hz=30.0).frame_step(3) == 24


def test_camera_config_from_sim_yaml_matches_the_defaults() -> None:
    assert load_camera(REPO_ROOT / "config" / "sim.yaml") == CameraSpec()
    spec = camera_from_parameters({"camera_name": "top", "camera_eye": [0.5, 0.0, 1.5], "camera_width": 84,
                                   "task": "reach"})
    assert spec.name == "top" and spec.eye == (0.5, 0.0, 1.5) and spec.width == 84 and spec.topic == "camera/top/image_raw"
    with pytest.raises(ValueError, match="camera_fov"):
        camera_from_parameters({"camera_fov": 50.0})
    with pytest.raises(ValueError, match="fov_deg"):
        CameraSpec(fov_deg=0.0)
    with pytest.raises(ValueError, match="parallel"):
        CameraSpec(eye=(0.0, 0.0, 2.0), target=(0.0, 0.0, 0.0))
    assert camera_enabled("auto", True) and not camera_enabled("auto", False)
    assert camera_enabled("enabled", False) and not camera_enabled("disabled", True)
    with pytest.raises(ValueError, match="camera mode"):
        camera_enabled("on", True)
