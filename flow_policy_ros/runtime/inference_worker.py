"""Runs inference one request at a time, in its own thread or inline, and times the hand-offs.

Threaded (the default): the control tick never waits for the model. ONNX Runtime releases the
GIL while it computes, so the executor thread keeps serving ticks and messages; the price is
two thread wake-ups per chunk (submit -> the worker, the worker -> the executor through
``on_done``), each a scheduler decision on a busy machine.

Inline (``inline=True``): :meth:`InferenceWorker.submit` runs the model in the caller's thread
and the result is ready when it returns. No wake-up, no GIL hand-over; the executor is blocked
for one model call, which is harmless while the call is short against the control period
(0.3-0.8 ms against 20 ms here) and wrong for a slow model (a GPU that must first launch, a big
network): use the thread there.

The worker knows nothing about ticks: it hands the request's bookkeeping back in an
:class:`~flow_policy_ros.runtime.controller.InferenceResult`. With ``latencies`` it records the
stages ``handoff`` (submit -> start), ``inference`` (the call) and ``return`` (done -> the
caller's :meth:`~InferenceWorker.poll` takes it), see :mod:`flow_policy_ros.runtime.latency`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from flow_policy_ros.runtime.controller import InferenceRequest, InferenceResult
from flow_policy_ros.runtime.latency import StageLatencies
from flow_policy_ros.runtime.policy import PredictFn, infer


class InferenceWorker:
    """Runs each submitted request through :func:`~flow_policy_ros.runtime.policy.infer`
    (``predict`` is a :meth:`~flow_policy_ros.runtime.policy.ChunkPolicy.predict`).

    Args:
        predict: the model call, ``predict(observation, guidance_scale=..., [prefix_actions=...,
            prefix_length=...]) -> (H, A)``.
        on_done: called (threaded mode only) from the worker thread after each result is ready;
            the node wakes its executor with it (thread-safe).
        delay_s: experiments only: hold each result back that long after inference, to emulate
            a slower model (threaded mode; inline it would block the caller, so it is refused).
        inline: run ``predict`` inside :meth:`submit`, in the caller's thread (no worker thread).
        latencies: where to record the handoff/inference/return stages (optional).
    """

    def __init__(self, predict: PredictFn, on_done: Callable[[], None] | None = None,
                 delay_s: float = 0.0, inline: bool = False, latencies: StageLatencies | None = None) -> None:
        if inline and delay_s > 0:
            raise ValueError(f"InferenceWorker: an injected delay ({delay_s} s) needs the inference thread, not inline")
        self._predict = predict
        self._on_done = on_done
        self._delay_s = float(delay_s)
        self.inline = inline
        self.latencies = latencies
        self._cv = threading.Condition()
        self._request: InferenceRequest | None = None
        self._submitted_ns = 0
        self._result: InferenceResult | None = None
        self._finished_ns = 0
        self._busy = False
        self._stopped = False
        self._thread: threading.Thread | None = None
        if not inline:
            self._thread = threading.Thread(target=self._run, name="inference", daemon=True)
            self._thread.start()

    @property
    def busy(self) -> bool:
        with self._cv:
            return self._busy

    def submit(self, request: InferenceRequest) -> bool:
        """Queue a request (inline: run it now); False (ignored) while the previous one is still
        running or after stop."""
        with self._cv:
            if self._busy or self._stopped:
                return False
            self._busy = True
            self._submitted_ns = time.perf_counter_ns()
            if not self.inline:
                self._request = request
                self._cv.notify()
                return True
        self._finish(self._infer(request, self._submitted_ns))
        return True

    def poll(self) -> InferenceResult | None:
        """The finished result, once (None if nothing new)."""
        with self._cv:
            result, self._result = self._result, None
            finished_ns = self._finished_ns
        if result is not None and self.latencies is not None:
            self.latencies.add_ns("return", time.perf_counter_ns() - finished_ns)
        return result

    def stop(self) -> None:
        with self._cv:
            self._stopped = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    def _infer(self, request: InferenceRequest, submitted_ns: int) -> InferenceResult:
        start_ns = time.perf_counter_ns()
        result = infer(self._predict, request)  # never raises: a failure is a result that holds the robot
        if self.latencies is not None:
            self.latencies.add_ns("handoff", start_ns - submitted_ns)
            self.latencies.add_ns("inference", round(result.latency_s * 1e9))
        return result

    def _finish(self, result: InferenceResult) -> None:
        with self._cv:
            self._result = result
            self._finished_ns = time.perf_counter_ns()
            self._busy = False

    def _run(self) -> None:
        while True:
            with self._cv:
                while self._request is None and not self._stopped:
                    self._cv.wait()
                if self._stopped:
                    return
                request, self._request = self._request, None
                submitted_ns = self._submitted_ns
            result = self._infer(request, submitted_ns)
            if self._delay_s > 0:
                with self._cv:
                    self._cv.wait_for(lambda: self._stopped, timeout=self._delay_s)
            self._finish(result)
            if self._on_done is not None:
                self._on_done()
