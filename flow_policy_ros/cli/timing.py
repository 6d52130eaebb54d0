"""Timing helpers of ``flow-policy bench`` and ``bench --sweep``: p50/p99 of a call, chunks/s.

Wall-clock time of Python calls on this machine (``time.perf_counter``); no engine knowledge.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

#: Untimed calls before the timed ones (first calls allocate and are slow).
WARMUP_CALLS = 50


def latency_stats(fn: Callable[[], Any], calls: int, warmup: int = WARMUP_CALLS) -> dict[str, float]:
    """Call ``fn`` ``warmup`` + ``calls`` times; p50/p99/mean/max of the timed calls (ms)."""
    for _ in range(warmup):
        fn()
    times = np.empty(calls)
    for i in range(calls):
        start = time.perf_counter()
        fn()
        times[i] = time.perf_counter() - start
    times *= 1e3
    return {
        "p50_ms": float(np.median(times)),
        "p99_ms": float(np.percentile(times, 99)),
        "mean_ms": float(times.mean()),
        "max_ms": float(times.max()),
        "calls": calls,
    }


def throughput(fn: Callable[[], Any], batch: int, seconds: float = 2.0) -> float:
    """Chunks per second when ``fn`` computes ``batch`` chunks per call."""
    fn()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        count += 1
    return count * batch / (time.perf_counter() - start)


def spaced_latency(fn: Callable[[], Any], gap_s: float, calls: int = 100) -> dict[str, float]:
    """p50/p99 (ms) of ``fn`` called once every ``gap_s`` (sleeping in between), as a control loop
    calls its model: on a busy machine the caches go cold between calls, which back-to-back
    timing never sees."""
    fn()
    times = np.empty(calls)
    for i in range(calls):
        time.sleep(gap_s)
        start = time.perf_counter()
        fn()
        times[i] = time.perf_counter() - start
    times *= 1e3
    return {"gap_ms": gap_s * 1e3, "p50_ms": float(np.median(times)), "p99_ms": float(np.percentile(times, 99)),
            "calls": calls}
