"""The out-of-distribution guard: the pure measure (runtime/ood.py), the controller's holds and goal
rejections, and the training range as the export writes it into the metadata (and older files
without it still load, with the guard off)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from model_factory import make_checkpoint, make_tiny_model

from flow_policy_ros.contract import IIWA_JOINT_NAMES, JointLimits, ObservationSpec
from flow_policy_ros.errors import ModelFileError, SafetyError
from flow_policy_ros.runtime.controller import (
    Command,
    ControllerConfig,
    InferenceRequest,
    InferenceResult,
    PolicyController,
    Stop,
)
from flow_policy_ros.runtime.metadata import METADATA_KEY, PolicyMetadata
from flow_policy_ros.runtime.onnx_policy import OnnxPolicy
from flow_policy_ros.runtime.ood import (
    MIN_RANGE_WIDTH,
    ObservationRange,
    classify,
    observation_labels,
    ood_excess,
    ood_score,
    ood_scores,
)
from flow_policy_ros.runtime.safety import SafetyLimits

SPEC = ObservationSpec(joint_names=IIWA_JOINT_NAMES, fields=("joint_positions", "goal"))
LOW = np.array([-0.5, 0.1, -0.2, -2.0, -0.1, 0.5, -0.6, 0.45, -0.3, 0.25])
HIGH = np.array([0.5, 1.2, 0.2, -0.6, 0.1, 1.6, 0.6, 0.70, 0.3, 0.55])
RANGE = ObservationRange(LOW, HIGH, observation_labels(SPEC), "test")
MID = (LOW + HIGH) / 2
H, A = 8, 7
PERIOD_NS = 20_000_000
LIMITS = SafetyLimits.from_joint_limits(JointLimits())
GOAL = MID[7:]


# --------------------------------------------------------------------------- the pure measure


def test_labels_name_every_joint_and_goal_axis():
    labels = observation_labels(ObservationSpec(joint_names=("a", "b"), fields=("joint_positions", "joint_velocities", "goal")))
    assert labels == ("joint_positions[a]", "joint_positions[b]", "joint_velocities[a]", "joint_velocities[b]",
                      "goal[x]", "goal[y]", "goal[z]")


def test_excess_is_distance_outside_in_range_widths():
    obs = MID.copy()
    obs[3] = HIGH[3] + 0.7  # joint 4: width 1.4, 0.7 rad above -> 0.5 widths
    obs[8] = LOW[8] - 0.06  # goal y: width 0.6 -> 0.1 widths
    excess = ood_excess(obs, RANGE)
    assert excess[3] == pytest.approx(0.5) and excess[8] == pytest.approx(0.1)
    assert np.count_nonzero(excess) == 2
    score = ood_score(obs, RANGE)
    assert (score.index, score.label) == (3, "joint_positions[lbr_iiwa_joint_4]") and score.value == pytest.approx(0.5)
    assert "joint_positions[lbr_iiwa_joint_4] = 0.100 is 0.5 range widths outside the training range [-2.000, -0.600]" \
        == score.describe()
    np.testing.assert_allclose(ood_scores(np.stack([MID, obs]), RANGE), [0.0, 0.5])


def test_degenerate_range_uses_the_width_floor_and_nan_is_infinitely_far():
    rng = ObservationRange([1.0], [1.0], ("goal[z]",))
    assert ood_excess(np.array([1.0 + MIN_RANGE_WIDTH]), rng)[0] == pytest.approx(1.0)
    assert ood_excess(np.array([np.nan]), rng)[0] == np.inf


def test_classify_levels():
    assert [classify(v, 0.25) for v in (0.0, 0.125, 0.126, 0.25, 0.26)] == ["ok", "ok", "warn", "warn", "ood"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6), min_size=10, max_size=10))
def test_inside_the_range_is_zero_and_outside_is_positive(values):
    obs = np.array(values)
    inside = np.all((obs >= LOW) & (obs <= HIGH))
    score = ood_score(obs, RANGE).value
    assert (score == 0.0) == inside and score >= 0.0
    clipped = np.clip(obs, LOW, HIGH)
    assert ood_score(clipped, RANGE).value == 0.0


def test_range_refuses_inconsistent_values():
    with pytest.raises(SafetyError, match="low 2.0 above high 1.0"):
        ObservationRange([2.0], [1.0], ("x",))
    with pytest.raises(SafetyError, match="finite"):
        ObservationRange([np.nan], [1.0], ("x",))


# --------------------------------------------------------------------------- the controller


def make(execution: str = "stream", margin: float = 0.25, observation_range: ObservationRange | None = RANGE) -> PolicyController:
    config = ControllerConfig(SPEC, H, PERIOD_NS * 1e-9, execution, replan_every=4, observation_range=observation_range,
                              ood_margin=margin)
    return PolicyController(config, LIMITS)


def joint_state(ctrl: PolicyController, now_ns: int, q: np.ndarray) -> list:
    return ctrl.on_joint_state(now_ns, q, None, q, now_ns)


def run_one_chunk(ctrl: PolicyController, q: np.ndarray, goal: np.ndarray = GOAL) -> list:
    ctrl.on_goal(goal, "world")
    joint_state(ctrl, 0, q)
    out = ctrl.on_tick(0)
    for d in joint_state(ctrl, 1_000_000, q):
        out.append(d)
        if isinstance(d, InferenceRequest):
            out += ctrl.on_inference_result(InferenceResult.for_request(d, 0.001, np.tile(q, (H, 1))))
    return out


def test_observation_inside_the_range_runs():
    ctrl = make()
    out = run_one_chunk(ctrl, MID[:7])
    assert ctrl.state == "running" and any(isinstance(d, Command) for d in out)
    assert ctrl.warning == "" and ctrl.ood is not None and ctrl.ood.value == 0.0
    assert ctrl.ood_guard == "on (margin 0.25 range widths)"


def test_observation_beyond_the_margin_holds_naming_the_field_and_resumes():
    ctrl = make("trajectory")
    q = MID[:7].copy()
    run_one_chunk(ctrl, q)
    assert ctrl.state == "running"
    far = q.copy()
    far[1] = HIGH[1] + 0.5 * (HIGH[1] - LOW[1])  # joint 2, half a range width above: beyond 0.25
    joint_state(ctrl, PERIOD_NS - 1, far)
    out = ctrl.on_tick(PERIOD_NS)
    assert [type(d) for d in out] == [Stop] and ctrl.state == "hold"
    assert "out of distribution" in ctrl.reason and "joint_positions[lbr_iiwa_joint_2]" in ctrl.reason
    assert ctrl.counters.ood_holds == 1
    # no inference from an OOD joint state, and no second Stop while it stays out
    for k in range(2, 6):
        assert [d for d in joint_state(ctrl, k * PERIOD_NS - 1, far) if isinstance(d, InferenceRequest)] == []
        assert ctrl.on_tick(k * PERIOD_NS) == []
    assert ctrl.counters.ood_holds == 1 and ctrl.counters.stops_sent == 1
    joint_state(ctrl, 6 * PERIOD_NS - 1, q)
    ctrl.on_tick(6 * PERIOD_NS)
    assert ctrl.state == "running"


def test_inference_request_on_a_joint_state_that_left_the_range_holds_instead():
    ctrl = make()
    ctrl.on_goal(GOAL, "world")
    joint_state(ctrl, 0, MID[:7])
    ctrl.on_tick(0)  # due: the next joint state triggers inference
    far = MID[:7].copy()
    far[0] = -3.0
    out = joint_state(ctrl, 1_000_000, far)
    assert not [d for d in out if isinstance(d, InferenceRequest)]
    assert ctrl.state == "hold" and "joint_positions[lbr_iiwa_joint_1]" in ctrl.reason


def test_between_half_the_margin_and_the_margin_warns_and_keeps_running():
    ctrl = make()
    q = MID[:7].copy()
    q[5] = HIGH[5] + 0.2 * (HIGH[5] - LOW[5])
    out = run_one_chunk(ctrl, q)
    assert ctrl.state == "running" and any(isinstance(d, Command) for d in out)
    assert "near the edge of the training range" in ctrl.warning and "lbr_iiwa_joint_6" in ctrl.warning
    assert ctrl.counters.ood_warnings == 1


@pytest.mark.parametrize("goal, frame, fragment", [
    (np.array([100.0, 0.0, 0.4]), "world", "goal[x] = 100.000"),
    (GOAL, "base_link", "frame 'base_link', expected 'world'"),
    (GOAL, "", "frame '', expected 'world'"),
    (np.array([np.nan, 0.0, 0.4]), "world", "finite"),
])
def test_rejected_goal_keeps_waiting_and_is_counted(goal, frame, fragment):
    ctrl = make()
    assert ctrl.on_goal(goal, frame) == []
    assert ctrl.counters.rejected_goals == 1 and fragment in ctrl.goal_rejection
    joint_state(ctrl, 0, MID[:7])
    ctrl.on_tick(0)
    assert ctrl.state == "waiting" and "last goal rejected" in ctrl.reason and fragment in ctrl.reason


def test_rejected_goal_keeps_the_previous_goal():
    ctrl = make()
    run_one_chunk(ctrl, MID[:7])
    generation = ctrl.generation
    ctrl.on_goal(np.array([0.0, 0.0, -5.0]), "world")
    assert ctrl.generation == generation and ctrl.counters.rejected_goals == 1 and ctrl.state == "running"
    ctrl.on_goal(GOAL + 0.01, "world")  # a good new goal is taken
    assert ctrl.generation == generation + 1


def test_without_a_training_range_the_guard_is_off():
    ctrl = make(observation_range=None)
    q = np.full(7, 0.0)
    q[3] = -2.0
    run_one_chunk(ctrl, q, goal=np.array([5.0, 5.0, 5.0]))
    assert ctrl.state == "running" and ctrl.ood is None
    assert ctrl.ood_guard == "off: no training range in metadata"


def test_config_refuses_a_bad_margin_or_range():
    with pytest.raises(SafetyError, match="ood_margin"):
        ControllerConfig(SPEC, H, 0.02, ood_margin=-0.1)
    with pytest.raises(SafetyError, match="covers 2 values"):
        ControllerConfig(SPEC, H, 0.02, observation_range=ObservationRange([0, 0], [1, 1], ("a", "b")))


# --------------------------------------------------------------------------- metadata and export


def test_export_records_the_training_range_from_the_data_summary(tmp_path: Path):
    low, high = [-1.0] * 17, [1.0] * 17
    low[3], high[3] = -0.25, 0.75
    path = make_tiny_model(tmp_path / "m.onnx", observation_range={"low": low, "high": high})
    meta = OnnxPolicy(path, warmup=0).metadata
    assert meta.observation_range is not None
    np.testing.assert_array_equal(meta.observation_range.low, low)
    np.testing.assert_array_equal(meta.observation_range.high, high)
    assert meta.observation_range.labels[3] == "joint_positions[lbr_iiwa_joint_4]"
    assert PolicyMetadata.from_json(meta.to_json(), model_hash=meta.model_hash) == meta


def test_export_falls_back_to_minmax_statistics(tmp_path: Path):
    import torch

    from flow_policy_ros.export.onnx_export import training_range
    from flow_policy_ros.policy.checkpoint import load_checkpoint

    ckpt_path = make_checkpoint(tmp_path / "c.pt")
    payload = torch.load(ckpt_path, weights_only=True)
    del payload["data_summary"]["observation_range"]  # a checkpoint trained before summaries had it
    torch.save(payload, ckpt_path)
    ckpt = load_checkpoint(ckpt_path)
    rng = training_range(ckpt)
    np.testing.assert_allclose(rng.low, ckpt.stats.obs_shift - ckpt.stats.obs_scale)
    np.testing.assert_allclose(rng.high, ckpt.stats.obs_shift + ckpt.stats.obs_scale)
    assert "minmax normalization statistics" in rng.source


def test_model_without_a_range_still_loads_and_a_bad_range_is_refused(tmp_path: Path):
    path = make_tiny_model(tmp_path / "m.onnx")
    model = onnx.load(str(path))
    data = json.loads(model.metadata_props[0].value)

    def write(name: str, changed: dict) -> Path:
        copy = onnx.load(str(path))
        copy.metadata_props[0].value = json.dumps(changed)
        onnx.save(copy, str(tmp_path / name))
        return tmp_path / name

    old = write("old.onnx", {k: v for k, v in data.items() if k != "observation_range"})
    assert OnnxPolicy(old, warmup=0).metadata.observation_range is None
    bad = write("bad.onnx", {**data, "observation_range": {"low": [0.0] * 3, "high": [1.0] * 3}})
    with pytest.raises(ModelFileError, match="observation_range has 3/3 values, expected obs_dim 17"):
        OnnxPolicy(bad, warmup=0)
    assert model.metadata_props[0].key == METADATA_KEY


def test_training_data_in_metadata_holds_no_absolute_path():
    from flow_policy_ros.export.onnx_export import summarize_training_data

    out = summarize_training_data({"root": "/work/data/reach", "data_path": "/work/data/reach", "data_sha256": "ab" * 32,
                                   "note": "/work/runs/x/cache/windows-1.npz", "sources": ["seed1/ep_0", "seed1/ep_1"],
                                   "cache": {"file": "/work/runs/x/cache/windows-1.npz"}})
    assert out["root"] == "data/reach" and out["data_path"] == "data/reach" and out["data_sha256"] == "ab" * 32
    assert out["note"] == "runs/x/cache/windows-1.npz" and out["sources_count"] == 2
    assert "/work" not in json.dumps(out)


@pytest.mark.parametrize("name", ["iiwa_reach", "iiwa_reach_around"])
def test_shipped_models_carry_a_training_range_and_no_absolute_path(name: str):
    meta = OnnxPolicy(Path(__file__).resolve().parents[1] / "models" / f"{name}.onnx", warmup=0).metadata
    assert meta.observation_range is not None and len(meta.observation_range.labels) == meta.obs_dim
    assert "/work" not in json.dumps(meta.training_data)
