"""Runs inference in its own thread, one request at a time, so the control tick never waits for it.

ONNX Runtime releases the GIL while it computes, so the executor thread keeps serving ticks
and messages. The worker knows nothing about ticks: it hands the request's bookkeeping back in
an :class:`~flow_policy_ros.runtime.controller.InferenceResult`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np

from flow_policy_ros.errors import InvalidOutputError, one_line
from flow_policy_ros.runtime.controller import InferenceRequest, InferenceResult


class InferenceWorker:
    """Runs ``predict(observation, guidance_scale=..., [prefix_actions=..., prefix_length=...]) -> (H, A)``
    (``OnnxPolicy.predict``) for each submitted request.

    ``on_done`` (optional) is called from the worker thread after each result is ready (the node
    triggers a guard condition with it, which is thread-safe). ``delay_s`` (experiments only) holds
    each result back that long after inference, to emulate a slower model.
    """

    def __init__(self, predict: Callable[..., np.ndarray], on_done: Callable[[], None] | None = None,
                 delay_s: float = 0.0) -> None:
        self._predict = predict
        self._on_done = on_done
        self._delay_s = float(delay_s)
        self._cv = threading.Condition()
        self._request: InferenceRequest | None = None
        self._result: InferenceResult | None = None
        self._busy = False
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="inference", daemon=True)
        self._thread.start()

    @property
    def busy(self) -> bool:
        with self._cv:
            return self._busy

    def submit(self, request: InferenceRequest) -> bool:
        """Queue a request; False (ignored) while the previous one is still running or after stop."""
        with self._cv:
            if self._busy or self._stopped:
                return False
            self._busy = True
            self._request = request
            self._cv.notify()
            return True

    def poll(self) -> InferenceResult | None:
        """The finished result, once (None if nothing new)."""
        with self._cv:
            result, self._result = self._result, None
            return result

    def stop(self) -> None:
        with self._cv:
            self._stopped = True
            self._cv.notify()
        self._thread.join(timeout=5.0)

    def _run(self) -> None:
        while True:
            with self._cv:
                while self._request is None and not self._stopped:
                    self._cv.wait()
                if self._stopped:
                    return
                request, self._request = self._request, None
            start = time.perf_counter()
            kwargs = {"guidance_scale": request.guidance_scale}
            if request.prefix_length:
                kwargs.update(prefix_actions=request.prefix_actions, prefix_length=request.prefix_length)
            invalid = False
            try:
                actions, error = np.asarray(self._predict(request.observation, **kwargs), dtype=np.float64), None
            except InvalidOutputError as exc:  # the model ran but its chunk failed validation
                actions, error, invalid = None, one_line(exc), True
            except Exception as exc:  # noqa: BLE001 - any inference failure must hold the robot, not kill the node
                actions, error = None, f"{type(exc).__name__}: {one_line(exc)}"
            latency = time.perf_counter() - start
            if self._delay_s > 0:
                with self._cv:
                    self._cv.wait_for(lambda: self._stopped, timeout=self._delay_s)
            result = InferenceResult.for_request(request, latency, actions, error, invalid)
            with self._cv:
                self._result = result
                self._busy = False
            if self._on_done is not None:
                self._on_done()
