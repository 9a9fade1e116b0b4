"""The serving layer's side of the engine: submit a job, wait for its answer, and turn the engine's refusals into ApiErrors.

A full queue is a 429; a drain or a dead engine a 503 with Retry-After; a request that fails in its own step
a 500 (the replica stays healthy). Only an InvalidRequestError (a prompt or parameter out of range) is a 400;
any other ValueError is the service's own fault and a 500. A client that goes away while it waits cancels its generation and raises
ClientDisconnected, which the request log records as 499.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from fastapi import Request

from app.api.errors import ApiError
from app.api.middleware.request_log import ClientDisconnected
from app.api.serving.jobs import ChatJob
from app.inference.requests import (
    Completion,
    EngineClosedError,
    EngineFailedError,
    InsufficientMemoryError,
    InvalidRequestError,
    QueueFullError,
    RequestFailedError,
)

if TYPE_CHECKING:
    from app.inference.engine import Engine
    from app.inference.handle import GenerationHandle
    from app.observability.metrics import Metrics

DISCONNECT_POLL_S = 0.25


def submit(engine: Engine, job: ChatJob, metrics: Metrics) -> GenerationHandle:
    try:
        return engine.submit(job.prompt_ids, job.params, prefix_scope=job.key_id)
    except QueueFullError as exc:
        metrics.rate_limited.labels(scope="queue").inc()
        raise ApiError(
            429,
            "queue_full",
            "the service is at capacity; retry shortly",
            headers={"Retry-After": str(exc.retry_after_s)},
        ) from None
    except (EngineClosedError, EngineFailedError) as exc:
        raise unavailable(exc) from None
    except InvalidRequestError as exc:  # only what the engine means as the client's error; any other is a 500
        raise ApiError(400, "invalid_request", str(exc)) from None


async def completion(handle: GenerationHandle) -> Completion:
    """The engine's answer; a request the engine could not finish becomes a 503 ApiError, one whose own step
    failed a 500 (the replica stays healthy)."""
    try:
        return await handle.result()
    except (EngineClosedError, EngineFailedError, InsufficientMemoryError) as exc:
        raise unavailable(exc) from None
    except RequestFailedError as exc:
        raise ApiError(500, "generation_failed", f"{exc}; retry the request or change its parameters") from None


async def wait(handle: GenerationHandle, request: Request) -> Completion:
    """Wait for the result; if the client goes away, cancel the generation and raise ClientDisconnected."""
    result = asyncio.ensure_future(completion(handle))
    try:
        while True:
            done, _ = await asyncio.wait({result}, timeout=DISCONNECT_POLL_S)
            if done:
                return result.result()
            if await request.is_disconnected():
                raise ClientDisconnected()
    finally:
        if not result.done():
            handle.cancel()
            result.cancel()


def unavailable(exc: Exception) -> ApiError:
    """The 503 for a request the engine would not take or could not finish; Retry-After says when to come back."""
    if isinstance(exc, EngineClosedError):
        return ApiError(503, "shutting_down", f"{exc}", headers={"Retry-After": "1"})
    if isinstance(exc, EngineFailedError):
        # The cause is in this replica's log; the client only needs to know to go elsewhere.
        return ApiError(
            503,
            "engine_failed",
            "the generation engine failed and this replica is restarting; retry",
            headers={"Retry-After": "1"},
        )
    return ApiError(503, "insufficient_memory", f"{exc}", headers={"Retry-After": "30"})
