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
@pytest.mark.parametrize(("model", "task"), [("iiwa_reach.onnx", "reach"), ("iiwa_reach_around.onnx", "reach_around")])
def test_shipped_model_succeeds_in_closed_loop(model: str, task: str) -> None:
    path = MODELS_DIR / model
    if not path.is_file():
        pytest.fail(f"shipped model {path} is missing (train and export it, see README)")
    policy = OnnxPolicy(path, seed=0)
    report, _ = evaluate(policy, task, EPISODES, seed=0, config=LoopConfig(), progress=False)
    assert report["successes"] >= MIN_SUCCESSES, format_summary(report)
    assert report["failures"]["self_collision"] == 0, format_summary(report)
