"""The recent frames of each camera, and which one a decision pairs with its joint state (pure).

A camera publishes at its own rate, on its own clock path; the controller pairs each decision's
joint state (stamp ``t_j``) with, per camera, the freshest frame whose stamp ``t_f`` satisfies

    t_j - max_age_s  <=  t_f  <=  t_j + FUTURE_TOLERANCE_S

(``max_age_s`` from the camera's :class:`~flow_policy_ros.contract.FeatureSpec`). No such frame
means no decision: the controller holds (``stale``) with a reason naming the camera and the age
of its newest frame. A frame that arrives stamped later than the joint-state clock's present
(the receipt time minus the joint states' receipt-minus-stamp offset, so the camera and the
joint states may run on a simulation clock far from the receiver's) by more than the tolerance
is from the future (a wrong clock): it is refused, counted, and never stored.

A few frames per camera are kept (:data:`FRAMES_KEPT`), so a frame that arrives just after a joint
state does not hide the one that was current at that joint state. Frames are (H, W, 3) uint8 RGB,
already decoded and size-checked by the caller (the node converts the ROS messages); stamps in ns.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence

import numpy as np

from flow_policy_ros.contract import FeatureSpec, ObservationSpec
from flow_policy_ros.errors import ObservationError, SafetyError

#: How much later than the joint state a frame may be stamped and still count as "now" (s): clock
#: rounding between two publishers on one machine, far below a frame period (33 ms at 30 Hz).
FUTURE_TOLERANCE_S = 0.005
#: Frames kept per camera (the newest ones).
FRAMES_KEPT = 4
#: Joint states whose receipt-minus-stamp offsets estimate the joint clock's present (about 1 s at
#: 50-100 Hz: long enough to contain an undelayed message, short enough to follow a clock change).
JOINT_OFFSETS_KEPT = 64


class ImageInputs:
    """The recent frames of the image features of ``spec``.

    Args:
        spec: the model's observation spec (its ``image_features`` are held here).
        future_tolerance_s: see :data:`FUTURE_TOLERANCE_S`.
    """

    def __init__(self, spec: ObservationSpec, future_tolerance_s: float = FUTURE_TOLERANCE_S) -> None:
        self.features: dict[str, FeatureSpec] = {f.name: f for f in spec.image_features}
        self.tolerance_ns = round(future_tolerance_s * 1e9)
        self._frames: dict[str, deque[tuple[int, np.ndarray]]] = {n: deque(maxlen=FRAMES_KEPT) for n in self.features}
        #: feature name -> frames refused so far (by the caller or as from the future)
        self.rejected: dict[str, int] = dict.fromkeys(self.features, 0)
        #: the most recent rejection reason of any camera ("" = none so far)
        self.last_rejection = ""
        #: the joint-state stamp (ns) of the latest :meth:`pair` (None before the first)
        self.paired_stamp_ns: int | None = None
        self._joint_offsets_ns: deque[int] = deque(maxlen=JOINT_OFFSETS_KEPT)
        self._joint_stamp_ns = 0

    def feature(self, name: str) -> FeatureSpec:
        """The spec of image feature ``name`` (SafetyError naming the known ones otherwise)."""
        if name not in self.features:
            raise SafetyError(f"the model has no image feature {name!r}; it observes {sorted(self.features)}")
        return self.features[name]

    def reject(self, name: str, reason: str) -> None:
        """Count a refused frame of ``name`` (wrong encoding or size, corrupt, from the future)."""
        self.rejected[self.feature(name).name] += 1
        self.last_rejection = reason if reason.startswith(name) else f"{name}: {reason}"

    def observe_joint_state(self, received_ns: int, stamp_ns: int) -> None:
        """A joint state stamped ``stamp_ns`` arrived at ``received_ns`` (receiver's clock): tracks the
        receiver-minus-joint-clock offset for the future check and the joint stamp for the ages."""
        self._joint_offsets_ns.append(received_ns - stamp_ns)
        self._joint_stamp_ns = stamp_ns

    def joint_clock_now(self, now_ns: int | None) -> int | None:
        """The joint-state clock's present at receiver time ``now_ns``: ``now_ns`` minus the smallest
        receiver-minus-stamp offset of the recent joint states (their clock offset plus the least
        transport delay, so a late joint state does not make the present look earlier). ``now_ns``
        None: the latest joint stamp (events fed in time order). None before the first joint state."""
        if not self._joint_offsets_ns:
            return None
        return self._joint_stamp_ns if now_ns is None else now_ns - min(self._joint_offsets_ns)

    def offer(self, name: str, frame: np.ndarray, stamp_ns: int, now_ns: int | None) -> str:
        """Store a frame (H, W, 3) uint8 of ``name`` stamped ``stamp_ns``, received at ``now_ns``, and
        return ''; or return why not (wrong shape/dtype, or stamped after the joint-state clock's
        present (:meth:`joint_clock_now`) by more than the tolerance: from the future). A refused
        frame is not stored; the caller counts it with :meth:`reject`.
        """
        feature = self.feature(name)
        shape, dtype = tuple(np.shape(frame)), getattr(frame, "dtype", None)
        if shape != feature.image_shape or dtype != np.uint8:
            return f"{name}: frame is {shape} {dtype}, the model takes {feature.image_shape} uint8"
        present_ns = self.joint_clock_now(now_ns)
        if present_ns is not None and stamp_ns - present_ns > self.tolerance_ns:
            return (f"{name}: frame stamped {(stamp_ns - present_ns) * 1e-9:.3f} s after the joint states' clock "
                    f"(tolerance {self.tolerance_ns * 1e-9:g} s): from the future")
        frames = self._frames[feature.name]
        if frames and stamp_ns < frames[-1][0]:  # out of order (best effort): keep the deque sorted
            items = sorted([*frames, (stamp_ns, frame)], key=lambda item: item[0])
            frames.clear()
            frames.extend(items[-FRAMES_KEPT:])
        else:
            frames.append((stamp_ns, frame))
        return ""

    def missing(self) -> list[str]:
        """Image features with no frame yet, in spec order."""
        return [name for name, frames in self._frames.items() if not frames]

    def newest_stamp(self, name: str) -> int | None:
        """Stamp (ns) of the newest frame of ``name``, None before the first."""
        frames = self._frames[name]
        return frames[-1][0] if frames else None

    def pair(self, joint_stamp_ns: int) -> tuple[dict[str, np.ndarray] | None, str]:
        """({'image.<camera>': frame} for a joint state stamped ``joint_stamp_ns``, '') or (None, why not).

        Keys are the image feature names (what ``ChunkPolicy.predict(images=...)`` takes); each frame is
        the freshest one within its camera's max age of the joint state and not later than it by more
        than the tolerance.
        """
        self.paired_stamp_ns = joint_stamp_ns
        paired: dict[str, np.ndarray] = {}
        for name, feature in self.features.items():
            frame = self._freshest(name, joint_stamp_ns, round(feature.max_age_s * 1e9))
            if frame is None:
                return None, self._why_unpaired(name, feature, joint_stamp_ns)
            paired[name] = frame
        return paired, ""

    def stale(self, joint_stamp_ns: int) -> str:
        """Why some camera has no frame to pair with a joint state stamped ``joint_stamp_ns``, else ''."""
        return self.pair(joint_stamp_ns)[1] if self.features else ""

    def _freshest(self, name: str, joint_stamp_ns: int, max_age_ns: int) -> np.ndarray | None:
        for stamp_ns, frame in reversed(self._frames[name]):
            if stamp_ns <= joint_stamp_ns + self.tolerance_ns:
                return frame if joint_stamp_ns - stamp_ns <= max_age_ns else None
        return None

    def _why_unpaired(self, name: str, feature: FeatureSpec, joint_stamp_ns: int) -> str:
        newest = self.newest_stamp(name)
        if newest is None:
            return f"no {name} frame yet (topic {feature.topic})"
        age_s = (joint_stamp_ns - newest) * 1e-9
        if age_s < 0:
            return f"{name}: every frame kept is newer than the joint states (newest by {-age_s:.3f} s)"
        return f"{name} is {age_s:.3f} s older than the joint states (max age {feature.max_age_s:g} s)"

    def ages_s(self) -> Mapping[str, float | None]:
        """Age (s) of each camera's newest frame relative to the joint state of the latest :meth:`pair`
        (None: no frame or no pairing yet; negative: the frame is newer)."""
        ref = self.paired_stamp_ns
        return {name: None if ref is None or (s := self.newest_stamp(name)) is None else (ref - s) * 1e-9
                for name in self.features}


def image_input_name(camera: str) -> str:
    """The graph input of a camera's frames: ``image_<camera>`` (kept equal to the exporter's)."""
    return f"image_{camera}"


def graph_image_feeds(model: str, features: Sequence[FeatureSpec], batch: int, single: bool,
                      images: Mapping[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    """The graph feeds ``image_<camera>`` (B, Hc, Wc, 3) uint8 per camera of the model, checked against the metadata."""
    given = dict(images or {})
    if given and not features:
        raise ObservationError(f"{model} has no image inputs, got images {sorted(given)}")
    unknown = sorted(set(given) - {f.name for f in features})
    if unknown:
        raise ObservationError(f"{model}: unknown image feature(s) {unknown}; the model takes "
                               f"{[f.name for f in features]}")
    feeds = {}
    for feature in features:
        shape = tuple(feature.image_shape)
        expected = (batch, *shape)
        if feature.name not in given:
            raise ObservationError(f"camera {feature.camera!r}: no frame given (expected {feature.name} as uint8 {shape} RGB)")
        frame = given[feature.name]
        if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8:
            got = getattr(frame, "dtype", type(frame).__name__)
            raise ObservationError(f"camera {feature.camera!r}: frame dtype {got}, expected uint8 {shape} RGB")
        received = tuple(frame.shape)
        if single and frame.ndim == 3:
            frame = frame[None]
        if frame.shape != expected:
            wanted = f"{shape}" if single else f"{expected}"
            raise ObservationError(f"camera {feature.camera!r}: frame shape {received}, expected {wanted} (H, W, 3) uint8")
        feeds[image_input_name(feature.camera)] = np.ascontiguousarray(frame)
    return feeds
