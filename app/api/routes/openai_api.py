"""The OpenAI-compatible API: /v1/chat/completions (JSON or SSE stream, tools, structured output) and /v1/models.

The route parses the body and formats the answer; the serving layer (app.api.serving) runs the request.
"""

from __future__ import annotations

import json
import time
from typing import Any

from fastapi import APIRouter, Request, Response

from app.api.auth import Caller
from app.api.deps import JsonBody, Runner
from app.api.errors import ApiError, error_body
from app.api.openapi import event_stream
from app.api.schemas import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChunkChoice,
    ChunkDelta,
    ErrorResponse,
    FunctionCallDelta,
    FunctionCallOut,
    ModelCard,
    ModelList,
    ToolCallDelta,
    ToolCallOut,
    Usage,
)
from app.api.serving import ChatJob, ChatResult, OutputRequest
from app.api.tools import Delta

router = APIRouter(prefix="/v1", tags=["OpenAI-compatible API"])
EVENT_STREAM = event_stream(
    "With `stream: true`: server-sent events, each `data:` a ChatCompletionChunk (or, after a failure, an error in "
    "the error shape), ending with `data: [DONE]`",
    ChatCompletionChunk.__name__,
    ErrorResponse.__name__,
    done=True,
)


@router.get(
    "/models",
    response_model=ModelList,
    response_model_exclude_unset=True,
    summary="The served model, with its context window",
)
async def models(request: Request, principal: Caller) -> ModelList:
    state = request.app.state
    window = state.model.context_window if state.model is not None else None
    quantization = state.model.quantization if state.model is not None else None
    card = ModelCard.of(state.model_name, state.started_at, window, state.max_tokens, quantization)
    return ModelList(object="list", data=[card])


@router.post(
    "/chat/completions",
    dependencies=[JsonBody],
    response_model=ChatCompletion,
    response_model_exclude_unset=True,
    responses={200: EVENT_STREAM},
    summary="Chat completion, optionally streamed as SSE",
)
async def chat_completions(
    body: ChatCompletionRequest, request: Request, response: Response, principal: Caller, runner: Runner
) -> Any:
    runner.check_model(body.model)
    output = OutputRequest(
        tools=[t.model_dump(exclude_none=True) for t in body.tools or ()],
        tool_choice=body.tool_choice
        if isinstance(body.tool_choice, (str, type(None)))
        else body.tool_choice.model_dump(),
        parallel_tool_calls=body.parallel_tool_calls,
        json_schema=body.response_format.output_schema() if body.response_format else None,
    )
    job = await runner.prepare(
        "/v1/chat/completions",
        principal,
        body.messages,
        body,
        max_tokens=body.requested_max_tokens(),
        ignore_eos=body.ignore_eos,
        output=output,
    )
    created = int(time.time())
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return await runner.stream(job, request, ChatChunks(job, runner.model_name, created, include_usage))
    result = await runner.complete(job, request)
    response.headers.update(result.headers)
    message = AssistantMessage(role="assistant", content=result.parsed.content)
    if result.parsed.calls:
        message.tool_calls = [tool_call(c.id, c.name, c.arguments) for c in result.parsed.calls]
    return ChatCompletion(
        id=job.request_id,
        object="chat.completion",
        created=created,
        model=runner.model_name,
        choices=[ChatCompletionChoice(index=0, message=message, finish_reason=result.finish_reason)],  # type: ignore[arg-type]
        usage=usage_of(result),
    )


def tool_call(call_id: str, name: str, arguments: str) -> ToolCallOut:
    return ToolCallOut(id=call_id, type="function", function=FunctionCallOut(name=name, arguments=arguments))


def usage_of(result: ChatResult) -> Usage:
    answer = result.answer
    return Usage.of(answer.prompt_tokens, answer.completion_tokens, result.job.max_tokens, answer.cached_tokens)


def sse_event(payload: dict[str, Any] | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


def delta_of(piece: Delta) -> ChunkDelta:
    if piece.call_index is None:
        return ChunkDelta(content=piece.text)
    call = ToolCallDelta(index=piece.call_index, function=FunctionCallDelta(arguments=piece.arguments))
    if piece.call is not None:
        call.id, call.type, call.function.name = piece.call.id, "function", piece.call.name
    return ChunkDelta(tool_calls=[call])


class ChatChunks:
    """A chat completion as SSE chunks (app.api.serving.StreamFormat). Once the 200 is on the wire an error can only
    be an event: `{"error": ...}`, then [DONE]."""

    def __init__(self, job: ChatJob, model: str, created: int, include_usage: bool) -> None:
        self.job, self.model, self.created, self.include_usage = job, model, created, include_usage

    def chunk(self, choices: list[ChunkChoice], usage: Usage | None = None) -> str:
        out = ChatCompletionChunk(
            id=self.job.request_id,
            object="chat.completion.chunk",
            created=self.created,
            model=self.model,
            choices=choices,
        )
        if self.include_usage:
            out.usage = usage
        return sse_event(out.model_dump(mode="json", exclude_unset=True))

    def delta(self, delta: ChunkDelta, finish: str | None = None) -> str:
        return self.chunk([ChunkChoice(index=0, delta=delta, finish_reason=finish)])  # type: ignore[arg-type]

    def start(self) -> list[str]:
        return [self.delta(ChunkDelta(role="assistant", content=""))]

    def piece(self, piece: Delta) -> list[str]:
        return [self.delta(delta_of(piece))]

    def end_of_output(self) -> list[str]:
        return []

    def finish(self, result: ChatResult) -> list[str]:
        events = [self.delta(ChunkDelta(), result.finish_reason)]
        if self.include_usage:
            events.append(self.chunk([], usage_of(result)))
        return events

    def error(self, error: ApiError) -> list[str]:
        return [sse_event(error_body(error.status, error.code, error.message, error.type))]

    def done(self) -> list[str]:
        return [sse_event("[DONE]")]
