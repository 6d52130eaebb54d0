"""The latest value of each vector observation feature (e.g. the goal), checked as it arrives (pure).

A vector feature comes from its own topic at its own rate; the controller pairs the latest
accepted value with each joint state. What this class decides:

* a value the :class:`~flow_policy_ros.runtime.input_guard.InputGuard` rejects (frame, size,
  NaN/inf, beyond the training range plus the margin) is not stored: the previous value stays,
  and the reason is kept per feature (:attr:`VectorInputs.rejections`);
* a *task* feature (``FeatureSpec.task``, e.g. the goal) whose value changes starts a new task:
  :meth:`VectorInputs.update` says so, and the controller drops the chunks of the old one;
* a feature with ``max_age_s`` is stale when its stamp is further than that behind the joint
  state it would be paired with (:meth:`VectorInputs.stale`); a latched task feature has none.

Units: the features' own (m for a goal); stamps in ns.
"""

from __future__ import annotations

import numpy as np

from flow_policy_ros.contract import FeatureSpec, ObservationSpec
from flow_policy_ros.errors import SafetyError


class VectorInputs:
    """Latest accepted values of the vector features of ``spec``.

    Args:
        spec: the model's observation spec (its ``vector_features`` are held here).
    """

    def __init__(self, spec: ObservationSpec) -> None:
        self.features: dict[str, FeatureSpec] = {f.name: f for f in spec.vector_features}
        self.values: dict[str, np.ndarray] = {}
        self._stamps: dict[str, int] = {}
        #: feature name -> why its last rejected message was rejected (kept until a value is accepted)
        self.rejections: dict[str, str] = {}
        #: the most recent rejection reason of any feature ("" = none so far)
        self.last_rejection = ""

    def feature(self, name: str) -> FeatureSpec:
        """The spec of vector feature ``name`` (SafetyError naming the known ones otherwise)."""
        if name not in self.features:
            raise SafetyError(f"the model has no vector feature {name!r}; it observes {sorted(self.features)}")
        return self.features[name]

    def reject(self, name: str, reason: str) -> None:
        """Record why a message of feature ``name`` was refused (by the guard or by the caller)."""
        self.rejections[name] = reason
        self.last_rejection = f"{name}: {reason}" if not reason.startswith(name) else reason

    def update(self, name: str, values: np.ndarray, stamp_ns: int) -> bool:
        """Store an accepted value; True when a task feature changed (a new task begins)."""
        feature = self.feature(name)
        previous = self.values.get(name)
        self.values[name], self._stamps[name] = values, stamp_ns
        self.rejections.pop(name, None)
        return feature.task and previous is not None and not np.array_equal(previous, values)

    def missing(self) -> list[str]:
        """Vector features with no accepted value yet, in spec order."""
        return [name for name in self.features if name not in self.values]

    def waiting_reason(self, joint_states: bool, images: list[str] | tuple[str, ...] = ()) -> str:
        """'no joint states and goal yet' style reason, with the last rejection of a missing feature;
        ``images``: the image features without a frame yet (named too)."""
        missing = self.missing()
        parts = ([] if joint_states else ["joint states"]) + missing + list(images)
        reason = f"no {' and '.join(parts)} yet"
        rejected = [self.rejections[name] for name in missing if name in self.rejections]
        if rejected:
            reason += f" (last {missing[0] if len(missing) == 1 else 'value'} rejected: {rejected[-1]})"
        return reason

    def stale(self, joint_stamp_ns: int) -> str:
        """Why a feature is too old to pair with a joint state stamped ``joint_stamp_ns``, else ''."""
        for name, feature in self.features.items():
            if feature.max_age_s is None or name not in self._stamps:
                continue
            age_s = (joint_stamp_ns - self._stamps[name]) * 1e-9
            if age_s > feature.max_age_s:
                return f"{name} is {age_s:.3f} s older than the joint states (max age {feature.max_age_s:g} s)"
        return ""
