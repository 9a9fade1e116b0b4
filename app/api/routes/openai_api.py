"""The OpenAI-compatible API: /v1/chat/completions (JSON or SSE stream, tools, structured output) and /v1/models."""
from __future__ import annotations

import json
import logging
import time
from typing import Any, AsyncIterator

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from app.api.auth import Caller
from app.api.deps import JsonBody, Runner
from app.api.errors import ApiError, error_body
from app.api.schemas import ChatCompletionRequest, model_card, usage_dict
from app.api.serving import MAX_TOKENS_HEADER, Answer, ChatJob, ChatRunner, OutputRequest
from app.api.tools import Delta, ParsedOutput

router = APIRouter(prefix="/v1", tags=["OpenAI-compatible API"])
log = logging.getLogger("clawbot.chat")


@router.get("/models", summary="The served model, with its context window")
async def models(request: Request, principal: Caller) -> dict[str, Any]:
    state = request.app.state
    window = state.model.context_window if state.model is not None else None
    quantization = state.model.quantization if state.model is not None else None
    card = model_card(state.model_name, state.started_at, window, state.settings.max_tokens, quantization)
    return {"object": "list", "data": [card]}


def check_model(requested: str | None, runner: ChatRunner) -> None:
    if requested not in (None, "", runner.model_name):
        raise ApiError(404, "model_not_found", f"model {requested!r} is not served here; GET /v1/models lists {runner.model_name!r}")


def finish_reason(engine_reason: str, parsed: ParsedOutput) -> str:
    if parsed.calls and engine_reason == "stop":
        return "tool_calls"
    return "length" if engine_reason == "length" else "stop"


def fail_stream(request: Request, exc: Exception) -> ApiError:
    """An error after the 200 went out: it is sent as an error event, and logged and counted with its own status."""
    if not isinstance(exc, ApiError):
        log.error("stream failed", extra={"error_type": type(exc).__name__}, exc_info=exc)
        exc = ApiError(500, "internal_error", "the generation failed; retry the request")
    request.state.final_status = exc.status
    return exc


@router.post("/chat/completions", dependencies=[JsonBody], summary="Chat completion, optionally streamed as SSE")
async def chat_completions(
    body: ChatCompletionRequest, request: Request, response: Response, principal: Caller, runner: Runner
) -> Any:
    check_model(body.model, runner)
    output = OutputRequest(
        tools=[t.model_dump(exclude_none=True) for t in body.tools or ()],
        tool_choice=body.tool_choice if isinstance(body.tool_choice, (str, type(None))) else body.tool_choice.model_dump(),
        parallel_tool_calls=body.parallel_tool_calls,
        json_schema=body.response_format.output_schema() if body.response_format else None,
    )
    job = await runner.prepare(
        "/v1/chat/completions", principal, body.messages, body, max_tokens=body.requested_max_tokens(),
        ignore_eos=body.ignore_eos, output=output,
    )
    headers = {MAX_TOKENS_HEADER: str(job.max_tokens)}
    created = int(time.time())
    if not body.stream:
        answer = await runner.complete(job, request)
        parsed = job.plan.parse(answer.text)
        message: dict[str, Any] = {"role": "assistant", "content": parsed.content}
        if parsed.calls:
            message["tool_calls"] = [c.to_openai() for c in parsed.calls]
        response.headers.update(headers)
        return {
            "id": job.request_id,
            "object": "chat.completion",
            "created": created,
            "model": runner.model_name,
            "choices": [{"index": 0, "message": message, "finish_reason": finish_reason(answer.finish_reason, parsed)}],
            "usage": usage_dict(answer.prompt_tokens, answer.completion_tokens, job.max_tokens, answer.cached_tokens),
        }
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    cached = await runner.cached(job)
    handle = None if cached is not None else runner.submit(job)  # a full queue is a 429 before the stream starts
    return StreamingResponse(
        _sse(runner, job, request, handle, cached, created, include_usage),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **headers},
    )


def sse_event(payload: dict[str, Any] | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


def _delta_fields(piece: Delta) -> dict[str, Any]:
    if piece.call_index is None:
        return {"content": piece.text}
    call: dict[str, Any] = {"index": piece.call_index, "function": {"arguments": piece.arguments}}
    if piece.call is not None:
        call.update(id=piece.call.id, type="function")
        call["function"]["name"] = piece.call.name
    return {"tool_calls": [call]}


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
    shaper = job.plan.shaper()

    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        return sse_event({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **usage_null})

    try:
        yield chunk({"role": "assistant", "content": ""})
        if cached is not None:
            answer = cached
            for piece in shaper.feed(cached.text):
                yield chunk(_delta_fields(piece))
        else:
            async for delta in handle:
                for piece in shaper.feed(delta):
                    yield chunk(_delta_fields(piece))
            answer = runner.answer_of(job, await runner.completion(handle))
        tail, parsed = shaper.finish()
        for piece in tail:
            yield chunk(_delta_fields(piece))
        await runner.finish(job, answer, request)
        yield chunk({}, finish_reason(answer.finish_reason, parsed))
        if include_usage:
            usage = usage_dict(answer.prompt_tokens, answer.completion_tokens, job.max_tokens, answer.cached_tokens)
            yield sse_event({**base, "choices": [], "usage": usage})
    except Exception as exc:  # noqa: BLE001 - whatever broke (engine, drain, timeout, store), the client sees an error
        error = fail_stream(request, exc)
        yield sse_event(error_body(error.status, error.code, error.message, error.type))
    finally:
        if handle is not None:
            handle.cancel()  # no-op once finished; frees the slot when the client went away
    yield sse_event("[DONE]")
