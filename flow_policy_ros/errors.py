"""Error types for bad input: each carries a message that names the file, field or value."""

from __future__ import annotations


class FlowPolicyError(Exception):
    """Base of the package's bad-input errors (the CLI prints them as one line)."""


class ModelFileError(FlowPolicyError):
    """An ONNX model file is missing, malformed, or its metadata is missing/inconsistent."""


class CheckpointError(FlowPolicyError):
    """A checkpoint is missing, corrupt, or of another format."""


class BagError(FlowPolicyError):
    """A rosbag2 recording is missing, corrupt, empty, or lacks a needed topic/joint."""


class ObservationError(FlowPolicyError):
    """An observation has the wrong shape or non-finite values."""

