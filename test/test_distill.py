"""Distillation (``flow-policy distill``, rectified-flow reflow): the pairs are the teacher's own
sampler per CFG branch, a one-step student keeps the modes a one-step teacher collapses, and the
student is an ordinary checkpoint that exports with its step count and provenance."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from model_factory import make_checkpoint
from test_train import bimodal_windows, toy_config

from flow_policy_ros.errors import UsageError
from flow_policy_ros.export.onnx_export import export_checkpoint, sampler_from_checkpoint
from flow_policy_ros.policy.checkpoint import file_sha256, load_checkpoint
from flow_policy_ros.policy.distill import DistillSettings, distill, student_times, teacher_endpoints
from flow_policy_ros.policy.flow import sample_chunks
from flow_policy_ros.policy.model import VelocityNet
from flow_policy_ros.policy.train import train

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("basis", [{}, {"chunk_basis": "bspline", "basis_size": 4}])
def test_pairs_come_from_the_teachers_sampler_conditional_or_unconditional(tmp_path, basis):
    ckpt = load_checkpoint(make_checkpoint(tmp_path / "t.pt", seed=3, **basis))
    net = VelocityNet(ckpt.config.policy)
    net.load_state_dict(ckpt.ema_state)
    gen = torch.Generator().manual_seed(0)
    obs = torch.randn(6, ckpt.config.policy.obs_dim, generator=gen)
    noise = torch.randn(6, 8, ckpt.config.policy.action_dim, generator=gen)
    drop = torch.tensor([False, True, False, True, True, False])
    with torch.no_grad():
        got = net.decode(teacher_endpoints(net, obs, net.encode(noise), drop, steps=4))
        conditional = sample_chunks(net, obs, noise, 1.0, 4)  # w = 1: the conditional field alone
        unconditional = sample_chunks(net, obs, noise, 0.0, 4)  # w = 0: the unconditional field alone
    want = torch.where(drop[:, None, None], unconditional, conditional)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(conditional, unconditional, atol=1e-3)  # the branches differ: the test can tell


def test_flow_times_are_half_on_the_student_grid():
    t = student_times(4000, 2, torch.Generator().manual_seed(1), torch.device("cpu"))
    on_grid = (t == 0.0) | (t == 0.5)
    assert 0.45 < float(on_grid.float().mean()) < 0.6
    assert float(t.min()) >= 0.0 and float(t.max()) < 1.0
    assert float(((t > 0.05) & (t < 0.45)).float().mean()) > 0.1  # and the rest spread over [0, 1)
    only_grid = student_times(500, 2, torch.Generator().manual_seed(2), torch.device("cpu"), grid_fraction=1.0)
    assert set(only_grid.tolist()) == {0.0, 0.5}


def _samples(path: Path, steps: int, c: float, n: int = 400) -> np.ndarray:
    sampler = sampler_from_checkpoint(load_checkpoint(path), steps=steps)
    obs = torch.tensor([[0.0, c, 0.0, 0.0]]).repeat(n, 1)
    noise = torch.randn(n, 2, 1, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        return sampler(obs, noise, torch.ones(1))[:, 0, 0].numpy()


def _mode_fractions(samples: np.ndarray, c: float) -> tuple[float, float, float]:
    target = 1.0 + c
    return (float(np.mean(np.abs(samples - target) < 0.3)), float(np.mean(np.abs(samples + target) < 0.3)),
            float(np.mean(np.abs(samples) < 0.5)))


@pytest.mark.slow
def test_one_step_student_keeps_both_modes_that_one_teacher_step_averages_away(tmp_path):
    data = bimodal_windows(tmp_path / "toy.npz")
    teacher = train(data, toy_config(1000), tmp_path / "teacher", progress=False).checkpoint_path
    c = 0.6
    plus, minus, mean = _mode_fractions(_samples(teacher, 1, c), c)
    assert mean > 0.5, (plus, minus, mean)  # one Euler step of the teacher lands near E[x1] = 0: no mode
    lines: list[str] = []
    result = distill(teacher, data, tmp_path / "student", DistillSettings(student_steps=1, steps=400, lr=1e-3,
                                                                          val_every=200), progress=False,
                     log=lines.append)
    plus, minus, mean = _mode_fractions(_samples(result.checkpoint_path, 1, c), c)
    assert plus > 0.25 and minus > 0.25 and plus + minus > 0.8, (plus, minus, mean)
    assert mean < 0.1, (plus, minus, mean)
    summary = json.loads((tmp_path / "student" / "distill_summary.json").read_text())
    assert summary["gap"] == result.gap and result.gap < 0.5 * summary["gap_before"]
    assert any(f"{summary['gap_before']:.5f}" in line for line in lines if "before distillation" in line)
    assert (tmp_path / "student" / "loss.png").stat().st_size > 1000
    assert (tmp_path / "student" / "train_log.csv").read_text().startswith("step,train_loss,val_loss")

    student = load_checkpoint(result.checkpoint_path)
    assert student.config.policy.solver_steps == 1
    assert student.config.policy.horizon == load_checkpoint(teacher).config.policy.horizon
    metadata, parity = export_checkpoint(result.checkpoint_path, tmp_path / "student.onnx")
    assert metadata.solver_steps == 1  # export unrolls the student's own step count by default
    assert metadata.training_data["distillation_method"] == "reflow"
    assert metadata.training_data["teacher_sha256"] == file_sha256(teacher)
    assert max(row.max_abs_diff for row in parity) <= 1e-4


def test_distill_refuses_what_it_cannot_distill(tmp_path):
    data = bimodal_windows(tmp_path / "toy.npz", n=200)
    regression = make_checkpoint(tmp_path / "r.pt", objective="regression")
    with pytest.raises(UsageError, match="'regression' checkpoint has no flow"):
        distill(regression, data, tmp_path / "out", DistillSettings(steps=1), progress=False)
    rtc = make_checkpoint(tmp_path / "rtc.pt", rtc_max_delay=2)
    with pytest.raises(UsageError, match="real-time chunking teachers"):
        distill(rtc, data, tmp_path / "out", DistillSettings(steps=1), progress=False)
    with pytest.raises(UsageError, match="student_steps must be >= 1, got 0"):
        DistillSettings(student_steps=0).check()
    with pytest.raises(UsageError, match=r"uncond_fraction must be in \[0, 1\], got 1.5"):
        DistillSettings(uncond_fraction=1.5).check()
    with pytest.raises(UsageError, match=r"grid_fraction must be in \[0, 1\], got -0.1"):
        DistillSettings(grid_fraction=-0.1).check()


def test_distill_cli_names_a_missing_teacher_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "flow_policy_ros", "distill", str(tmp_path / "nope.pt"), str(tmp_path),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"flow-policy distill: error: teacher checkpoint {tmp_path / 'nope.pt'} not found"]
