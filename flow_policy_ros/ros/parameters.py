"""Node parameters declared once from a table, with descriptors, then frozen into a dataclass.

Each node keeps one table ``name -> ParameterSpec`` and one frozen dataclass of the same fields.
:func:`declare_all` declares every entry with its description, read-only flag and range (so
``ros2 param describe`` shows them) and returns the values; array parameters come back as tuples,
an unset array parameter as an empty tuple and an unset scalar one as None.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType
from rclpy.node import Node

_ARRAY_TYPES = {ParameterType.PARAMETER_BYTE_ARRAY, ParameterType.PARAMETER_BOOL_ARRAY, ParameterType.PARAMETER_INTEGER_ARRAY,
                ParameterType.PARAMETER_DOUBLE_ARRAY, ParameterType.PARAMETER_STRING_ARRAY}


@dataclass(frozen=True)
class ParameterSpec:
    """One parameter: default (or a ``Parameter.Type`` for "unset"), type, description, range."""

    default: Any
    type: int
    description: str
    read_only: bool = True
    low: float | None = None
    high: float | None = None

    def descriptor(self, name: str) -> ParameterDescriptor:
        descriptor = ParameterDescriptor(name=name, type=self.type, description=self.description, read_only=self.read_only)
        if self.low is not None and self.high is not None:
            if self.type == ParameterType.PARAMETER_DOUBLE:
                descriptor.floating_point_range = [FloatingPointRange(from_value=float(self.low), to_value=float(self.high), step=0.0)]
            elif self.type == ParameterType.PARAMETER_INTEGER:
                descriptor.integer_range = [IntegerRange(from_value=int(self.low), to_value=int(self.high), step=1)]
        return descriptor


def declare_all(node: Node, table: dict[str, ParameterSpec]) -> dict[str, Any]:
    """Declare every parameter of ``table`` on ``node``; returns name -> value (arrays as tuples)."""
    values: dict[str, Any] = {}
    for name, spec in table.items():
        value = node.declare_parameter(name, spec.default, spec.descriptor(name)).value
        if value is None:  # declared without a value: an unset array is empty, an unset scalar None
            values[name] = () if spec.type in _ARRAY_TYPES else None
        else:
            values[name] = tuple(value) if isinstance(value, (list, tuple)) else value
    return values
