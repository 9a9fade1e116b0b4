"""The engine's request queue: the one place the event loop and the worker thread meet, under the one lock they share.

The event loop submits and cancels requests here; the worker thread waits here for work, takes the head
of the queue when the scheduler admits it, and puts preempted requests back. Nothing else the worker
does (prefill, decode, sampling) holds this lock, so a submit or a cancel never waits for a model step.

Requests the queue ends itself (cancelled while waiting, or past their deadline before they started) are
handed to `ended`, which answers them (`app.inference.output_sink`). `on_change(depth)` is called under
the lock whenever the number of waiting requests changes (the engine sets its gauges from it).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from itertools import islice
from typing import TYPE_CHECKING

from app.inference.request_state import RequestState
from app.inference.requests import EngineClosedError, EngineFailedError, QueueFullError

if TYPE_CHECKING:
    from app.inference.handle import GenerationHandle

# Initial guess of how long a request takes, for Retry-After before any has finished.
INITIAL_REQUEST_S = 5.0


class RequestQueue:
    """A bounded FIFO of requests waiting for the batch, with submit, cancel, expire, requeue and drain."""

    def __init__(
        self,
        *,
        max_queue: int,
        max_batch_size: int,
        ended: Callable[[list[RequestState]], None],
        on_change: Callable[[int], None] = lambda depth: None,
    ) -> None:
        self.max_queue = max_queue
        self.max_batch_size = max_batch_size
        self._ended = ended
        self._on_change = on_change
        self._cond = threading.Condition()
        self._waiting: deque[RequestState] = deque()
        self._closing = False  # no new work; what was accepted may finish
        self._stopped = False  # the drain deadline passed: the worker drops everything
        self._failure: str | None = None
        self._request_s = INITIAL_REQUEST_S  # moving average of request time, for Retry-After

    def __len__(self) -> int:
        return len(self._waiting)

    @property
    def failure(self) -> str | None:
        return self._failure

    # -- event loop side ---------------------------------------------------------------------
    def submit(self, request: RequestState) -> None:
        """Append `request`, or raise EngineFailedError, EngineClosedError or QueueFullError."""
        with self._cond:
            if self._failure is not None:
                raise EngineFailedError(f"the generation engine failed ({self._failure}); this replica must restart")
            if self._closing:
                raise EngineClosedError(
                    "the service is shutting down and takes no new requests; retry (another replica will answer)"
                )
            if len(self._waiting) >= self.max_queue:
                waves = 1 + len(self._waiting) // self.max_batch_size
                raise QueueFullError(self.max_queue, max(1, math.ceil(self._request_s * waves)))
            self._waiting.append(request)
            self._changed()
            self._cond.notify()

    def cancel(self, handle: GenerationHandle) -> None:
        """A waiting request leaves at once (its slot is free); a running one is dropped by the worker at its next step."""
        with self._cond:
            for request in self._waiting:
                if request.handle is handle:
                    self._waiting.remove(request)
                    self._changed()
                    request.finish_reason = "cancelled"
                    self._ended([request])
                    return
            self._cond.notify()

    def close(self) -> None:
        """Take no new work; the worker ends once what was accepted is done."""
        with self._cond:
            self._closing = True
            self._cond.notify()

    def stop(self) -> None:
        """The drain deadline passed: the worker drops all work at its next look at the queue."""
        with self._cond:
            self._stopped = True
            self._cond.notify()

    # -- worker side -------------------------------------------------------------------------
    def wait_for_work(self, busy: bool) -> bool:
        """Sleep until there is work (`busy`: the worker has running or prefilling requests). False: the worker ends,
        and whatever was still waiting has been dropped."""
        with self._cond:
            while True:
                if self._stopped:
                    self._waiting.clear()
                    self._changed()
                    return False
                self._expire(time.perf_counter())
                if busy or self._waiting:
                    return True
                if self._closing:
                    return False
                self._cond.wait()

    def admit(self, decide: Callable[[list[RequestState]], int], room: int, burst_wait_s: float) -> list[RequestState]:
        """Take the head of the queue that `decide` (the scheduler) admits out of its first `room` requests.

        With `burst_wait_s`, first wait that long for up to a full batch to arrive, so that a burst is
        prefilled as one group rather than one forward pass each.
        """
        with self._cond:
            if burst_wait_s > 0:
                until = time.perf_counter() + burst_wait_s
                while len(self._waiting) < self.max_batch_size and not self._closing and not self._stopped:
                    left = until - time.perf_counter()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            if self._stopped or room <= 0 or not self._waiting:
                return []
            count = decide(list(islice(self._waiting, room)))
            group = [self._waiting.popleft() for _ in range(count)]
            if group:
                self._changed()
            return group

    def requeue(self, requests: list[RequestState]) -> None:
        """Put requests back at the head, in order: they were admitted before anything waiting now."""
        if requests:
            with self._cond:
                self._waiting.extendleft(reversed(requests))
                self._changed()

    def fail(self, failure: str) -> None:
        """The worker died: refuse new work for good and drop what was waiting (the caller answers every handle)."""
        with self._cond:
            self._failure = failure
            self._closing = True
            self._waiting.clear()
            self._changed()

    def observe_request_time(self, seconds: float) -> None:
        self._request_s = 0.9 * self._request_s + 0.1 * seconds

    def refresh(self) -> None:
        """Call `on_change` (under the lock): the worker's own count of requests changed."""
        with self._cond:
            self._changed()

    # -- under the lock ------------------------------------------------------------------------
    def _expire(self, now: float) -> None:
        expired = [r for r in self._waiting if r.deadline is not None and now >= r.deadline]
        for request in expired:
            self._waiting.remove(request)
            request.finish_reason = "timeout"
        if expired:
            self._changed()
            self._ended(expired)

    def _changed(self) -> None:
        self._on_change(len(self._waiting))
