"""Pure safety checks between the policy and the robot (no ROS, no wall clock).

What this module guarantees for every command that passes through :class:`CommandLimiter`:

1. it is finite and inside the joint position limits ``[lower, upper]`` (rad);
2. it is at most ``velocity · dt`` (rad) away from the previous command, per joint;
3. it is at most ``velocity · dt`` away from the measured position whenever (1) and (2) allow
   it; when the robot lags behind the previous command by more than that, the command moves
   from the previous command towards the measured position by at most ``velocity · dt``
   (never a jump, never further away).

Staleness, non-finite values, missing joints and the guidance-scale bounds are checked here
too, so the node and the in-process evaluator apply the same rules.

Units: positions in rad, velocities in rad/s, times and periods in s.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from flow_policy_ros.contract import JointLimits
from flow_policy_ros.errors import SafetyError

#: Bounds of the classifier-free guidance weight w accepted at run time.
GUIDANCE_SCALE_BOUNDS: tuple[float, float] = (0.0, 5.0)



@dataclass(frozen=True)
class SafetyLimits:
    """Limits applied to every command, in action joint order.

    Attributes:
        lower: (A,) lower position limits (rad).
        upper: (A,) upper position limits (rad).
        velocity: (A,) maximum command velocity (rad/s), already scaled.
    """

    lower: np.ndarray
    upper: np.ndarray
    velocity: np.ndarray

    def __post_init__(self) -> None:
        arrays = [np.asarray(getattr(self, n), dtype=np.float64).reshape(-1) for n in ("lower", "upper", "velocity")]
        for name, value in zip(("lower", "upper", "velocity"), arrays):
            if not np.all(np.isfinite(value)):
                raise SafetyError(f"limits.{name} must be finite, got {value.tolist()}")
            value.setflags(write=False)
            object.__setattr__(self, name, value)
        lower, upper, velocity = arrays
        if not (lower.shape == upper.shape == velocity.shape):
            raise SafetyError(f"limits: lower/upper/velocity sizes differ: {lower.size}/{upper.size}/{velocity.size}")
        if np.any(lower >= upper):
            raise SafetyError(f"limits: lower {lower.tolist()} must be below upper {upper.tolist()}")
        if np.any(velocity <= 0):
            raise SafetyError(f"limits: velocity {velocity.tolist()} must be positive")

    @property
    def size(self) -> int:
        return int(self.lower.size)

    @classmethod
    def from_joint_limits(
        cls,
        limits: JointLimits,
        velocity_scale: float = 1.0,
        lower: Sequence[float] | None = None,
        upper: Sequence[float] | None = None,
        velocity: Sequence[float] | None = None,
    ) -> SafetyLimits:
        """Model limits, optionally tightened (never loosened) by overrides.

        Args:
            limits: the model's limits (from the ONNX metadata).
            velocity_scale: factor in (0, 1] applied to the velocity limits.
            lower, upper, velocity: per-joint overrides (rad, rad/s); empty/None = model value.
                An override looser than the model's limit raises :class:`SafetyError`.
        """
        if not (0.0 < velocity_scale <= 1.0):
            raise SafetyError(f"max_velocity_scale must be in (0, 1], got {velocity_scale}")
        base = {
            "lower": np.asarray(limits.lower, dtype=np.float64),
            "upper": np.asarray(limits.upper, dtype=np.float64),
            "velocity": np.asarray(limits.velocity, dtype=np.float64),
        }
        chosen = {}
        for name, override in (("lower", lower), ("upper", upper), ("velocity", velocity)):
            if override is None or len(override) == 0:
                chosen[name] = base[name]
                continue
            value = np.asarray(override, dtype=np.float64)
            if value.shape != base[name].shape:
                raise SafetyError(f"{name} limit override has {value.size} values, the model has {base[name].size} joints")
            looser = value < base[name] if name == "lower" else value > base[name]
            if np.any(looser):
                raise SafetyError(
                    f"{name} limit override {value.tolist()} is looser than the model's {base[name].tolist()}; "
                    "overrides may only tighten limits"
                )
            chosen[name] = value
        return cls(chosen["lower"], chosen["upper"], chosen["velocity"] * velocity_scale)


def is_stale(received_s: float | None, now_s: float, timeout_s: float) -> bool:
    """True if data received at ``received_s`` (s) is older than ``timeout_s`` at ``now_s``.

    Never-received data (``None``) is stale.
    """
    return received_s is None or (now_s - received_s) > timeout_s


def all_finite(values: np.ndarray | Sequence[float]) -> bool:
    """True if every value is finite (no NaN, no ±inf)."""
    return bool(np.all(np.isfinite(np.asarray(values, dtype=np.float64))))


def missing_names(required: Iterable[str], present: Iterable[str]) -> tuple[str, ...]:
    """Names in ``required`` that are not in ``present``, in ``required`` order."""
    have = set(present)
    return tuple(name for name in required if name not in have)


def validate_guidance_scale(value: float, bounds: tuple[float, float] = GUIDANCE_SCALE_BOUNDS) -> float:
    """Return ``value`` as float if finite and within ``bounds``; raise :class:`SafetyError` otherwise."""
    value = float(value)
    low, high = bounds
    if not math.isfinite(value) or not (low <= value <= high):
        raise SafetyError(f"guidance_scale must be within [{low}, {high}], got {value}")
    return value


def clamp_command(
    target: np.ndarray,
    previous: np.ndarray,
    measured: np.ndarray,
    limits: SafetyLimits,
    dt: float,
    measured_steps: int = 1,
) -> np.ndarray:
    """Clamp one position command (rad) to the limits; see the module docstring for the rules.

    Args:
        target: (A,) the policy's position target (rad). Non-finite entries are replaced by
            ``previous`` (hold) before clamping.
        previous: (A,) the previous command (rad), assumed within limits.
        measured: (A,) the measured joint positions (rad).
        limits: position and velocity limits.
        dt: control period (s).
        measured_steps: how many periods lie between ``measured`` and this command (for the
            k-th point of a trajectory, k + 1).
    Returns:
        (A,) float64 command.
    """
    if not dt > 0:
        raise SafetyError(f"dt must be > 0 s, got {dt}")
    target = np.asarray(target, dtype=np.float64)
    previous = np.asarray(previous, dtype=np.float64)
    measured = np.asarray(measured, dtype=np.float64)
    step = limits.velocity * dt
    command = np.where(np.isfinite(target), target, previous)
    command = _clip(command, limits.lower, limits.upper)
    reach = step * measured_steps
    command = _clip(command, measured - reach, measured + reach)
    # Clipping to the previous-command window last keeps the step bound even when the
    # measured window does not overlap it (the command then walks towards the robot).
    command = _clip(command, previous - step, previous + step)
    # ``previous`` is within limits, so this final clip can only shorten the step.
    return _clip(command, limits.lower, limits.upper)


def _clip(values: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """``np.clip`` for ``low <= high`` through the ufuncs directly: np.clip's Python wrapper costs
    several microseconds per call, several times the arithmetic on 7 joints, at every tick."""
    return np.minimum(np.maximum(values, low), high)


class CommandLimiter:
    """Stateful wrapper of :func:`clamp_command` that remembers the last command.

    The first command after construction or :meth:`reset` is limited relative to the
    measured position (clamped into the position limits).
    """

    def __init__(self, limits: SafetyLimits, dt: float) -> None:
        if not dt > 0:
            raise SafetyError(f"dt must be > 0 s, got {dt}")
        self.limits = limits
        self.dt = float(dt)
        self._last: np.ndarray | None = None

    @property
    def last_command(self) -> np.ndarray | None:
        """The last command issued (rad), or None after reset."""
        return None if self._last is None else self._last.copy()

    def reset(self) -> None:
        """Forget the last command (e.g. after stale data or an inference error)."""
        self._last = None

    def _previous(self, measured: np.ndarray) -> np.ndarray:
        if self._last is not None:
            return self._last
        return np.clip(np.asarray(measured, dtype=np.float64), self.limits.lower, self.limits.upper)

    def limit(self, target: np.ndarray, measured: np.ndarray) -> np.ndarray:
        """Clamp one command (A,) and remember it as the last command."""
        if not all_finite(measured):
            raise SafetyError("measured joint positions contain NaN/inf; no command can be checked")
        self._last = clamp_command(target, self._previous(measured), measured, self.limits, self.dt)
        return self._last.copy()

    def limit_trajectory(self, targets: np.ndarray, measured: np.ndarray, previous: np.ndarray | None = None) -> np.ndarray:
        """Clamp a sequence of commands (K, A) one period apart, point k relative to point k-1.

        The first point is limited relative to ``previous`` (the setpoint of the tick before
        the first point; default: the last command); the last command is then advanced to the
        first point only (the point that applies at the current tick).
        """
        if not all_finite(measured):
            raise SafetyError("measured joint positions contain NaN/inf; no command can be checked")
        targets = np.asarray(targets, dtype=np.float64)
        out = np.empty_like(targets)
        previous = self._previous(measured) if previous is None else np.asarray(previous, dtype=np.float64)
        for k, target in enumerate(targets):
            out[k] = clamp_command(target, previous, measured, self.limits, self.dt, measured_steps=k + 1)
            previous = out[k]
        if len(out):
            self._last = out[0].copy()
        return out

    def advance(self, command: np.ndarray) -> None:
        """Record ``command`` (already limited, e.g. a published trajectory point) as the last command."""
        self._last = np.asarray(command, dtype=np.float64).copy()
