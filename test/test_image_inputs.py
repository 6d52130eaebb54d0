"""Camera frames in the PolicyController (runtime/image_inputs.py): pairing with the joint state,
max age, frames from the future, wrong shapes; and, over random event sequences, that no
inference request ever carries a frame older than the camera's max age or from the future.

Pure: integer nanosecond clocks, no ROS (test_policy_node_images.py checks the node over DDS).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flow_policy_ros.contract import IIWA_JOINT_NAMES, JointLimits, ObservationSpec, image_feature
from flow_policy_ros.errors import SafetyError
from flow_policy_ros.runtime.controller import ControllerConfig, InferenceRequest, InferenceResult, PolicyController
from flow_policy_ros.runtime.image_inputs import FRAMES_KEPT, FUTURE_TOLERANCE_S, ImageInputs
from flow_policy_ros.runtime.safety import SafetyLimits

H, A = 8, 7
PERIOD_NS = 20_000_000
MAX_AGE_S = 0.1
MAX_AGE_NS = round(MAX_AGE_S * 1e9)
TOL_NS = round(FUTURE_TOLERANCE_S * 1e9)
SHAPE = (6, 8, 3)
SPEC = ObservationSpec(joint_names=IIWA_JOINT_NAMES, fields=("joint_positions", "image.front"),
                       features=(image_feature("front", 6, 8, MAX_AGE_S),))
TWO_CAMERAS = ObservationSpec(joint_names=IIWA_JOINT_NAMES, fields=("joint_positions", "image.front", "image.wrist"),
                              features=(image_feature("front", 6, 8, MAX_AGE_S), image_feature("wrist", 6, 8, 0.05)))
HOME = np.zeros(A)


def make(spec: ObservationSpec = SPEC) -> PolicyController:
    config = ControllerConfig(spec, H, PERIOD_NS * 1e-9, "stream", "receding_horizon", 4, 0.01, 0.1)
    return PolicyController(config, SafetyLimits.from_joint_limits(JointLimits()))


def frame(value: int) -> np.ndarray:
    """A frame whose every pixel is ``value`` (so the test can tell which frame was paired)."""
    return np.full(SHAPE, value % 256, np.uint8)


def requests(decisions: list) -> list[InferenceRequest]:
    return [d for d in decisions if isinstance(d, InferenceRequest)]


def joint_state(ctrl: PolicyController, now_ns: int) -> list:
    return ctrl.on_joint_state(now_ns, HOME, None, HOME, now_ns)


def first_request(ctrl: PolicyController, t0_ns: int = 0) -> list[InferenceRequest]:
    """Joint state at t0, tick at t0, the joint state 1 ms later that triggers inference."""
    joint_state(ctrl, t0_ns)
    ctrl.on_tick(t0_ns)
    return requests(joint_state(ctrl, t0_ns + 1_000_000))


# --------------------------------------------------------------------------- transitions


def test_a_silent_camera_waits_and_names_the_camera():
    ctrl = make()
    assert first_request(ctrl) == []
    assert ctrl.state == "waiting" and "image.front" in ctrl.reason, ctrl.reason


def test_the_request_carries_the_freshest_frame_within_max_age():
    ctrl = make()
    ctrl.on_image("image.front", frame(1), -50_000_000)
    ctrl.on_image("image.front", frame(2), -10_000_000)
    (req,) = first_request(ctrl)
    assert ctrl.state == "running"
    assert list(req.images) == ["image.front"] and int(req.images["image.front"][0, 0, 0]) == 2


def test_a_frame_newer_than_the_joint_state_does_not_hide_the_current_one():
    """The camera's next frame arrives before the joint state that triggers inference: that joint
    state pairs with the frame of its own time, not with one from after it."""
    ctrl = make()
    ctrl.on_image("image.front", frame(1), 0)
    joint_state(ctrl, 0)
    ctrl.on_tick(0)
    ctrl.on_image("image.front", frame(2), 30_000_000, now_ns=1_000_000 + 30_000_000)  # later frame, not future
    (req,) = requests(ctrl.on_joint_state(2_000_000, HOME, None, HOME, 1_000_000))
    assert int(req.images["image.front"][0, 0, 0]) == 1


def test_a_camera_older_than_max_age_is_stale_with_camera_and_age():
    ctrl = make()
    ctrl.on_image("image.front", frame(1), -MAX_AGE_NS - 20_000_000)
    assert first_request(ctrl) == []
    assert ctrl.state == "stale", (ctrl.state, ctrl.reason)
    assert "image.front" in ctrl.reason and "0.120 s older" in ctrl.reason and "max age 0.1" in ctrl.reason


def test_the_camera_going_silent_while_running_holds_then_resumes():
    ctrl = make()
    ctrl.on_image("image.front", frame(1), 0)
    assert len(first_request(ctrl)) == 1
    t = 200_000_000  # no frame since t = 0: 0.2 s > max age
    joint_state(ctrl, t)
    ctrl.on_tick(t)
    assert ctrl.state == "stale" and "image.front" in ctrl.reason
    ctrl.on_image("image.front", frame(3), t + 1_000_000, now_ns=t + 2_000_000)
    joint_state(ctrl, t + 2_000_000)
    ctrl.on_tick(t + PERIOD_NS)
    assert ctrl.state == "running", ctrl.reason


def test_a_frame_from_the_future_is_rejected_counted_and_never_paired():
    ctrl = make()
    joint_state(ctrl, 0)
    ctrl.on_image("image.front", frame(9), 50_000_000, now_ns=1_000_000)  # 49 ms ahead of the joint clock
    assert ctrl.counters.rejected_messages == 1 and ctrl.images.rejected["image.front"] == 1
    assert "from the future" in ctrl.images.last_rejection and "image.front" in ctrl.images.last_rejection
    assert ctrl.images.missing() == ["image.front"]
    ctrl.on_tick(0)
    assert ctrl.state == "waiting"


def test_the_future_check_follows_the_joint_clock_not_the_receiver_clock():
    """Joint stamps on a sim clock far from the node's clock: only the time since the joint state
    counts, so a frame rendered after that joint state is not from the future."""
    ctrl = make()
    ctrl.on_joint_state(5_000_000_000_000, HOME, None, HOME, 1_000_000)  # node clock 5000 s, sim clock 1 ms
    ctrl.on_image("image.front", frame(1), 20_000_000, now_ns=5_000_000_000_000 + 20_000_000)
    assert ctrl.counters.rejected_messages == 0 and ctrl.images.missing() == []


def test_a_late_joint_state_does_not_make_a_current_frame_look_from_the_future():
    """Joint states usually arrive 1 ms after their stamp; the latest came 20 ms late. A frame stamped
    at the receiver's now (same clock) is current, not 19 ms in the future."""
    ctrl = make()
    for k in range(10):
        ctrl.on_joint_state(k * 10_000_000 + 1_000_000, HOME, None, HOME, k * 10_000_000)
    ctrl.on_joint_state(120_000_000, HOME, None, HOME, 100_000_000)  # 20 ms in transit
    ctrl.on_image("image.front", frame(1), 120_000_000, now_ns=120_500_000)
    assert ctrl.counters.rejected_messages == 0, ctrl.images.last_rejection
    ctrl.on_image("image.front", frame(2), 140_000_000, now_ns=121_000_000)  # 19 ms ahead of now
    assert ctrl.counters.rejected_messages == 1 and "from the future" in ctrl.images.last_rejection


@pytest.mark.parametrize("bad", [np.zeros((8, 6, 3), np.uint8), np.zeros(SHAPE, np.float32)])
def test_a_frame_of_the_wrong_shape_or_dtype_is_rejected(bad):
    ctrl = make()
    ctrl.on_image("image.front", bad, 0)
    assert ctrl.counters.rejected_messages == 1 and "the model takes (6, 8, 3) uint8" in ctrl.images.last_rejection
    assert ctrl.images.missing() == ["image.front"]


def test_every_camera_must_pair_and_the_reason_names_the_one_that_does_not():
    ctrl = make(TWO_CAMERAS)
    ctrl.on_image("image.front", frame(1), 0)
    ctrl.on_image("image.wrist", frame(2), -80_000_000)  # within front's 0.1 s, beyond wrist's 0.05 s
    assert first_request(ctrl) == []
    assert ctrl.state == "stale" and "image.wrist" in ctrl.reason and "image.front" not in ctrl.reason


def test_unknown_camera_is_a_safety_error_and_caller_rejections_are_counted_per_camera():
    ctrl = make()
    with pytest.raises(SafetyError, match="no image feature 'image.back'"):
        ctrl.on_image("image.back", frame(1), 0)
    ctrl.reject("camera/front/image_raw: encoding 'mono8', expected rgb8 or bgr8", "image.front")
    assert ctrl.images.rejected["image.front"] == 1 and ctrl.counters.rejected_messages == 1
    assert ctrl.images.last_rejection.startswith("image.front: camera/front/image_raw: encoding 'mono8'")


def test_out_of_order_frames_keep_the_newest_ones():
    inputs = ImageInputs(SPEC)
    for stamp in [50, 10, 40, 30, 20, 60]:
        assert inputs.offer("image.front", frame(stamp), stamp * 1_000_000, None) == ""
    assert inputs.newest_stamp("image.front") == 60_000_000
    paired, why = inputs.pair(44_000_000)  # the 50 ms frame is 6 ms ahead: beyond the tolerance
    assert why == "" and int(paired["image.front"][0, 0, 0]) == 40
    assert len(inputs._frames["image.front"]) == FRAMES_KEPT


# --------------------------------------------------------------------------- property


#: One control period: skipped periods before its tick, then per camera a frame stamped this many
#: ms from the joint clock's present (None: no frame), then a joint state this many ms after the
#: tick, then whether the pending request is answered with a chunk (True) or an error (False).
PERIODS = st.lists(st.tuples(
    st.integers(0, 2),
    st.tuples(st.one_of(st.none(), st.integers(-160, 30)), st.one_of(st.none(), st.integers(-160, 30))),
    st.integers(0, 25),
    st.booleans(),
), min_size=10, max_size=60)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(periods=PERIODS, two=st.booleans())
def test_no_request_ever_carries_a_frame_too_old_or_from_the_future(periods, two):
    """Every request's frames are the exact frames received for those cameras, stamped within
    [joint stamp - max age, joint stamp + tolerance]; a hold while a camera is missing or stale
    names a camera; every frame from the future is counted and none is ever paired."""
    spec = TWO_CAMERAS if two else SPEC
    ctrl = make(spec)
    features = {f.name: f for f in spec.image_features}
    now = 0
    received: dict[int, tuple[str, int]] = {}  # id(frame) -> (camera, stamp)
    alive: list[np.ndarray] = []  # every frame sent, kept alive so that ids stay unique
    made: list[InferenceRequest] = []
    future = 0
    ctrl.on_joint_state(now, HOME, None, HOME, now)
    for i, (skipped, offsets, lateness, answer) in enumerate(periods):
        now += PERIOD_NS * (1 + skipped)
        ctrl.on_tick(now)
        if ctrl.state in ("waiting", "stale") and "joint" not in ctrl.reason:
            assert any(f.name in ctrl.reason for f in features.values()), ctrl.reason
        for camera, offset_ms in zip(features, offsets):
            if offset_ms is None:
                continue
            image = frame(i)
            alive.append(image)
            before = ctrl.counters.rejected_messages
            ctrl.on_image(camera, image, now + offset_ms * 1_000_000, now_ns=now)
            if offset_ms * 1_000_000 > TOL_NS:
                future += 1
                assert ctrl.counters.rejected_messages == before + 1
            else:
                received[id(image)] = (camera, now + offset_ms * 1_000_000)
        now += lateness * 1_000_000
        new = requests(ctrl.on_joint_state(now, HOME, None, HOME, now))
        made += new
        for req in new:
            ctrl.on_inference_result(InferenceResult.for_request(req, 0.001, np.zeros((H, A)) if answer else None,
                                                                 None if answer else "dropped"))
    assert sum(ctrl.images.rejected.values()) == future
    for req in made:
        assert req.images is not None and set(req.images) == set(features)
        for camera, image in req.images.items():
            assert id(image) in received, "a request carries a frame that was not accepted"
            source, stamp = received[id(image)]
            assert source == camera
            assert req.stamp_ns - round(features[camera].max_age_s * 1e9) <= stamp <= req.stamp_ns + TOL_NS


def test_the_random_periods_really_make_requests():
    """The property above is not vacuous: a typical sequence (fresh frames every period) infers."""
    ctrl = make(TWO_CAMERAS)
    now, made = 0, 0
    ctrl.on_joint_state(now, HOME, None, HOME, now)
    for i in range(20):
        now += PERIOD_NS
        ctrl.on_tick(now)
        for camera in ("front", "wrist"):
            ctrl.on_image(f"image.{camera}", frame(i), now - 10_000_000, now_ns=now)
        now += 1_000_000
        for req in requests(ctrl.on_joint_state(now, HOME, None, HOME, now)):
            made += 1
            ctrl.on_inference_result(InferenceResult.for_request(req, 0.001, np.zeros((H, A))))
    assert made >= 4 and ctrl.state == "running"
