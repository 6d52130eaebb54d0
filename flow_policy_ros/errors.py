"""The package's domain errors: each carries a one-line message naming the file, field or value.

Libraries raise these; only the CLI (``flow_policy_ros.cli``) and the node runner turn them into
one printed line and an exit status. Every class derives from :class:`FlowPolicyError`; the ones
that used to be plain ``ValueError`` subclasses still are, so ``except ValueError`` keeps working.
"""

from __future__ import annotations


class FlowPolicyError(Exception):
    """Base of the package's bad-input errors (the CLI prints them as one line, exit 2)."""


class UsageError(FlowPolicyError):
    """A command-line argument is invalid (names the flag and the value)."""


class ConfigError(FlowPolicyError, ValueError):
    """A configuration value is missing or invalid; the message names the field."""


class ModelFileError(FlowPolicyError):
    """An ONNX model file is missing, malformed, or its metadata is missing/inconsistent."""


class InvalidOutputError(FlowPolicyError):
    """A model produced an output of the wrong shape or with non-finite values."""


class CheckpointError(FlowPolicyError):
    """A checkpoint is missing, corrupt, or of another format."""


class BagError(FlowPolicyError):
    """A rosbag2 recording is missing, corrupt, empty, or lacks a needed topic/joint."""


class ObservationError(FlowPolicyError):
    """An observation has the wrong shape or non-finite values."""


class SafetyError(FlowPolicyError, ValueError):
    """A safety setting or input is invalid; the message names the value."""


class StatisticsError(FlowPolicyError, ValueError):
    """Normalization statistics are missing, non-finite or of the wrong size."""


class TimeSeriesError(FlowPolicyError, ValueError):
    """A time series cannot be resampled onto the control grid (too short, unordered, gaps)."""


class DatasetError(FlowPolicyError):
    """Training data cannot be built from the given recordings."""


class TrajectoryError(FlowPolicyError, ValueError):
    """A joint trajectory is malformed (names, sizes, times)."""


def one_line(exc: BaseException) -> str:
    """``exc`` as one line: third-party messages (torch, YAML, rosbags) often span several."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
