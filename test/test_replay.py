"""flow-policy replay on real bags with real ONNX Runtime sessions: round trips, a known answer,
joint maps, trajectories as commands and every bad-input case."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import jtc_bags
import numpy as np
import pytest
from model_factory import make_tiny_model

from flow_policy_ros.cli import main
from flow_policy_ros.data import bag as bagio
from flow_policy_ros.data.replay import replay_bag
from flow_policy_ros.policy.config import IIWA_JOINT_NAMES, DataConfig
from flow_policy_ros.runtime.onnx_policy import OnnxPolicy

EPOCH = 1_700_000_000_000_000_000
REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_NAMES = list(IIWA_JOINT_NAMES)
DRIVER_NAMES = [f"lbr_joint_{i}" for i in range(7)]
GOAL = np.array([0.4, -0.2, 0.6])
DT_NS = 20_000_000  # tiny model's control period (0.02 s)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("model") / "tiny.onnx", seed=3)


def synthetic_bag(path: Path, storage: str = "mcap", seconds: float = 2.0, names: list[str] = MODEL_NAMES,
                  shuffle: bool = True, goal: bool = True, commands: bool = True, seed: int = 0) -> Path:
    """Joint states at ~100 Hz (±2 ms jitter, shuffled order per message), goal, commands at 50 Hz (±1 ms)."""
    rng = np.random.default_rng(seed)
    n_js = int(seconds * 100)
    t_js = EPOCH + 10_000_000 * np.arange(n_js) + rng.integers(-2_000_000, 2_000_000, n_js)
    t_js[0] = EPOCH - 5_000_000
    phase = rng.uniform(0, 2 * np.pi, 7)
    shuffler = np.random.default_rng(seed + 100)  # its own stream: shuffling leaves the data identical

    def q(t: np.ndarray) -> np.ndarray:
        s = (np.asarray(t) - EPOCH)[:, None] * 1e-9
        return 0.5 * np.sin(1.3 * s + phase)

    with bagio.BagWriter(path, storage) as writer:
        if goal:
            writer.write("/goal", bagio.POINT_STAMPED, bagio.point_stamped_msg(EPOCH - 10_000_000, GOAL), EPOCH - 10_000_000)
        for t, pos in zip(t_js, q(t_js)):
            order = shuffler.permutation(7) if shuffle else np.arange(7)
            vel = 0.65 * np.cos(np.arcsin(np.clip(pos / 0.5, -1, 1)))
            writer.write("/joint_states", bagio.JOINT_STATE,
                         bagio.joint_state_msg(int(t), [names[i] for i in order], pos[order], vel[order]), int(t))
        if commands:
            t_cmd = EPOCH + DT_NS * np.arange(int(seconds * 50) - 1) + rng.integers(-1_000_000, 1_000_000, int(seconds * 50) - 1)
            for t, cmd in zip(t_cmd, q(t_cmd + DT_NS)):
                writer.write("/commands", bagio.FLOAT64_MULTI_ARRAY, bagio.float64_multi_array_msg(cmd), int(t))
    return path


def policy_recorded_bag(path: Path, model: Path, noise_seed: int, ticks: int = 60, storage: str = "mcap",
                        commands: bool = True, trajectory: bool = True) -> Path:
    """Run the policy every tick on synthetic joint states (noise from its own seeded stream) and record
    the states, the goal and its output: first actions on /commands, whole chunks on /joint_trajectory."""
    policy = OnnxPolicy(model, seed=noise_seed, warmup=0)
    meta = policy.metadata
    slices = meta.observation.field_slices()
    rng = np.random.default_rng(1)
    phase = rng.uniform(0, 2 * np.pi, 7)
    with bagio.BagWriter(path, storage) as writer:
        writer.write("/goal", bagio.POINT_STAMPED, bagio.point_stamped_msg(EPOCH, GOAL), EPOCH)
        for k in range(ticks + 1):
            t = EPOCH + k * DT_NS
            q, qd = 0.5 * np.sin(0.05 * k + phase), 1.25 * np.cos(0.05 * k + phase)
            order = rng.permutation(7)
            writer.write("/joint_states", bagio.JOINT_STATE,
                         bagio.joint_state_msg(t, [MODEL_NAMES[i] for i in order], q[order], qd[order]), t)
            if k == ticks:
                break
            obs = np.zeros(meta.obs_dim)
            obs[slices["joint_positions"]], obs[slices["joint_velocities"]], obs[slices["goal"]] = q, qd, GOAL
            chunk = policy.predict(obs).astype(np.float64)  # noise from the policy's own seeded stream
            if commands:
                writer.write("/commands", bagio.FLOAT64_MULTI_ARRAY, bagio.float64_multi_array_msg(chunk[0]), t)
            if trajectory:
                writer.write("/joint_trajectory", bagio.JOINT_TRAJECTORY,
                             bagio.joint_trajectory_msg(t, MODEL_NAMES, chunk, meta.control_period_s), t)
    return path


def tree_hash(path: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(file.name.encode() + file.read_bytes())
    return digest.hexdigest()


def run_replay(bags: list[Path], model: Path, out: Path, *extra: str) -> dict:
    code = main(["replay", *map(str, bags), "--model", str(model), "--out", str(out), "--no-plots", *extra])
    assert code == 0
    return json.loads((out / "report.json").read_text())


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_round_trip_shuffled_joint_order(tmp_path: Path, model: Path, storage: str) -> None:
    shuffled = synthetic_bag(tmp_path / "shuffled", storage, shuffle=True)
    ordered = synthetic_bag(tmp_path / "ordered", storage, shuffle=False)
    before = tree_hash(shuffled)
    code = main(["replay", str(shuffled), "--model", str(model), "--out", str(tmp_path / "out"), "--write-bag", "--seed", "5",
                 "--plots", "all"])
    assert code == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    reference = run_replay([ordered], model, tmp_path / "ref", "--seed", "5")
    assert tree_hash(shuffled) == before  # the input is never modified
    (rep,), (ref,) = report["bags"], reference["bags"]
    assert rep["action_source"] == "commands" and rep["goal_source"] == "topic"
    assert rep["decisions"] == ref["decisions"] == 99  # one per recorded command tick
    assert rep["first_action"] == ref["first_action"] and rep["per_joint"] == ref["per_joint"]
    assert set(rep["per_joint"]) == set(MODEL_NAMES)
    assert len(rep["horizon"]["mae_rad"]) == 8 and rep["horizon"]["scored_decisions"][0] == 99
    assert rep["seam_jerk"]["seam_mean_abs_rad_s3"] is not None
    assert rep["latency_ms"]["batched_per_decision_mean"] > 0
    for plot in rep["plots"]:
        assert Path(plot).stat().st_size > 1000
    out_bag = Path(rep["output_bag"]["path"])
    topics = bagio.list_topics(out_bag)
    assert topics["/policy/joint_trajectory"] == (bagio.JOINT_TRAJECTORY, 99)
    for topic, summary in bagio.list_topics(shuffled).items():
        assert topics[topic] == summary
    assert any(out_bag.glob("*.mcap" if storage == "mcap" else "*.db3"))
    assert not list((tmp_path / "out").glob(".*"))  # no temp files left


def test_known_answer_policy_recording_replays_exactly(tmp_path: Path, model: Path) -> None:
    recorded = policy_recorded_bag(tmp_path / "policy_bag", model, noise_seed=7)
    same = run_replay([recorded], model, tmp_path / "same", "--seed", "7")["bags"][0]
    assert same["action_source"] == "commands" and same["decisions"] == 60
    assert same["first_action"]["max_abs_rad"] < 1e-5
    other = run_replay([recorded], model, tmp_path / "other", "--seed", "8")["bags"][0]
    assert other["first_action"]["mae_rad"] > 1e3 * max(same["first_action"]["mae_rad"], 1e-9)


def test_known_answer_from_joint_trajectory_chunks_only(tmp_path: Path, model: Path) -> None:
    recorded = policy_recorded_bag(tmp_path / "traj_bag", model, noise_seed=11, commands=False, storage="sqlite3")
    rep = replay_bag(recorded, OnnxPolicy(model, warmup=0), seed=11)
    assert rep.report["action_source"] == "trajectory"
    # the last chunk's tail gives commands after the last joint state, so tick 60 is a decision too
    assert rep.report["decisions"] == 61
    np.testing.assert_allclose(rep.predicted[:60, 0], rep.decisions.targets[:60, 0], atol=1e-5)
    # step i of decision k is the first action of decision k+i: chunks are replaced every tick
    np.testing.assert_allclose(rep.decisions.targets[:52, 1], rep.predicted[1:53, 0], atol=1e-5)
    assert rep.decisions.valid[:60].all()


def test_joint_states_only_bag_with_goal_argument(tmp_path: Path, model: Path) -> None:
    bag_path = synthetic_bag(tmp_path / "js_only", goal=False, commands=False)
    report = run_replay([bag_path], model, tmp_path / "out", "--goal", *map(str, GOAL))
    rep = report["bags"][0]
    assert rep["action_source"] == "joint_states" and rep["goal_source"] == "argument"
    assert rep["decisions"] > 90


def test_joint_map_renames_driver_joints(tmp_path: Path, model: Path) -> None:
    driver = synthetic_bag(tmp_path / "driver", names=DRIVER_NAMES, seed=2)
    native = synthetic_bag(tmp_path / "native", names=MODEL_NAMES, seed=2)
    joint_map = tmp_path / "map.yaml"
    joint_map.write_text("".join(f"{d}: {m}\n" for d, m in zip(DRIVER_NAMES, MODEL_NAMES)))
    mapped = run_replay([driver], model, tmp_path / "mapped", "--joint-map", str(joint_map))["bags"][0]
    reference = run_replay([native], model, tmp_path / "ref")["bags"][0]
    assert mapped["first_action"] == reference["first_action"]
    assert mapped["per_joint"] == reference["per_joint"]


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_jtc_sources_replay_as_the_commands_they_executed(tmp_path: Path, model: Path, storage: str) -> None:
    """A robot's JointTrajectoryController recording (chunks replaced mid-chunk, joints shuffled) and its
    controller state replay with the decisions, targets and scores of the per-tick commands it executed."""
    episode = jtc_bags.make_episode(seed=5)
    bags = {source: jtc_bags.write_episode(tmp_path / source, episode, source, storage)
            for source in ("commands", "joint_trajectory", "controller_state")}
    policy = OnnxPolicy(model, warmup=0)
    reference = replay_bag(bags["commands"], policy, seed=3)
    assert reference.report["decisions"] == len(episode.commands)
    for source in ("joint_trajectory", "controller_state"):
        rep = replay_bag(bags[source], policy, DataConfig(action_source=source), seed=3)
        assert rep.report["action_source"] == source
        np.testing.assert_array_equal(rep.decisions.ticks_ns, reference.decisions.ticks_ns)
        np.testing.assert_allclose(rep.decisions.targets, reference.decisions.targets, rtol=0, atol=1e-12)
        np.testing.assert_array_equal(rep.predicted, reference.predicted)
        for joint, scores in reference.report["per_joint"].items():
            assert rep.report["per_joint"][joint] == pytest.approx(scores, abs=1e-9)


def test_replay_reads_the_jtc_topics_a_training_config_names(tmp_path: Path, model: Path) -> None:
    bag_path = jtc_bags.write_episode(tmp_path / "robot", jtc_bags.make_episode(seed=6), "joint_trajectory")
    report = run_replay([bag_path], model, tmp_path / "out", "--config", str(REPO_ROOT / "config" / "train_reach_jtc.yaml"))
    assert report["bags"][0]["action_source"] == "joint_trajectory"
    assert report["bags"][0]["decisions"] == 36


# --------------------------------------------------------------------------- bad input


def _expect_error(capsys: pytest.CaptureFixture, argv: list[str], *fragments: str) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, err
    return err


def test_joint_map_not_covering_model_joints(tmp_path: Path, model: Path, capsys: pytest.CaptureFixture) -> None:
    driver = synthetic_bag(tmp_path / "driver", names=DRIVER_NAMES)
    joint_map = tmp_path / "map.yaml"
    joint_map.write_text("".join(f"{d}: {m}\n" for d, m in zip(DRIVER_NAMES[:6], MODEL_NAMES[:6])))
    _expect_error(capsys, ["replay", str(driver), "--model", str(model), "--out", str(tmp_path / "out"),
                           "--joint-map", str(joint_map)], "does not cover", "lbr_iiwa_joint_7")
    assert not (tmp_path / "out").exists()


def _write(path: Path, messages: list[tuple[str, str, object, int]], storage: str = "mcap") -> Path:
    with bagio.BagWriter(path, storage) as writer:
        for topic, msgtype, msg, t in messages:
            writer.write(topic, msgtype, msg, t)
    return path


def _bad_bags(tmp_path: Path) -> dict[str, tuple[Path, list[str]]]:
    good = synthetic_bag(tmp_path / "good", seconds=0.5)
    truncated = synthetic_bag(tmp_path / "truncated", seconds=0.5)
    mcap = next(truncated.glob("*.mcap"))
    mcap.write_bytes(mcap.read_bytes()[: mcap.stat().st_size // 2])
    js = bagio.joint_state_msg(EPOCH, MODEL_NAMES, np.zeros(7), np.zeros(7))
    goal = bagio.point_stamped_msg(EPOCH, GOAL)
    empty = tmp_path / "empty"
    with bagio.BagWriter(empty, "mcap"):
        pass
    return {
        "missing topic": (_write(tmp_path / "no_js", [("/goal", bagio.POINT_STAMPED, goal, EPOCH)]), ["/joint_states"]),
        "wrong type": (_write(tmp_path / "wrong", [("/joint_states", bagio.POINT_STAMPED, goal, EPOCH)]),
                       ["/joint_states", "expected sensor_msgs/msg/JointState"]),
        "empty": (empty, ["empty bag"]),
        "truncated": (truncated, ["truncated"]),
        "unknown joints": (synthetic_bag(tmp_path / "driver", names=DRIVER_NAMES, seconds=0.5), ["unknown joint", "lbr_iiwa_joint_1"]),
        "missing goal": (_write(tmp_path / "no_goal", [("/joint_states", bagio.JOINT_STATE, js, EPOCH)]), ["no goal", "--goal"]),
        "not a bag": (tmp_path / "nope", ["no such bag"]),
        "good": (good, []),
    }


def test_bad_inputs_one_line_errors_inputs_untouched(tmp_path: Path, model: Path, capsys: pytest.CaptureFixture) -> None:
    cases = _bad_bags(tmp_path)
    for name, (bag_path, fragments) in cases.items():
        if name == "good":
            continue
        before = tree_hash(bag_path) if bag_path.exists() else None
        out = tmp_path / f"out_{name.replace(' ', '_')}"
        _expect_error(capsys, ["replay", str(bag_path), "--model", str(model), "--out", str(out)], *fragments)
        assert not out.exists(), name
        assert (tree_hash(bag_path) if bag_path.exists() else None) == before, name
    good = cases["good"][0]
    _expect_error(capsys, ["replay", str(good), "--model", str(model), "--out", str(good / "inside")], "inside the input bag")


def test_write_bag_refuses_to_overwrite(tmp_path: Path, model: Path, capsys: pytest.CaptureFixture) -> None:
    bag_path = synthetic_bag(tmp_path / "b", seconds=0.5)
    (tmp_path / "out" / "b.replay").mkdir(parents=True)
    _expect_error(capsys, ["replay", str(bag_path), "--model", str(model), "--out", str(tmp_path / "out"), "--write-bag"],
                  "already exists")


# --------------------------------------------------------------------------- invalid outputs and safety


def test_all_outputs_invalid_is_one_line_exit_2_and_writes_nothing(tmp_path: Path, model: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    from model_factory import with_broken_output

    bag_path = synthetic_bag(tmp_path / "b", seconds=0.5)
    broken = with_broken_output(model, tmp_path / "short.onnx", "nan_if_negative")
    # every observation negative on joint 1 -> every output NaN (the load-time check call sees 0 and passes)
    negative = tmp_path / "neg"
    with bagio.BagWriter(negative, "mcap") as writer:
        writer.write("/goal", bagio.POINT_STAMPED, bagio.point_stamped_msg(EPOCH, GOAL), EPOCH)
        for k in range(40):
            t = EPOCH + k * DT_NS
            writer.write("/joint_states", bagio.JOINT_STATE, bagio.joint_state_msg(t, MODEL_NAMES, np.full(7, -0.3), np.zeros(7)), t)
    err = _expect_error(capsys, ["replay", str(negative), "--model", str(broken), "--out", str(tmp_path / "out")],
                        "all 39 model outputs on 1 bag(s) were invalid", "NaN/inf")
    assert "Traceback" not in err and not (tmp_path / "out").exists()
    assert tree_hash(bag_path)  # the other bag is untouched by this run


def test_some_invalid_outputs_are_counted_and_not_scored(tmp_path: Path, model: Path, capsys: pytest.CaptureFixture) -> None:
    from model_factory import with_broken_output

    bag_path = synthetic_bag(tmp_path / "b", seconds=3.0)  # joint 1 swings through 0: some observations negative
    broken = with_broken_output(model, tmp_path / "neg.onnx", "nan_if_negative")
    report = run_replay([bag_path], broken, tmp_path / "out", "--write-bag")
    rep = report["bags"][0]
    err = capsys.readouterr().err
    assert 0 < rep["invalid_outputs"] < rep["decisions"] and "NaN/inf" in rep["first_invalid_output"]
    assert f"{rep['invalid_outputs']} of {rep['decisions']} model outputs invalid" in err
    assert np.isfinite(rep["overall"]["mae_rad"]) and rep["seam_jerk"] is None
    assert report["overall"]["invalid_outputs"] == rep["invalid_outputs"]
    assert rep["safety"]["held_decisions"] >= rep["invalid_outputs"]
    out_bag = Path(rep["output_bag"]["path"])
    empty = sum(len(bagio.deserialize(m.data, m.msgtype).points) == 0
                for m in bagio.iter_raw_messages(out_bag, ["/policy/joint_trajectory"]))
    assert empty == rep["safety"]["held_decisions"] == rep["output_bag"]["held"]


def test_out_of_distribution_bag_is_reported_warned_and_held_in_the_written_bag(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A model trained on |q_1| <= 0.2 rad replays a recording where joint 1 swings 0.5 rad: the decisions
    beyond 0.3 rad (the margin is a quarter of the 0.4 rad width) are out of distribution; replay says so per
    bag and on the console, and --write-bag holds those decisions and clamps the rest (limits and velocity
    from the measured position), as the node would."""
    low, high = [-0.2] + [-3.0] * 13 + [-2.0] * 3, [0.2] + [3.0] * 13 + [2.0] * 3
    narrow = make_tiny_model(tmp_path / "narrow.onnx", seed=3, observation_range={"low": low, "high": high})
    bag_path = synthetic_bag(tmp_path / "b", seconds=1.0)
    before = tree_hash(bag_path)
    report = run_replay([bag_path], narrow, tmp_path / "out", "--write-bag")
    err = capsys.readouterr().err
    rep = report["bags"][0]
    safety = rep["safety"]
    assert 0.1 < safety["ood_fraction"] < 0.9 and safety["ood_decisions"] == round(safety["ood_fraction"] * rep["decisions"])
    assert "joint_positions[lbr_iiwa_joint_1]" in safety["worst_ood"] and "of decisions out of distribution" in err
    assert report["overall"]["safety"]["ood_fraction"] == safety["ood_fraction"]
    assert rep["output_bag"]["content"].startswith("what policy_node would publish")
    out_bag = Path(rep["output_bag"]["path"])
    meta = OnnxPolicy(narrow, warmup=0).metadata
    step = np.array(meta.limits.velocity) * meta.control_period_s
    written = [bagio.deserialize(m.data, m.msgtype) for m in bagio.iter_raw_messages(out_bag, ["/policy/joint_trajectory"])]
    assert len(written) == rep["decisions"]
    assert sum(len(msg.points) == 0 for msg in written) == safety["held_decisions"] >= safety["ood_decisions"]
    for msg in written:
        points = np.array([p.positions for p in msg.points]).reshape(-1, 7)
        assert np.all(points >= np.array(meta.limits.lower) - 1e-12) and np.all(points <= np.array(meta.limits.upper) + 1e-12)
        assert np.all(np.abs(np.diff(points, axis=0)) <= step + 1e-9)
    assert tree_hash(bag_path) == before


def test_replay_counts_commands_outside_limits_and_steps_beyond_the_velocity_limit(tmp_path: Path) -> None:
    """The untrained tiny model predicts chunks that jump: the review counts them, as fractions of the
    predicted commands (N·H)."""
    model_path = make_tiny_model(tmp_path / "m.onnx", seed=3)
    rep = replay_bag(synthetic_bag(tmp_path / "b", seconds=0.5), OnnxPolicy(model_path, warmup=0))
    safety = rep.report["safety"]
    n, h = rep.predicted.shape[:2]
    predicted = rep.predicted.astype(np.float64)
    meta = OnnxPolicy(model_path, warmup=0).metadata
    outside = ((predicted < meta.limits.lower) | (predicted > meta.limits.upper)).any(axis=2).sum()
    assert safety["outside_limits_commands"] == outside and safety["outside_limits_fraction"] == pytest.approx(outside / (n * h))
    steps = np.diff(np.concatenate([rep.decisions.measured[:, None], predicted], axis=1), axis=1)
    fast = (np.abs(steps) > np.array(meta.limits.velocity) * meta.control_period_s + 1e-9).any(axis=2).sum()
    assert safety["velocity_violation_steps"] == fast > 0


# --------------------------------------------------------------------------- real-time chunking


def test_rtc_model_reports_prefix_consistency_on_recorded_prefixes(tmp_path: Path, model: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    """For an RTC model the recorded commands of ticks k..k+d-1 are the prefix at decision k; the
    report gives the step from the last committed action to the first new one, recomputed here."""
    from flow_policy_ros.data.replay_decisions import build_decisions, decision_noise
    from flow_policy_ros.data.replay_source import read_source

    rtc = make_tiny_model(tmp_path / "rtc.onnx", seed=5, horizon=8, rtc_max_delay=3)
    bag_path = synthetic_bag(tmp_path / "bag", seed=4)
    report = run_replay([bag_path], rtc, tmp_path / "out", "--rtc-prefix", "2", "--seed", "3")
    assert "rtc prefix d=2" in capsys.readouterr().out
    rep = report["bags"][0]["rtc_prefix"]
    assert rep["prefix_length"] == 2 and rep["reproduced"] is True and rep["invalid_outputs"] == 0
    policy = OnnxPolicy(rtc, warmup=0)
    dec = build_decisions(read_source(bag_path, policy.metadata), policy.metadata)
    noise = decision_noise(3, len(dec.ticks_ns), 8, 7)
    usable = np.flatnonzero(dec.valid[:, 2])
    assert rep["decisions"] == len(usable) > 50
    steps, recorded = [], []
    for i in usable[:: max(1, len(usable) // 10)]:
        out = policy.predict(dec.observations[i], noise[i], prefix_actions=dec.targets[i].astype(np.float32), prefix_length=2)
        np.testing.assert_array_equal(out[:2], dec.targets[i, :2].astype(np.float32))
        steps.append(np.abs(out[2].astype(np.float64) - out[1]).max())
        recorded.append(np.abs(dec.targets[i, 2] - dec.targets[i, 1]).max())
    assert max(steps) <= rep["seam_step_max_abs_rad"] + 1e-6
    assert rep["seam_step_mean_abs_rad"] > 0 and rep["recorded_step_mean_abs_rad"] > 0
    assert 0.0 <= rep["beyond_velocity_limit_fraction"] <= 1.0
    assert report["overall"]["rtc_prefix"]["decisions"] == rep["decisions"]
    assert report["overall"]["rtc_prefix"]["seam_step_mean_abs_rad"] == pytest.approx(rep["seam_step_mean_abs_rad"])
    # the default prefix is the model's d_max; a plain model has no prefix metric
    assert run_replay([bag_path], rtc, tmp_path / "default")["bags"][0]["rtc_prefix"]["prefix_length"] == 3
    assert run_replay([bag_path], model, tmp_path / "plain")["overall"]["rtc_prefix"] is None


@pytest.mark.parametrize("which, value, fragment", [
    ("plain", "2", "not a real-time chunking model"), ("rtc", "4", "must be in [1, d_max=3]"), ("rtc", "0", "must be in")])
def test_rtc_prefix_argument_is_checked(tmp_path: Path, model: Path, capsys: pytest.CaptureFixture,
                                        which: str, value: str, fragment: str) -> None:
    rtc = make_tiny_model(tmp_path / "rtc.onnx", seed=5, horizon=8, rtc_max_delay=3)
    bag_path = synthetic_bag(tmp_path / "bag", seed=4)
    argv = ["replay", str(bag_path), "--model", str(rtc if which == "rtc" else model), "--out", str(tmp_path / "o"),
            "--no-plots", "--rtc-prefix", value]
    _expect_error(capsys, argv, "--rtc-prefix", fragment)
