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
                             replan_every=8, progress=False)
    assert [r["guidance_scale"] for r in reports] == [0.0, 2.0]
    assert all(r["episode_seeds"] == [eval_episode_seeds(4, 1)[0]] * 2 for r in reports)
    row = module.table_row(reports[1])
    assert row.startswith("| tiny | flow | 2 | ") and row.count("|") == module.TABLE_HEADER.splitlines()[0].count("|")


class ExpertChunks:
    """The scripted expert's plan served as action chunks: a positive control of the loop (not a mock of it).

    Same interface the loop uses of OnnxPolicy (``metadata``, ``predict``, ``rng``); chunk i of a
    request at tick k holds the expert's targets for the ticks k+1 .. k+H (rad).
    """

    def __init__(self, metadata: object) -> None:
        from flow_policy_ros.sim.experts import ScriptedExpert

        self.metadata = metadata
        self.expert = ScriptedExpert()
        self.loop: object = None
        self.rng = None

    def predict(self, observation: np.ndarray, guidance_scale: float | None = None) -> np.ndarray:
        t = self.loop.env.next_tick_time_s
        period = self.metadata.control_period_s
        return np.array([self.expert.command(t + i * period) for i in range(self.metadata.horizon)])


@pytest.mark.parametrize("task", ["reach", TASK])
def test_expert_chunks_through_the_same_loop_succeed(policy: OnnxPolicy, task: str) -> None:
    """The scheduler + clamp pipeline itself does not make a good chunk source fail (and the clamp stays idle)."""
    from flow_policy_ros.sim.closed_loop import ClosedLoop

    source = ExpertChunks(policy.metadata)
    with ClosedLoop(source, LoopConfig(replan_every=8)) as loop:  # type: ignore[arg-type]
        source.loop = loop
        results = []
        for seed in eval_episode_seeds(5, 2):
            source.expert.plan(sample_episode(task, seed))
            results.append(loop.run_episode(task, seed))
    assert all(r.success for r in results), [(r.seed, r.failure) for r in results]
    assert all(r.clipped_by_limiter == 0 for r in results)
    if task == TASK:
        assert all(r.route in ("left", "right") for r in results)


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
