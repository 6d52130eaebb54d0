"""The training configs in config/: the default names are the recipes of the shipped models.

``config/train_reach.yaml`` and ``config/train_reach_around.yaml`` must be exactly the configs
stored in the shipped checkpoints (``models/*.pt``), their headers must name the model and its
measured result, the round-1 recipes must say they are not the shipped ones, and
``config/train_reach_jtc.yaml`` must be the shipped reach recipe with only its data section changed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from flow_policy_ros.policy.checkpoint import load_checkpoint
from flow_policy_ros.policy.config import ExperimentConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG = REPO_ROOT / "config"
SHIPPED = {"train_reach.yaml": "iiwa_reach", "train_reach_around.yaml": "iiwa_reach_around",
           "train_reach_around_rtc.yaml": "iiwa_reach_around_rtc", "train_reach_rtc.yaml": "iiwa_reach_rtc",
           "train_reach_object.yaml": "iiwa_reach_object"}


def header(path: Path) -> str:
    lines = path.read_text().splitlines()
    return "\n".join(line for line in lines[: next(i for i, line in enumerate(lines) if not line.startswith("#"))])


@pytest.mark.parametrize("path", sorted(CONFIG.glob("train_*.yaml")), ids=lambda p: p.name)
def test_every_training_config_loads(path):
    ExperimentConfig.from_yaml(path)


@pytest.mark.parametrize(("name", "model"), sorted(SHIPPED.items()))
def test_default_recipes_are_the_shipped_checkpoints_configs(name, model):
    """The whole config (policy, data, train) equals the one saved in the shipped checkpoint."""
    assert load_checkpoint(REPO_ROOT / "models" / f"{model}.pt").config == ExperimentConfig.from_yaml(CONFIG / name)


@pytest.mark.parametrize("name", ["train_reach.yaml", "train_reach_around.yaml"])
def test_default_recipe_headers_name_the_model_its_result_and_the_commands(name):
    text = header(CONFIG / name)
    model = SHIPPED[name]
    assert f"shipped models/{model}.onnx" in text and f"models/{model}.md" in text
    assert f"--config config/{name}" in text and "flow-policy export" in text and "flow-policy eval-sim" in text
    assert "200/200 success" in text and "peak acceleration" in text


@pytest.mark.parametrize(("name", "shipped"), [("train_reach_round1.yaml", "train_reach.yaml"),
                                               ("train_reach_around_round1.yaml", "train_reach_around.yaml")])
def test_round1_recipes_say_they_are_not_the_shipped_ones(name, shipped):
    text = header(CONFIG / name)
    assert "ROUND-1" in text and "NOT the recipe of the shipped" in text and f"config/{shipped}" in text
    assert ExperimentConfig.from_yaml(CONFIG / name).policy.chunk_basis == "none"


def test_jtc_recipe_is_the_shipped_reach_recipe_with_a_jtc_data_section():
    jtc, shipped = ExperimentConfig.from_yaml(CONFIG / "train_reach_jtc.yaml"), ExperimentConfig.from_yaml(CONFIG / "train_reach.yaml")
    assert (jtc.policy, jtc.train) == (shipped.policy, shipped.train)
    assert jtc.data.action_source == "joint_trajectory"
    assert jtc.data.trajectory_topic == "/joint_trajectory_controller/joint_trajectory"
