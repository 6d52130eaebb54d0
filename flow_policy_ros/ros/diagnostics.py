"""One diagnostic_msgs/DiagnosticArray from a level, a message and key/value pairs."""

from __future__ import annotations

from collections.abc import Mapping

from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

LEVELS: dict[str, bytes] = {
    "OK": DiagnosticStatus.OK,
    "WARN": DiagnosticStatus.WARN,
    "ERROR": DiagnosticStatus.ERROR,
    "STALE": DiagnosticStatus.STALE,
}


def diagnostic_array(stamp: Time, name: str, level: str, message: str, hardware_id: str,
                     values: Mapping[str, object]) -> DiagnosticArray:
    """A DiagnosticArray with one status; ``values`` are stringified in order."""
    status = DiagnosticStatus(level=LEVELS[level], name=name, message=message, hardware_id=hardware_id,
                              values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])
    array = DiagnosticArray(status=[status])
    array.header.stamp = stamp
    return array
