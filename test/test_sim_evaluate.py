"""Tests of ``flow-policy eval-sim`` (sim/evaluate.py, sim/closed_loop.py, sim/eval_plots.py).

Real PyBullet, real ONNX Runtime, a real (untrained) exported policy with horizon 16.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from model_factory import make_tiny_model

from flow_policy_ros.cli import main
from flow_policy_ros.policy.config import IIWA_JOINT_NAMES
from flow_policy_ros.runtime.onnx_policy import OnnxPolicy
from flow_policy_ros.sim.closed_loop import (
    COLLECT_SEEDS_PER_BASE,
    EVAL_SEED_BASE,
    LoopConfig,
    eval_episode_seeds,
    observation_vector,
    run_episodes,
)
from flow_policy_ros.sim.env import Observation
from flow_policy_ros.sim.evaluate import episode_peaks, seam_mask, wilson_interval
from flow_policy_ros.sim.tasks import sample_episode

TASK = "reach_around"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("model") / "tiny.onnx", seed=5, horizon=16)


@pytest.fixture(scope="module")
def policy(tiny_model: Path) -> OnnxPolicy:
    return OnnxPolicy(tiny_model, seed=0, warmup=1)


@pytest.mark.parametrize(
    ("successes", "trials", "expected"),
    [(8, 10, (0.4902, 0.9433)), (0, 10, (0.0, 0.2775)), (10, 10, (0.7225, 1.0)), (50, 100, (0.4038, 0.5962))],
)
def test_wilson_interval_known_values(successes: int, trials: int, expected: tuple[float, float]) -> None:
    assert wilson_interval(successes, trials) == pytest.approx(expected, abs=1e-4)


def test_wilson_interval_without_trials_is_uninformative() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_eval_seeds_are_disjoint_from_training_collections() -> None:
    seeds = eval_episode_seeds(0, 3)
    assert seeds == [EVAL_SEED_BASE, EVAL_SEED_BASE + 1, EVAL_SEED_BASE + 2]
    widest = eval_episode_seeds(99, 10_000)
    training = range(1 * COLLECT_SEEDS_PER_BASE, 2 * COLLECT_SEEDS_PER_BASE)  # collect --seed 1
    assert min(widest) > training[-1] and max(widest) < 901 * COLLECT_SEEDS_PER_BASE
    assert not set(eval_episode_seeds(1, 10)) & set(seeds)
    with pytest.raises(ValueError, match="--seed"):
        eval_episode_seeds(100, 1)
    with pytest.raises(ValueError, match="--episodes"):
        eval_episode_seeds(0, 0)


def test_observation_is_built_by_joint_name(policy: OnnxPolicy) -> None:
    """A model observing its joints in reverse order gets them reversed, whatever the sim's order."""
    from dataclasses import replace

    from flow_policy_ros.policy.config import ObservationSpec

    reversed_names = tuple(reversed(IIWA_JOINT_NAMES))
    spec = ObservationSpec(joint_names=reversed_names, fields=("goal", "joint_positions"))
    meta = replace(policy.metadata, io=replace(policy.metadata.io, observation=spec))
    obs = Observation(positions=np.arange(7.0), velocities=np.zeros(7), goal=np.array([0.5, 0.1, 0.4]), time_s=0.0)
    np.testing.assert_array_equal(observation_vector(meta, obs), np.array([0.5, 0.1, 0.4, 6, 5, 4, 3, 2, 1, 0], np.float32))


def test_seam_mask_and_peaks_are_exact() -> None:
    # windows n..n+2 (acceleration) containing the seam at tick 4: n = 2, 3
    np.testing.assert_array_equal(np.flatnonzero(seam_mask(8, 2, [0, 4])), [2, 3])
    period = 0.02
    ramp = np.arange(10.0)[:, None] * 0.01 * np.ones((1, 7))
    ramp[5:] += 0.004  # a 4 mrad jump at the seam at tick 5
    peaks = episode_peaks(ramp, [0, 5], period)
    assert peaks["accel_inside"] == pytest.approx(0.0, abs=1e-9)
    assert peaks["accel_seam"] == pytest.approx(0.004 / period**2)
    assert peaks["jerk_seam"] == pytest.approx(2 * 0.004 / period**3)  # diff^3 of a step: +1, -2, +1
    assert peaks["jerk_inside"] == pytest.approx(0.0, abs=1e-6)


def test_closed_loop_commands_respect_velocity_and_position_limits(policy: OnnxPolicy) -> None:
    meta = policy.metadata
    results = run_episodes(policy, TASK, eval_episode_seeds(3, 2), LoopConfig(replan_every=4))
    step = np.asarray(meta.limits.velocity) * meta.control_period_s
    for r in results:
        start = sample_episode(TASK, r.seed).start_q
        sequence = np.vstack([start[None, :], r.commands])  # the first command is limited relative to the start pose
        assert np.all(np.abs(np.diff(sequence, axis=0)) <= step + 1e-12)
        assert np.all(r.commands >= np.asarray(meta.limits.lower) - 1e-12)
        assert np.all(r.commands <= np.asarray(meta.limits.upper) + 1e-12)
        assert r.chunk_ticks[:3] == [0, 4, 8]
        assert len(r.latencies_s) == len(r.chunk_ticks)
        assert r.clipped_by_limiter > 0  # an untrained policy does get clamped: the test exercises the clamp


def test_same_seed_gives_the_same_episodes_in_any_order(policy: OnnxPolicy) -> None:
    seeds = eval_episode_seeds(7, 2)
    first = run_episodes(policy, TASK, seeds)
    again = run_episodes(policy, TASK, seeds)
    alone = run_episodes(policy, TASK, seeds[1:])
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a.commands, b.commands)
        assert (a.success, a.failure, a.route, a.final_distance_m) == (b.success, b.failure, b.route, b.final_distance_m)
    np.testing.assert_array_equal(first[1].commands, alone[0].commands)
    assert not np.array_equal(first[0].commands, first[1].commands)


def test_temporal_ensemble_runs_and_adds_a_chunk_every_replan(policy: OnnxPolicy) -> None:
    (result,) = run_episodes(policy, "reach", eval_episode_seeds(0, 1), LoopConfig(chunking="temporal_ensemble", replan_every=2))
    assert result.chunk_ticks[:4] == [0, 2, 4, 6]
    assert result.route is None


def test_eval_sim_cli_end_to_end(tiny_model: Path, tmp_path: Path) -> None:
    out_json = tmp_path / "eval.json"
    code = main(["eval-sim", "--model", str(tiny_model), "--task", TASK, "--episodes", "3", "--seed", "2",
                 "--guidance", "1.5", "--json", str(out_json), "--no-progress"])
    assert code == 0
    report = json.loads(out_json.read_text())
    for key in ("task", "episodes", "seed", "guidance_scale", "success_rate", "success_ci95", "modes", "failures",
                "seam_smoothness", "latency_ms", "model", "routes", "time_to_goal_s", "per_episode"):
        assert key in report, key
    assert (report["task"], report["episodes"], report["seed"], report["guidance_scale"]) == (TASK, 3, 2, 1.5)
    lo, hi = report["success_ci95"]
    assert 0.0 <= lo <= report["success_rate"] <= hi <= 1.0
    assert set(report["modes"]) == {"left", "right"} and sum(report["modes"].values()) == report["successes"]
    assert sum(v["episodes"] for v in report["routes"].values()) == 3
    assert sum(report["failures"].values()) == 3 - report["successes"]
    assert 0.0 < report["latency_ms"]["p50"] <= report["latency_ms"]["p99"]
    assert report["seam_smoothness"]["jerk_seam_to_inside_ratio"] > 0
    assert report["model"]["name"] == "tiny" and len(report["model"]["hash"]) == 64
    assert [p["seed"] for p in report["per_episode"]] == eval_episode_seeds(2, 3)
    for name in ("ee_paths_xy.png", "command_traces.png"):  # default plot dir: beside --json
        assert (tmp_path / "eval_plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["plots"] == [str(tmp_path / "eval_plots" / n) for n in ("ee_paths_xy.png", "command_traces.png")]


def test_eval_sim_without_json_writes_under_out_and_says_where(tiny_model: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Without --json or --out the plots go to out/eval_<task>/ (git-ignored), never the working directory
    itself, and the path is printed."""
    monkeypatch.chdir(tmp_path)
    assert main(["eval-sim", "--model", str(tiny_model), "--task", "reach", "--episodes", "1", "--no-progress"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert sorted(p.name for p in (tmp_path / "out" / "eval_reach").iterdir()) == ["command_traces.png", "ee_paths_xy.png"]
    assert "eval-sim: 2 plots in out/eval_reach" in capsys.readouterr().out
    assert "/out/" in (Path(__file__).resolve().parents[1] / ".gitignore").read_text().splitlines()


@pytest.mark.parametrize(
    "extra",
    [["--seed", "100"], ["--episodes", "0"], ["--replan-every", "17"], ["--guidance", "9"]],
)
def test_eval_sim_rejects_bad_input_with_one_line(tiny_model: Path, extra: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["eval-sim", "--model", str(tiny_model), "--task", "reach", "--episodes", "1", "--no-plots", "--no-progress", *extra])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error" in err[0]


def test_eval_sim_missing_model_is_a_user_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval-sim", "--model", str(tmp_path / "none.onnx"), "--task", "reach"]) == 2
    assert "file not found" in capsys.readouterr().err


def test_compare_policies_runs_every_model_and_guidance_on_the_same_seeds(tiny_model: Path) -> None:
    import importlib.util

    script = Path(__file__).resolve().parents[1] / "scripts" / "compare_policies.py"
    spec = importlib.util.spec_from_file_location("compare_policies", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    reports = module.compare([tiny_model], TASK, episodes=1, seed=4, guidance=[0.0, 2.0], chunking="receding_horizon",
                             replan_every=8, progress=False, reference=True)
    assert [r["guidance_scale"] for r in reports] == [None, 0.0, 2.0]  # the expert row first
    assert all(r["episode_seeds"] == [eval_episode_seeds(4, 1)[0]] * 2 for r in reports)
    assert module.table_row(reports[0]).startswith("| scripted expert | expert | - | 100% (1/1) |")
    row = module.table_row(reports[2])
    assert row.startswith("| tiny | flow | 2 | ") and row.count("|") == module.TABLE_HEADER.splitlines()[0].count("|")


@pytest.mark.parametrize("task", ["reach", TASK])
def test_expert_reference_through_the_same_loop_succeeds(policy: OnnxPolicy, task: str) -> None:
    """The scripted expert served as chunks (sim.reference.ExpertPolicy) through the node's controller: the
    scheduler + clamp pipeline itself does not make a good chunk source fail, and the clamp stays idle."""
    from flow_policy_ros.sim.closed_loop import ClosedLoop
    from flow_policy_ros.sim.reference import ExpertPolicy

    source = ExpertPolicy(policy.metadata)
    with ClosedLoop(source, LoopConfig(replan_every=8)) as loop:  # type: ignore[arg-type]
        results = [loop.run_episode(task, seed) for seed in eval_episode_seeds(5, 2)]
    source.close()
    assert all(r.success for r in results), [(r.seed, r.failure) for r in results]
    assert all(r.clipped_by_limiter == 0 for r in results)
    if task == TASK:
        assert all(r.route in ("left", "right") for r in results)


def test_reference_ratios_and_peaks_are_computed_from_both_reports() -> None:
    from flow_policy_ros.sim.evaluate import peak_smoothness, reference_ratios

    def report(seam_a: float, inside_a: float, seam_j: float, inside_j: float) -> dict:
        return {"seam_smoothness": {"accel_peak_seam_rad_s2": seam_a, "accel_peak_inside_rad_s2": inside_a,
                                    "jerk_peak_seam_rad_s3": seam_j, "jerk_peak_inside_rad_s3": inside_j}}

    ours, ref = report(12.0, 6.0, 900.0, 1200.0), report(8.0, 4.0, 600.0, 300.0)
    assert peak_smoothness(ours["seam_smoothness"]) == {"accel_peak_rad_s2": 12.0, "jerk_peak_rad_s3": 1200.0}
    ratios = reference_ratios(ours, ref)
    assert ratios == {"accel_seam": 1.5, "accel_inside": 1.5, "jerk_seam": 1.5, "jerk_inside": 4.0,
                      "accel_peak": 1.5, "jerk_peak": 2.0}


def test_eval_sim_reference_expert_end_to_end(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "sub" / "eval.json"  # the directory is created
    assert main(["eval-sim", "--model", str(tiny_model), "--task", "reach", "--episodes", "2", "--seed", "3",
                 "--reference", "expert", "--no-plots", "--no-progress", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["reference"]["model"]["name"] == "scripted expert"
    assert report["reference"]["episode_seeds"] == report["episode_seeds"]
    assert report["reference"]["successes"] == 2
    assert set(report["reference_ratios"]) == {"accel_seam", "accel_inside", "jerk_seam", "jerk_inside", "accel_peak", "jerk_peak"}


def test_injected_delay_makes_chunks_arrive_later_in_sim_time(policy: OnnxPolicy) -> None:
    """--inject-delay-ms: with 100 ms (5 ticks) and replan every 4, the first command waits 5 ticks and every
    chunk takes effect 5 ticks after its request."""
    from flow_policy_ros.sim.closed_loop import ClosedLoop

    with ClosedLoop(policy, LoopConfig(replan_every=4, inject_delay_ms=100.0)) as loop:
        result = loop.run_episode("reach", eval_episode_seeds(6, 1)[0])
    assert result.chunk_ticks[0] == 5
    assert all(b - a >= 5 for a, b in zip(result.chunk_ticks, result.chunk_ticks[1:]))
    assert result.counters["late_first_commands"] > 0


@pytest.fixture(scope="module")
def rtc_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("rtc") / "rtc.onnx", seed=4, horizon=16, rtc_max_delay=8,
                           observation={"fields": ["joint_positions", "goal"]})


def test_rtc_chunking_in_the_closed_loop_commits_prefixes_under_delay(rtc_model: Path) -> None:
    """chunking rtc + 100 ms delay: prefixes of delay + margin ticks are committed and reproduced (no invalid
    output), new chunks take effect at the prefix boundary, and the velocity limit holds."""
    from flow_policy_ros.sim.closed_loop import ClosedLoop

    policy = OnnxPolicy(rtc_model, seed=0)
    with ClosedLoop(policy, LoopConfig(chunking="rtc", replan_every=7, inject_delay_ms=100.0)) as loop:
        result = loop.run_episode("reach", eval_episode_seeds(6, 1)[0])
    c = result.counters
    assert c["invalid_outputs"] == 0 and c["inference_requests"] > 5
    assert c["rtc_prefix_ticks"] >= 6 * (c["inference_requests"] - 2)  # 5 ticks of delay + margin 1, after the first two
    # only the first chunk is late (no delay measured yet): the arm held, the chunk is shifted in time and used
    assert c["rtc_late_chunks"] == c["rtc_late_used"] == 1 and c["rtc_prefix_broken"] == 0
    step = np.abs(np.diff(result.commands, axis=0))
    assert np.all(step <= np.asarray(policy.metadata.limits.velocity) * policy.metadata.control_period_s + 1e-9)


def test_rtc_chunking_needs_an_rtc_model(tiny_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval-sim", "--model", str(tiny_model), "--task", "reach", "--episodes", "1", "--chunking", "rtc",
                 "--no-plots", "--no-progress"]) == 2
    assert "needs a real-time chunking model" in capsys.readouterr().err


def _nan_model(tiny_model: Path, tmp_path: Path) -> Path:
    """The tiny model, with NaN output wherever joint 2 is below 1.0 rad: always, in the sim (home 0.19 rad),
    but not at the load-time check (the middle of this training range, 1.5 rad)."""
    from model_factory import wide_observation_range, with_broken_output

    from flow_policy_ros.policy.config import PolicyConfig

    rng = wide_observation_range(PolicyConfig(horizon=16))
    rng["low"][1], rng["high"][1] = 0.0, 3.0
    base = make_tiny_model(tmp_path / "base.onnx", seed=5, horizon=16, observation_range=rng)
    return with_broken_output(base, tmp_path / "nan.onnx", "nan_if_negative", index=1, threshold=1.0)


def test_invalid_outputs_are_counted_and_are_not_a_timeout(tiny_model: Path, tmp_path: Path) -> None:
    policy = OnnxPolicy(_nan_model(tiny_model, tmp_path), seed=0, warmup=1)
    (result,) = run_episodes(policy, "reach", eval_episode_seeds(0, 1))
    assert not result.success and result.failure == "invalid_output"
    assert result.invalid_outputs == len(result.latencies_s) > 0 and "NaN/inf" in result.first_invalid_output
    start = sample_episode("reach", result.seed).start_q
    # no command was ever sent: the loop holds the measured position (it settles by < 5 mrad)
    np.testing.assert_allclose(result.commands, np.tile(start, (len(result.commands), 1)), atol=5e-3)


def test_eval_sim_exits_2_with_one_line_when_every_output_is_invalid(tiny_model: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    report = tmp_path / "r.json"
    code = main(["eval-sim", "--model", str(_nan_model(tiny_model, tmp_path)), "--task", "reach", "--episodes", "1",
                 "--no-plots", "--no-progress", "--json", str(report)])
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if not line.startswith("pybullet build time")]
    assert code == 2 and len(lines) == 1 and "model outputs were invalid" in lines[0] and "NaN/inf" in lines[0], lines
    data = json.loads(report.read_text())  # the report is still written, with the counts
    assert data["invalid_outputs"] == data["inference_calls"] > 0 and data["failures"]["invalid_output"] == 1
    assert data["failures"]["timeout"] == 0 and "guards:" in captured.out


# --------------------------------------------------------------------------- camera models


@pytest.fixture(scope="module")
def camera_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny camera model (joint positions + a 32 x 32 front camera), exported for real."""
    from model_factory import make_checkpoint

    from flow_policy_ros.contract import ObservationSpec, image_feature
    from flow_policy_ros.export.onnx_export import export_checkpoint
    from flow_policy_ros.policy.config import IIWA_POSITION_LOWER, IIWA_POSITION_UPPER

    root = tmp_path_factory.mktemp("camera")
    spec = ObservationSpec(IIWA_JOINT_NAMES, ("joint_positions", "image.front"), (image_feature("front", 32, 32),))
    ckpt = make_checkpoint(root / "cam.pt", seed=3, horizon=16, observation=spec, guided_fields=("image.front",),
                           image_channels=(4, 4, 8), image_keypoints=4, image_embed_dim=8,
                           observation_range={"low": [v - 0.1 for v in IIWA_POSITION_LOWER],
                                              "high": [v + 0.1 for v in IIWA_POSITION_UPPER]})
    export_checkpoint(ckpt, root / "cam.onnx")
    return root / "cam.onnx"


class _Recording:
    """A ChunkPolicy wrapper that keeps the images of every predict call."""

    def __init__(self, policy: OnnxPolicy) -> None:
        self.policy, self.metadata, self.images = policy, policy.metadata, []
        self.active_provider, self.fallback_reason = policy.active_provider, policy.fallback_reason

    def predict(self, observation, noise=None, guidance_scale=None, prefix_actions=None, prefix_length=None, images=None):
        self.images.append(images)
        return self.policy.predict(observation, noise, guidance_scale, prefix_actions, prefix_length, images=images)

    def reseed(self, seed: int) -> None:
        self.policy.reseed(seed)


def test_camera_model_sees_the_rendered_frame_in_force(camera_model: Path) -> None:
    from flow_policy_ros.sim.closed_loop import ClosedLoop

    recorder = _Recording(OnnxPolicy(camera_model, seed=0, warmup=1))
    with ClosedLoop(recorder) as loop:
        assert (loop.camera.name, loop.camera.height, loop.camera.width) == ("front", 32, 32)
        result = loop.run_episode("reach_object", eval_episode_seeds(0, 1)[0])
    assert len(recorder.images) == len(result.latencies_s) > 10
    frames = [images["image.front"] for images in recorder.images]
    assert all(f.shape == (32, 32, 3) and f.dtype == np.uint8 for f in frames)
    assert len({f.tobytes() for f in frames}) > 1  # a live camera: the arm moves in the picture
    assert frames[0].std() > 5  # a rendered scene, not a blank frame


def test_camera_of_the_wrong_size_or_name_is_refused(camera_model: Path) -> None:
    from flow_policy_ros.errors import ModelFileError
    from flow_policy_ros.sim.camera import CameraSpec
    from flow_policy_ros.sim.closed_loop import ClosedLoop

    policy = OnnxPolicy(camera_model, seed=0, warmup=1)
    for camera, message in ((CameraSpec(name="front", width=96, height=96), "at 32x32 .*given sim camera is 'front' at 96x96"),
                            (CameraSpec(name="wrist", width=32, height=32), "given sim camera is 'wrist'")):
        with pytest.raises(ModelFileError, match=message):
            ClosedLoop(policy, camera=camera)
