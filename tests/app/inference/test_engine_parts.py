"""The engine's parts, each without the others and without a model (vLLM v1's split): the request queue (submit,
cancel, expire, admit, requeue, close, stop, fail), the output sink (delivery on the event loop, failing every
waiter) and a handle's progress, frozen when it is cancelled."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from app.inference.handle import GenerationHandle
from app.inference.output_sink import OutputSink
from app.inference.request_queue import RequestQueue
from app.inference.request_state import RequestState
from app.inference.requests import (
    EngineClosedError,
    EngineFailedError,
    Progress,
    QueueFullError,
    RequestFailedError,
    SamplingParams,
)


def state(loop: asyncio.AbstractEventLoop, *, deadline: float | None = None, on_cancel=lambda h: None) -> RequestState:
    request: RequestState
    handle = GenerationHandle(loop, on_cancel, lambda: request.progress())
    request = RequestState(
        handle=handle,
        prompt_ids=[1, 2, 3],
        params=SamplingParams(max_tokens=4),
        max_new=4,
        submitted_at=time.perf_counter(),
        deadline=deadline,
    )
    return request


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


class Ended:
    def __init__(self) -> None:
        self.requests: list[RequestState] = []
        self.depths: list[int] = []

    def queue(self, **kw) -> RequestQueue:
        return RequestQueue(ended=self.requests.extend, on_change=self.depths.append, **kw)


def test_the_queue_is_fifo_bounded_and_says_when_to_retry(loop: asyncio.AbstractEventLoop) -> None:
    ended = Ended()
    queue = ended.queue(max_queue=3, max_batch_size=2)
    requests = [state(loop) for _ in range(3)]
    for r in requests:
        queue.submit(r)
    with pytest.raises(QueueFullError) as full:
        queue.submit(state(loop))
    assert full.value.retry_after_s >= 1 and ended.depths == [1, 2, 3]
    # The scheduler admits two of the first two it is shown; the third stays.
    shown: list[list[RequestState]] = []
    group = queue.admit(lambda head: shown.append(head) or len(head), room=2, burst_wait_s=0)
    assert group == requests[:2] and shown == [requests[:2]] and len(queue) == 1
    # Preempted rows go back in front of what waits, in their order.
    queue.requeue(group)
    assert queue.admit(lambda head: len(head), room=3, burst_wait_s=0) == requests


def test_a_waiting_request_that_is_cancelled_or_expires_leaves_at_once(loop: asyncio.AbstractEventLoop) -> None:
    ended = Ended()
    queue = ended.queue(max_queue=8, max_batch_size=4)
    cancelled, expired, kept = state(loop), state(loop, deadline=time.perf_counter() - 1), state(loop)
    for r in (cancelled, expired, kept):
        queue.submit(r)
    queue.cancel(cancelled.handle)
    assert ended.requests == [cancelled] and cancelled.finish_reason == "cancelled"
    assert queue.wait_for_work(busy=False)  # the expired one is answered, the kept one is work
    assert ended.requests == [cancelled, expired] and expired.finish_reason == "timeout"
    assert queue.admit(lambda head: len(head), room=4, burst_wait_s=0) == [kept]


def test_close_stop_and_fail_each_end_the_queue_their_own_way(loop: asyncio.AbstractEventLoop) -> None:
    ended = Ended()
    queue = ended.queue(max_queue=8, max_batch_size=4)
    queue.submit(accepted := state(loop))
    queue.close()
    with pytest.raises(EngineClosedError):
        queue.submit(state(loop))
    assert queue.wait_for_work(busy=False)  # what was accepted may still finish
    assert queue.admit(lambda head: len(head), room=4, burst_wait_s=0) == [accepted]
    assert not queue.wait_for_work(busy=False)  # closed and empty: the worker ends

    stopped = ended.queue(max_queue=8, max_batch_size=4)
    stopped.submit(state(loop))
    stopped.stop()
    assert not stopped.wait_for_work(busy=True) and len(stopped) == 0  # the drain deadline drops everything

    failed = ended.queue(max_queue=8, max_batch_size=4)
    failed.submit(state(loop))
    failed.fail("CUDA error")
    assert failed.failure == "CUDA error" and len(failed) == 0
    with pytest.raises(EngineFailedError, match="CUDA error"):
        failed.submit(state(loop))


def test_the_sink_delivers_on_the_loop_and_counts_what_is_in_flight(loop: asyncio.AbstractEventLoop) -> None:
    sink = OutputSink()
    sink.bind(loop)
    done, broken, waiting = state(loop), state(loop), state(loop)
    for r in (done, broken, waiting):
        sink.track(r.handle)
    done.generated, done.text, done.finish_reason = [5, 6], "Paris", "stop"
    broken.error, broken.finish_reason = RequestFailedError("its grammar failed"), "error"
    sink.deliver([(done.handle, "Par"), (done.handle, "is")], [done, broken])
    assert sink.in_flight == 3  # nothing reaches a handle until the loop runs the step's one callback

    async def read() -> tuple[list[str], object]:
        deltas = [d async for d in done.handle]
        return deltas, await done.handle.result()

    deltas, completion = loop.run_until_complete(read())
    assert deltas == ["Par", "is"] and completion.text == "Paris" and completion.completion_tokens == 2
    with pytest.raises(RequestFailedError):
        loop.run_until_complete(broken.handle.result())
    assert sink.in_flight == 1

    sink.fail_all(lambda: EngineFailedError("the worker died"))
    assert sink.in_flight == 0
    with pytest.raises(EngineFailedError):
        loop.run_until_complete(waiting.handle.result())


def test_a_cancelled_handle_keeps_what_it_had_used_when_it_was_cancelled(loop: asyncio.AbstractEventLoop) -> None:
    cancelled: list[GenerationHandle] = []
    request = state(loop, on_cancel=cancelled.append)
    request.prompt_read, request.generated = 3, [7, 8]
    assert request.handle.stop() == Progress(prompt_tokens=3, completion_tokens=2)
    request.generated.append(9)  # the worker may add a token before it sees the cancel
    assert request.handle.progress().completion_tokens == 2 and cancelled == [request.handle]
    request.handle.cancel()  # a second cancel is a no-op
    assert cancelled == [request.handle]
