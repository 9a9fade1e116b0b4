"""The engine's output sink: what the worker thread produced reaches each request's handle on the event loop.

One hop per step: the text deltas, completions and errors of a step are handed to the loop in one
`call_soon_threadsafe` callback. The sink also keeps every handle that has no answer yet, so that a
drain deadline or a dead worker can fail them all, wherever they are (waiting, prefilling, decoding).
Those handles are the requests in flight (`clawbot_inflight_requests`), counted on the event loop only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from app.inference.handle import GenerationHandle
from app.inference.request_state import RequestState
from app.inference.requests import Completion

if TYPE_CHECKING:
    from app.observability.metrics import Metrics

Delta = tuple[GenerationHandle, str]


class OutputSink:
    """Delivers deltas and answers to handles on the event loop, and fails every waiter when the engine cannot go on."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self.metrics = metrics
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: set[GenerationHandle] = set()  # every handle not answered yet (touched on the loop only)

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def track(self, handle: GenerationHandle) -> None:
        """Keep `handle` until it is answered. On the event loop."""
        self._pending.add(handle)
        self._count()

    def deliver(self, deltas: list[Delta], finished: Iterable[RequestState]) -> None:
        """Push `deltas`, then answer every finished request: its completion, or its error. From any thread."""
        completions = [(r.handle, completion_of(r)) for r in finished if r.error is None]
        errors = [(r.handle, r.error) for r in finished if r.error is not None]
        if not deltas and not completions and not errors:
            return

        def on_loop() -> None:
            for handle, delta in deltas:
                handle._push(delta)
            for handle, completion in completions:
                handle._finish(completion)
                self._pending.discard(handle)
            for handle, error in errors:
                handle._fail(error)
                self._pending.discard(handle)
            if completions or errors:
                self._count()

        self.call_soon(on_loop)

    def fail_all(self, error: Callable[[], BaseException]) -> None:
        """Fail every handle that has no answer yet, each with a fresh `error()`. On the event loop."""
        pending, self._pending = self._pending, set()
        for handle in pending:
            handle._fail(error())
        self._count()

    def call_soon(self, callback: Callable[[], None]) -> None:
        """Run `callback` on the event loop (from any thread); nothing happens once the loop is closed."""
        if self._loop is None:
            return
        try:
            self._loop.call_soon_threadsafe(callback)
        except RuntimeError:
            pass  # the loop is closed: nobody is waiting any more

    def _count(self) -> None:
        if self.metrics is not None:
            self.metrics.inflight.set(len(self._pending))


def completion_of(request: RequestState) -> Completion:
    return Completion(
        text=request.text,
        finish_reason=request.finish_reason or "cancelled",
        prompt_tokens=len(request.prompt_ids),
        completion_tokens=len(request.generated),
        time_to_first_token_s=None if request.first_token_at is None else request.first_token_at - request.submitted_at,
        cached_tokens=request.cached_tokens,
    )
