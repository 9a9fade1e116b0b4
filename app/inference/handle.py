"""A request's view of its generation: stream text deltas, await the result, or cancel it (event loop side)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from app.inference.requests import Completion, Progress

_END = object()  # closes a handle's delta stream


class GenerationHandle:
    """One request's view of its generation: stream the text deltas, await the result, or cancel it."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_cancel: Callable[[GenerationHandle], None],
        progress: Callable[[], Progress] = lambda: Progress(0, 0),
    ) -> None:
        self._loop = loop
        self._on_cancel = on_cancel
        self._progress = progress
        self._deltas: asyncio.Queue[Any] = asyncio.Queue()
        self._result: asyncio.Future[Completion] = loop.create_future()
        self._progress_at_cancel: Progress | None = None
        # Read by the worker thread at every step; a plain bool is enough (set once, never cleared).
        self.cancelled = False

    def __aiter__(self) -> AsyncIterator[str]:
        return self._stream()

    async def _stream(self) -> AsyncIterator[str]:
        while True:
            item = await self._deltas.get()
            if item is _END:
                self._deltas.put_nowait(_END)  # a second iteration ends at once instead of hanging
                return
            yield item

    async def result(self) -> Completion:
        return await asyncio.shield(self._result)

    def cancel(self) -> None:
        """Stop this generation; its batch slot is freed at the next decode step (its queue slot at once)."""
        if self.cancelled or self._result.done():
            return
        self._progress_at_cancel = self._progress()
        self.cancelled = True
        self._on_cancel(self)

    def progress(self) -> Progress:
        """What the generation has used: so far, or up to the moment it was cancelled."""
        return self._progress_at_cancel or self._progress()

    def stop(self) -> Progress:
        """Cancel the generation if it still runs, and say what it used."""
        self.cancel()
        return self.progress()

    # Called on the event loop only (through call_soon_threadsafe from the worker).
    def _push(self, delta: str) -> None:
        if delta:
            self._deltas.put_nowait(delta)

    def _finish(self, completion: Completion) -> None:
        if not self._result.done():
            self._result.set_result(completion)
            self._deltas.put_nowait(_END)

    def _fail(self, exc: BaseException) -> None:
        if not self._result.done():
            self._result.set_exception(exc)
            # Marks the error as seen: a handle whose client left is failed too, and nobody awaits it.
            self._result.exception()
            self._deltas.put_nowait(_END)
