"""realtime.py: SCHED_FIFO request in a child thread (granted or refused, never raises), and back."""

from __future__ import annotations

import os
import threading

import pytest

from flow_policy_ros.ros.realtime import drop_realtime, set_thread_priority


def test_zero_means_normal_scheduling():
    assert set_thread_priority(0) == "SCHED_OTHER"


def test_out_of_range_rejected():
    with pytest.raises(ValueError, match="thread_priority"):
        set_thread_priority(120)


def test_request_in_a_thread_is_granted_or_reported_then_dropped():
    seen: dict[str, object] = {}
    caller = os.sched_getscheduler(0)  # whatever an earlier in-process test left on this thread

    def body() -> None:
        seen["result"] = set_thread_priority(5)
        seen["policy"] = os.sched_getscheduler(0)
        drop_realtime()
        seen["after"] = os.sched_getscheduler(0)

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    if seen["result"] == "SCHED_FIFO 5":
        assert seen["policy"] == os.SCHED_FIFO
    else:
        assert "refused" in str(seen["result"])
    assert seen["after"] == os.SCHED_OTHER
    assert os.sched_getscheduler(0) == caller  # the test thread itself is untouched
