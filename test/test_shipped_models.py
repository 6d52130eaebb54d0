"""The shipped, trained policies in ``models/`` succeed in closed loop (real PyBullet, real ONNX Runtime).

Five held-out episodes per model (evaluation seed 0: episode seeds 900_000_000..900_000_004,
disjoint from the training collection), run exactly as ``flow-policy eval-sim`` runs them with
the node's defaults (receding horizon, replan every 8, the model's default guidance scale).
A missing model file fails: a release without its shipped models is broken.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from flow_policy_ros.runtime.onnx_policy import OnnxPolicy
from flow_policy_ros.sim.closed_loop import LoopConfig
from flow_policy_ros.sim.evaluate import evaluate, format_summary

MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
EPISODES = 5
MIN_SUCCESSES = 4


@pytest.mark.slow
@pytest.mark.parametrize(("model", "task"), [("iiwa_reach.onnx", "reach"), ("iiwa_reach_around.onnx", "reach_around"),
                                             ("iiwa_reach_2step.onnx", "reach"),
                                             ("iiwa_reach_around_2step.onnx", "reach_around"),
                                             ("iiwa_reach_rtc.onnx", "reach"),
                                             ("iiwa_reach_object.onnx", "reach_object")])
def test_shipped_model_succeeds_in_closed_loop(model: str, task: str) -> None:
    path = MODELS_DIR / model
    if not path.is_file():
        pytest.fail(f"shipped model {path} is missing (train and export it, see README)")
    policy = OnnxPolicy(path, seed=0)
    report, _ = evaluate(policy, task, EPISODES, seed=0, config=LoopConfig(), progress=False)
    assert report["successes"] >= MIN_SUCCESSES, format_summary(report)
    assert report["failures"]["self_collision"] == 0, format_summary(report)


@pytest.mark.slow
def test_shipped_camera_model_finds_the_object_in_the_image() -> None:
    """The image drives iiwa_reach_object (83 % on 200 held-out episodes, see its model card): with the
    camera embedding (w = 1) it succeeds more often and ends nearer the cube than with the null
    embedding (w = 0, arm state only), on the same episodes and noise."""
    from dataclasses import replace

    import numpy as np

    path = MODELS_DIR / "iiwa_reach_object.onnx"
    if not path.is_file():
        pytest.fail(f"shipped model {path} is missing (train and export it, see models/iiwa_reach_object.md)")
    policy = OnnxPolicy(path, seed=0)
    outcome = {}
    for w in (0.0, 1.0):
        report, results = evaluate(policy, "reach_object", 8, seed=0, config=replace(LoopConfig(), guidance_scale=w),
                                   progress=False)
        outcome[w] = (report["successes"], float(np.median([r.final_distance_m for r in results])), format_summary(report))
    assert outcome[1.0][0] >= 6 and outcome[1.0][0] > outcome[0.0][0], outcome
    assert outcome[1.0][1] < 0.5 * outcome[0.0][1], outcome


@pytest.mark.parametrize(("student", "teacher"), [("iiwa_reach_2step", "iiwa_reach"),
                                                  ("iiwa_reach_around_2step", "iiwa_reach_around")])
def test_shipped_two_step_students_are_reflow_students_of_the_shipped_teachers(student: str, teacher: str) -> None:
    """The few-step models are 2-step Euler graphs distilled from the shipped 10-step checkpoints
    (the teacher's sha256 in the metadata), with the teacher's I/O, guidance default and temperature."""
    from flow_policy_ros.policy.checkpoint import file_sha256

    fast, slow = OnnxPolicy(MODELS_DIR / f"{student}.onnx", warmup=0), OnnxPolicy(MODELS_DIR / f"{teacher}.onnx", warmup=0)
    assert (fast.metadata.solver_steps, fast.metadata.solver) == (2, "euler")
    assert slow.metadata.solver_steps == 10
    assert fast.metadata.training_data["distillation_method"] == "reflow"
    # a teacher given an observation density since (train-density) names the checkpoint it was made from
    from flow_policy_ros.policy.checkpoint import load_checkpoint

    density = load_checkpoint(MODELS_DIR / f"{teacher}.pt").density
    teacher_sha = file_sha256(MODELS_DIR / f"{teacher}.pt") if density is None else density["training"]["base_checkpoint_sha256"]
    assert fast.metadata.training_data["teacher_sha256"] == teacher_sha
    assert fast.metadata.io == slow.metadata.io
    assert (fast.metadata.guidance_scale, fast.metadata.noise_scale) == (slow.metadata.guidance_scale, slow.metadata.noise_scale)


RTC_MODEL = "iiwa_reach_around_rtc.onnx"


def _rtc_policy() -> OnnxPolicy:
    path = MODELS_DIR / RTC_MODEL
    if not path.is_file():
        pytest.fail(f"shipped model {path} is missing (train and export it, see models/iiwa_reach_around_rtc.md)")
    return OnnxPolicy(path, seed=0, warmup=1)


def test_shipped_rtc_model_reproduces_a_prefix() -> None:
    """The shipped real-time chunking model takes a committed prefix (here: the next d actions of
    its own plain chunk after d executed ones) and returns it exactly; the new rows depend on it."""
    import numpy as np

    from flow_policy_ros.sim.tasks import sample_episode

    policy = _rtc_policy()
    assert policy.rtc and policy.metadata.rtc_max_delay == 12
    spec = sample_episode("reach_around", 900_000_000)
    obs = np.concatenate([spec.start_q, spec.goal]).astype(np.float32)
    noise = policy.sample_noise()
    plain = policy.predict(obs, noise)
    for d in (1, 4, 11):
        moved = np.concatenate([plain[d - 1], spec.goal]).astype(np.float32)
        prefix = np.zeros_like(plain)
        prefix[:d] = plain[d:2 * d]
        out = policy.predict(moved, noise, prefix_actions=prefix, prefix_length=d)
        assert np.array_equal(out[:d], prefix[:d])
        assert not np.allclose(out[d:], policy.predict(moved, noise)[d:], atol=1e-4)


@pytest.mark.slow
def test_shipped_rtc_model_succeeds_in_rtc_mode_under_200_ms_delay() -> None:
    """Closed loop, rtc mode, +200 ms, default settings (the execution horizon follows the delay):
    success, every chunk returned its committed prefix exactly, only each episode's first chunk is late
    (its delay is not measured yet; shifted, not dropped), the step from the prefix into the new rows
    is small, and no step into the first chunk (its prefix is the hold position)."""
    import numpy as np

    policy = _rtc_policy()
    seams = []
    predict = policy.predict

    def recording_predict(observation, noise=None, guidance_scale=None, prefix_actions=None, prefix_length=None):
        out = predict(observation, noise, guidance_scale, prefix_actions, prefix_length)
        if prefix_length:
            assert np.array_equal(out[:prefix_length], np.asarray(prefix_actions, np.float32)[:prefix_length])
            seams.append(np.abs(out[prefix_length] - out[prefix_length - 1]))
        return out

    policy.predict = recording_predict
    config = LoopConfig(chunking="rtc", inject_delay_ms=200.0)
    report, results = evaluate(policy, "reach_around", EPISODES, seed=0, config=config, progress=False)
    assert report["successes"] >= MIN_SUCCESSES, format_summary(report)
    counters = report["controller"]
    assert counters["rtc_late_chunks"] == counters["rtc_late_used"] <= EPISODES and counters["rtc_late_discarded"] == 0
    for r in results:  # the arm starts from rest: no command step near the velocity limit into the first chunk
        first = np.abs(np.diff(r.commands[: r.chunk_ticks[0] + 4], axis=0)).max()
        assert first <= 0.5 * policy.metadata.control_period_s * np.min(policy.metadata.limits.velocity), first
    step_limit = np.asarray(policy.metadata.limits.velocity) * policy.metadata.control_period_s
    largest = np.max(seams, axis=1)
    assert len(seams) > 50 and np.median(largest) <= 0.25 * step_limit.min(), np.median(largest)
    assert np.sum(largest > step_limit.min()) <= EPISODES, largest


def test_node_default_chunking_is_rtc_for_the_rtc_model_only() -> None:
    """policy_node's default ``chunking: auto`` runs the shipped RTC model in rtc mode (the delay
    protocol's winner) and a plain model with receding horizon."""
    from rclpy.parameter import Parameter

    from flow_policy_ros.ros.policy_parameters import PARAMETERS, PolicyNodeParams

    defaults = {name: (() if spec.default.name.endswith("_ARRAY") else None) if isinstance(spec.default, Parameter.Type)
                else tuple(spec.default) if isinstance(spec.default, list) else spec.default
                for name, spec in PARAMETERS.items()}
    params = PolicyNodeParams(**defaults)
    assert params.chunking == "auto"
    rtc = _rtc_policy().metadata
    assert params.controller_config(rtc).chunking == "rtc"
    plain = OnnxPolicy(MODELS_DIR / "iiwa_reach_around.onnx", warmup=0).metadata
    assert params.controller_config(plain).chunking == "receding_horizon"


@pytest.mark.parametrize("name", ["iiwa_reach", "iiwa_reach_2step", "iiwa_reach_around", "iiwa_reach_around_2step",
                                  "iiwa_reach_around_rtc"])
def test_shipped_files_written_with_the_old_step_key_still_load(name: str) -> None:
    """Files written before ``solver_steps`` carry ``euler_steps``: the shipped metadata and checkpoint,
    with the key renamed back (they were re-exported with the density, issue 24), still load."""
    import json

    import onnx
    import torch

    from flow_policy_ros.policy.checkpoint import load_checkpoint
    from flow_policy_ros.policy.config import ExperimentConfig
    from flow_policy_ros.runtime.metadata import METADATA_KEY, PolicyMetadata

    model = onnx.load(str(MODELS_DIR / f"{name}.onnx"), load_external_data=False)
    raw = json.loads({p.key: p.value for p in model.metadata_props}[METADATA_KEY])
    payload = torch.load(MODELS_DIR / f"{name}.pt", map_location="cpu", weights_only=True)
    raw["euler_steps"] = raw.pop("solver_steps")
    old_config = json.loads(json.dumps(payload["config"]))
    old_config["policy"]["euler_steps"] = old_config["policy"].pop("solver_steps")
    meta = PolicyMetadata.from_json(json.dumps(raw), where=name)
    ckpt = load_checkpoint(MODELS_DIR / f"{name}.pt")
    assert meta.solver_steps == raw["euler_steps"] == ckpt.config.policy.solver_steps
    assert ExperimentConfig.from_dict(old_config).policy.solver_steps == meta.solver_steps
    assert json.loads(meta.to_json())["solver_steps"] == meta.solver_steps and "euler_steps" not in json.loads(meta.to_json())


@pytest.mark.parametrize("name", ["iiwa_reach", "iiwa_reach_2step", "iiwa_reach_around", "iiwa_reach_around_2step",
                                  "iiwa_reach_around_rtc", "iiwa_reach_rtc"])
def test_shipped_state_models_carry_their_training_action_range_and_density(name: str) -> None:
    """The output range guard is on for the shipped state models: their metadata's action_range is the
    one export derives from the shipped checkpoint, the graph keeps its density output, and the model
    card lists the file's sha256."""
    import hashlib

    from flow_policy_ros.export.onnx_export import training_action_range
    from flow_policy_ros.policy.checkpoint import load_checkpoint
    from flow_policy_ros.runtime.metadata import LOG_LIKELIHOOD_OUTPUT, output_guard_status

    policy = OnnxPolicy(MODELS_DIR / f"{name}.onnx", warmup=1)  # the load-time check call: inside the range
    meta = policy.metadata
    derived = training_action_range(load_checkpoint(MODELS_DIR / f"{name}.pt"))
    assert meta.action_range is not None and derived is not None
    assert output_guard_status(meta.action_range, 0.25) == "on (margin 0.25 range widths)"
    assert meta.action_range.labels == tuple(meta.action_joint_names)
    assert meta.action_range.low.tolist() == derived.low.tolist() and meta.action_range.high.tolist() == derived.high.tolist()
    assert meta.action_range.source == derived.source
    assert meta.density is not None and LOG_LIKELIHOOD_OUTPUT in [o.name for o in policy.session.get_outputs()]
    sha = hashlib.sha256((MODELS_DIR / f"{name}.onnx").read_bytes()).hexdigest()
    assert f"sha256 `{sha}`" in (MODELS_DIR / f"{name}.md").read_text()


def test_shipped_camera_model_carries_its_calibrated_camera_density() -> None:
    """iiwa_reach_object scores joints + its own encoder's embedding in the same graph (issue 24): the
    metadata's density is the checkpoint's camera density, calibrated on 200 held-out episodes at alpha
    0.01 (data dir recorded relative), the policy part of the checkpoint is the one it was made from,
    and the model card lists the file's sha256 and the threshold."""
    import hashlib

    from flow_policy_ros.policy.checkpoint import load_checkpoint
    from flow_policy_ros.runtime.metadata import LOG_LIKELIHOOD_OUTPUT

    policy = OnnxPolicy(MODELS_DIR / "iiwa_reach_object.onnx", warmup=1)  # load-time check: a finite score
    density = policy.metadata.density
    assert density is not None and [o.name for o in policy.session.get_outputs()] == ["actions", LOG_LIKELIHOOD_OUTPUT]
    ckpt = load_checkpoint(MODELS_DIR / "iiwa_reach_object.pt")
    assert ckpt.density["model"]["kind"] == "camera_embedding" and density.model["cameras"] == ["front"]
    assert density.model["embedding_directions"] == len(ckpt.density["model"]["embedding_components"])
    assert density.model["training"] == ckpt.density["training"]
    cal = density.calibration
    assert (cal["n"], cal["alpha"], cal["k"], cal["data"]) == (200, 0.01, 2, "data/calib_reach_object")
    assert cal["parity_relative"] <= 1e-4
    card = (MODELS_DIR / "iiwa_reach_object.md").read_text()
    sha = hashlib.sha256((MODELS_DIR / "iiwa_reach_object.onnx").read_bytes()).hexdigest()
    assert f"sha256 `{sha}`" in card and f"{density.threshold:.3f}" in card
