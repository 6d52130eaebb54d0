"""replay with an observation density: per-bag score distribution, flagged and held fractions, the
score plot, and --fail-on (ood, limits, velocity, density) exit codes in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from density_factory import make_density_model, set_threshold
from model_factory import make_tiny_model
from test_replay import synthetic_bag

from flow_policy_ros.cli import main


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    tmp = tmp_path_factory.mktemp("replay_density")
    rng = np.random.default_rng(0)
    obs = np.concatenate([rng.uniform(-0.5, 0.5, (2000, 7)), rng.uniform(-0.65, 0.65, (2000, 7)),
                          rng.normal(0.0, 0.05, (2000, 3)) + np.array([0.5, 0.0, 0.4])], axis=1)
    model = make_density_model(tmp, obs)
    bag = synthetic_bag(tmp / "bag", seed=1)
    plain = make_tiny_model(tmp / "plain.onnx", seed=3)
    return model, bag, plain


def _replay(tmp_path: Path, model: Path, bag: Path, *extra: str) -> tuple[int, dict]:
    out = tmp_path / "out"
    code = main(["replay", str(bag), "--model", str(model), "--out", str(out), *extra])
    report = json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else {}
    return code, report


def test_replay_reports_the_score_and_plots_it(setup, tmp_path) -> None:
    model, bag, _ = setup
    set_threshold(model, -1e6)
    code, report = _replay(tmp_path, model, bag)
    density = report["bags"][0]["density"]
    assert code == 0 and density["flagged_fraction"] == 0.0 and density["held_fraction"] == 0.0
    assert density["decisions"] == report["bags"][0]["decisions"] and density["min"] <= density["p50"]
    assert (tmp_path / "out" / "bag.density.png").stat().st_size > 1000
    set_threshold(model, density["p50"])  # half the decisions below: flagged ~ 50%, held with k = 2
    code, report = _replay(tmp_path / "2", model, bag, "--no-plots")
    half = report["bags"][0]["density"]
    assert 0.4 <= half["flagged_fraction"] <= 0.6 and 0 < half["held_fraction"] <= half["flagged_fraction"]
    assert report["overall"]["density"]["flagged_fraction"] == half["flagged_fraction"]


def test_fail_on_density_exits_1_in_one_line(setup, tmp_path, capsys) -> None:
    model, bag, plain = setup
    set_threshold(model, 1e6)  # every decision below
    code, _ = _replay(tmp_path, model, bag, "--no-plots", "--fail-on", "density=0.5,limits=1000000")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err[-1] == ("flow-policy replay: --fail-on exceeded: density: 100.00% of decisions below the "
                                     "density threshold > 0.5")
    set_threshold(model, -1e6)
    assert _replay(tmp_path / "2", model, bag, "--no-plots", "--fail-on", "density=0,ood=1")[0] == 0
    code, _ = _replay(tmp_path / "3", plain, bag, "--no-plots", "--fail-on", "density=0.1")
    assert code == 1 and "density: not measured (no density in the model)" in capsys.readouterr().err


def test_fail_on_is_parsed_strictly(setup, tmp_path, capsys) -> None:
    model, bag, _ = setup
    with pytest.raises(SystemExit) as info:
        main(["replay", str(bag), "--model", str(model), "--out", str(tmp_path / "o"), "--fail-on", "speed=1"])
    assert info.value.code == 2 and "expected KEY=VALUE with KEY one of" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["replay", str(bag), "--model", str(model), "--out", str(tmp_path / "o"), "--fail-on", "limits=1.5"])
