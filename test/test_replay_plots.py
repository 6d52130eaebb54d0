"""replay's per-joint plot on real bags and real ONNX Runtime sessions: the joint limits drawn on every
joint's axis (in view when near the data, off scale with their value when far), and the decisions the
node would hold shaded by reason, with legend entries. Checked on the matplotlib artists."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import to_rgb
from matplotlib.lines import Line2D
from matplotlib.patches import Polygon, Rectangle
from model_factory import make_tiny_model
from test_replay import synthetic_bag

from flow_policy_ros.data.replay import replay_bag
from flow_policy_ros.data.replay_plots import HOLD_COLOURS, hold_masks, joints_figure, mask_spans, plot_joints
from flow_policy_ros.runtime.metadata import DensityInfo
from flow_policy_ros.runtime.onnx_policy import OnnxPolicy

OOD = "held: out of distribution"
DENSITY = "held: observation density"


@pytest.fixture(scope="module")
def ood_replay(tmp_path_factory: pytest.TempPathFactory):
    """A model trained on |q_1| <= 0.2 rad replays a bag (no command topic) where joint 1 swings 0.5 rad:
    some decisions are out of distribution (held), the others not."""
    tmp = tmp_path_factory.mktemp("plots")
    low, high = [-0.2] + [-3.0] * 13 + [-2.0] * 3, [0.2] + [3.0] * 13 + [2.0] * 3
    model = make_tiny_model(tmp / "narrow.onnx", seed=3, observation_range={"low": low, "high": high})
    policy = OnnxPolicy(model, warmup=0)
    rep = replay_bag(synthetic_bag(tmp / "bag", seconds=2.0, commands=False), policy)
    return rep, policy.metadata


def _spans(ax, gid: str) -> list[tuple[float, float]]:
    """(x0, x1) of the shaded spans with ``gid`` on ``ax``."""
    out = []
    for patch in ax.patches:
        if patch.get_gid() != gid:
            continue
        if isinstance(patch, Rectangle):
            out.append((patch.get_x(), patch.get_x() + patch.get_width()))
        else:
            assert isinstance(patch, Polygon)
            xs = patch.get_xy()[:, 0]
            out.append((xs.min(), xs.max()))
    return sorted(out)


def _decision_times(rep) -> np.ndarray:
    return (rep.decisions.ticks_ns - rep.decisions.ticks_ns[0]) * 1e-9


def test_mask_spans_cover_each_run_and_split_at_gaps() -> None:
    t = np.array([0.0, 0.02, 0.04, 0.06, 0.08, 0.30, 0.32])
    mask = np.array([True, True, False, True, True, True, False])
    np.testing.assert_allclose(mask_spans(t, mask, 0.02), [(-0.01, 0.03), (0.05, 0.09), (0.29, 0.31)], atol=1e-12)
    assert mask_spans(t, np.zeros(7, bool), 0.02) == []
    np.testing.assert_allclose(mask_spans(t, np.ones(7, bool), 0.02), [(-0.01, 0.09), (0.29, 0.33)], atol=1e-12)


def test_every_joint_axis_has_its_limit_lines(ood_replay) -> None:
    rep, meta = ood_replay
    fig = joints_figure(rep, meta)
    axes = fig.axes
    assert len(axes) == meta.action_dim
    for j, ax in enumerate(axes):
        lines = {line.get_gid(): line for line in ax.get_lines() if isinstance(line, Line2D) and line.get_gid()}
        assert lines["joint_limit_lower"].get_ydata()[0] == pytest.approx(meta.limits.lower[j])
        assert lines["joint_limit_upper"].get_ydata()[0] == pytest.approx(meta.limits.upper[j])
        # the untrained model predicts several rad: both limits lie near its outputs, so both are in view
        lo, hi = ax.get_ylim()
        assert lo < meta.limits.lower[j] and meta.limits.upper[j] < hi
    labels = [text.get_text() for text in fig.legends[0].get_texts()]
    assert any(label.startswith("joint limit") for label in labels)


def test_limits_far_from_the_data_are_off_scale_with_their_value(ood_replay) -> None:
    """With predictions equal to the recorded motion (±0.5 rad), the ±2-3 rad limits would squash the
    traces: the view keeps the data, and each limit's value is written at the axis' right edge."""
    rep, meta = ood_replay
    calm = replace(rep, predicted=rep.decisions.targets.astype(np.float32))
    fig = joints_figure(calm, meta)
    for j, ax in enumerate(fig.axes):
        lo, hi = ax.get_ylim()
        assert meta.limits.lower[j] < lo and hi < meta.limits.upper[j]
        assert hi - lo < 1.5  # the ±0.5 rad motion fills the axis
        notes = {text.get_gid(): text.get_text() for text in ax.texts}
        assert notes["joint_limit_upper_off_scale"] == f"\u2191 {meta.limits.upper[j]:.3f}"
        assert notes["joint_limit_lower_off_scale"] == f"\u2193 {meta.limits.lower[j]:.3f}"


def test_held_out_of_distribution_decisions_are_shaded_with_a_legend_entry(ood_replay, tmp_path: Path) -> None:
    rep, meta = ood_replay
    ood = rep.safety.ood
    assert 0 < ood.sum() < len(ood) and ood.sum() == rep.report["safety"]["ood_decisions"]
    masks = hold_masks(rep, meta)
    np.testing.assert_array_equal(masks[OOD], ood)
    assert not masks[DENSITY].any()  # no density in this model
    fig = joints_figure(rep, meta)
    t = _decision_times(rep)
    for ax in fig.axes:
        spans = _spans(ax, OOD)
        assert spans
        inside = np.array([any(a <= x <= b for a, b in spans) for x in t])
        np.testing.assert_array_equal(inside, ood)  # shaded exactly where the node would hold
        assert {p.get_facecolor()[:3] for p in ax.patches if p.get_gid() == OOD} == {to_rgb(HOLD_COLOURS[OOD])}
    labels = [text.get_text() for text in fig.legends[0].get_texts()]
    assert f"{OOD} ({int(ood.sum())} decisions)" in labels
    # the bag has no command topic: the title says what the predictions were compared with
    assert "/joint_states: no /commands in the bag" in fig.get_suptitle()
    path = plot_joints(tmp_path / "b.joints.png", rep, meta)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_density_holds_are_shaded_where_the_guard_would_hold(ood_replay) -> None:
    """A density whose score drops below the threshold for 5 decisions in a row (k = 2): the guard
    holds from the 2nd low score through the 1st good one; decisions held for OOD are not counted twice."""
    rep, meta = ood_replay
    n = len(rep.decisions.ticks_ns)
    free = np.flatnonzero(~rep.safety.held)
    start = free[len(free) // 2]
    scores = np.full(n, 10.0)
    scores[start:start + 5] = -10.0
    dens = replace(meta, density=DensityInfo(threshold=0.0, solver="rk4", steps=2, model={}, calibration={}))
    masks = hold_masks(replace(rep, scores=scores), dens)
    expected = np.zeros(n, bool)
    expected[start + 1:start + 6] = True  # from the 2nd low score through the 1st good one (released at the 2nd)
    expected &= ~rep.safety.held
    np.testing.assert_array_equal(masks[DENSITY], expected)
    assert not (masks[DENSITY] & masks[OOD]).any()
    fig = joints_figure(replace(rep, scores=scores), dens)
    t = _decision_times(rep)
    inside = np.array([any(a <= x <= b for a, b in _spans(fig.axes[0], DENSITY)) for x in t])
    np.testing.assert_array_equal(inside, expected)
    assert f"{DENSITY} ({int(expected.sum())} decisions)" in [x.get_text() for x in fig.legends[0].get_texts()]
