"""The OpenAI-compatible API: /v1/chat/completions (JSON or SSE stream) and /v1/models."""
from __future__ import annotations

import json
import logging
import time
from typing import Any, AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from app.api.auth import Caller
from app.api.serving import Answer, ChatJob, ChatRunner
from app.api.errors import ApiError, error_body
from app.api.deps import JsonBody, Runner
from app.api.schemas import ChatCompletionRequest, model_card, openai_finish_reason, usage_dict

router = APIRouter(prefix="/v1", tags=["OpenAI-compatible API"])
log = logging.getLogger("clawbot.chat")


@router.get("/models", summary="The served model")
async def models(request: Request, principal: Caller) -> dict[str, Any]:
    state = request.app.state
    return {"object": "list", "data": [model_card(state.model_name, state.started_at)]}


@router.post("/chat/completions", dependencies=[JsonBody], summary="Chat completion, optionally streamed as SSE")
async def chat_completions(
    body: ChatCompletionRequest, request: Request, principal: Caller, runner: Runner
) -> Any:
    if body.model not in (None, "", runner.model_name):
        raise ApiError(404, "model_not_found", f"model {body.model!r} is not served here; GET /v1/models lists {runner.model_name!r}")
    job = await runner.prepare(
        "/v1/chat/completions", principal, body.messages, body, max_tokens=body.requested_max_tokens(),
        ignore_eos=body.ignore_eos,
    )
    created = int(time.time())
    if not body.stream:
        answer = await runner.complete(job, request)
        return {
            "id": job.request_id,
            "object": "chat.completion",
            "created": created,
            "model": runner.model_name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": answer.text},
                    "finish_reason": openai_finish_reason(answer.finish_reason),
                }
            ],
            "usage": usage_dict(answer.prompt_tokens, answer.completion_tokens),
        }
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    cached = await runner.cached(job)
    handle = None if cached is not None else runner.submit(job)  # a full queue is a 429 before the stream starts
    return StreamingResponse(
        _sse(runner, job, request, handle, cached, created, include_usage),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _event(payload: dict[str, Any] | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


async def _sse(
    runner: ChatRunner,
    job: ChatJob,
    request: Request,
    handle: Any,
    cached: Answer | None,
    created: int,
    include_usage: bool,
) -> AsyncIterator[str]:
    """The SSE body. Once the 200 is on the wire an error can only be an event: `{"error": ...}`, then [DONE]."""
    base = {"id": job.request_id, "object": "chat.completion.chunk", "created": created, "model": runner.model_name}
    usage_null = {"usage": None} if include_usage else {}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        return _event({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **usage_null})

    try:
        yield chunk({"role": "assistant", "content": ""})
        if cached is not None:
            yield chunk({"content": cached.text})
        else:
            async for delta in handle:
                if delta:
                    yield chunk({"content": delta})
            answer = runner.answer_of(job, await runner.completion(handle))
        await runner.finish(job, answer, request)
        yield chunk({}, openai_finish_reason(answer.finish_reason))
        if include_usage:
            yield _event({**base, "choices": [], "usage": usage_dict(answer.prompt_tokens, answer.completion_tokens)})
    except ApiError as exc:
        yield _event(error_body(exc.status, exc.code, exc.message, exc.type))
    except Exception as exc:  # noqa: BLE001 - the stream must still end in a way a client can read
        log.error("stream failed", extra={"request_id": job.request_id, "error_type": type(exc).__name__}, exc_info=exc)
        yield _event(error_body(500, "internal_error", "internal server error"))
    finally:
        if handle is not None:
            handle.cancel()  # no-op once finished; frees the slot when the client went away
    yield _event("[DONE]")
