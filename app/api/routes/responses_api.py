"""POST /v1/responses: OpenAI's Responses API over the same runner as Chat Completions.

Input items become chat messages (instructions as the system message, function_call and function_call_output
items as an assistant's tool calls and tool results), so tools, structured output, limits and defaults behave
exactly as on /v1/chat/completions. Nothing is stored: `store` is always false, `previous_response_id` is refused,
and the exchange goes only to the conversation log every route writes.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import ValidationError

from app.api.auth import Caller
from app.api.deps import JsonBody, Runner
from app.api.errors import ApiError
from app.api.openapi import event_stream
from app.api.schemas import (
    ChatMessage,
    FunctionCallItem,
    GenerationFields,
    MessageItem,
    OutputText,
    ResponseError,
    ResponseObject,
    ResponsesRequest,
    ResponseUsage,
)
from app.api.schemas.responses_events import ResponseStreamEvent
from app.api.schemas.responses_response import (
    IncompleteDetails,
    InputTokensDetails,
    ItemStatus,
    OutputTokensDetails,
    ResponseStatus,
)
from app.api.serving import ChatJob, ChatResult, OutputRequest
from app.api.tools import Delta, ToolCall

router = APIRouter(prefix="/v1", tags=["OpenAI-compatible API"])
EVENT_STREAM = event_stream(
    "With `stream: true`: server-sent events (`response.created`, `response.output_text.delta`, ..., "
    "`response.completed`), each `event:` the type of the JSON event in its `data:`",
    ResponseStreamEvent.__name__,
)
TEXT_PARTS = ("input_text", "output_text", "text")


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def _text(where: str, content: Any, model: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ApiError(400, "invalid_input", f"{where}.content must be a string or a list of input_text parts")
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_image", "input_file", "input_audio"):
            raise ApiError(
                400,
                "unsupported_content",
                f"{where}.content[{j}] is an {kind!r} part, but the model {model!r} is text-only; send input_text parts only",
            )
        if kind not in TEXT_PARTS or not isinstance(part.get("text"), str):
            raise ApiError(400, "invalid_input", f"{where}.content[{j}] must be an input_text part with a text field")
        texts.append(part["text"])
    return "".join(texts)


def _messages(body: ResponsesRequest, model: str) -> list[ChatMessage]:
    """The request's instructions and input items as chat messages."""
    raw: list[dict[str, Any]] = []
    if body.instructions:
        raw.append({"role": "system", "content": body.instructions})
    items = [{"role": "user", "content": body.input}] if isinstance(body.input, str) else body.input
    for i, item in enumerate(items):
        where, kind = f"input[{i}]", item.get("type", "message")
        if kind == "message":
            raw.append({"role": item.get("role"), "content": _text(where, item.get("content"), model)})
        elif kind == "function_call":
            call = {
                "id": item.get("call_id"),
                "type": "function",
                "function": {"name": item.get("name"), "arguments": item.get("arguments", "{}")},
            }
            last = raw[-1] if raw else None
            if last is not None and last["role"] == "assistant" and "tool_call_id" not in last:
                last.setdefault("tool_calls", []).append(call)  # parallel calls (and the text before them) are one turn
            else:
                raw.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            raw.append(
                {
                    "role": "tool",
                    "tool_call_id": item.get("call_id"),
                    "content": _text(where, item.get("output"), model),
                }
            )
        elif kind != "reasoning":  # reasoning items carry nothing this model can use
            raise ApiError(
                400,
                "invalid_input",
                f"{where} has type {kind!r}; served item types: message, function_call, function_call_output",
            )
    try:
        return [ChatMessage.model_validate(m) for m in raw]
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first.get("loc", ()))
        raise ApiError(
            400, "invalid_input", f"input: {field + ': ' if field else ''}{first.get('msg', 'invalid item')}"
        ) from None


def _output_request(body: ResponsesRequest) -> OutputRequest:
    tools = []
    for i, tool in enumerate(body.tools or ()):
        if tool.type != "function" or not tool.name:
            raise ApiError(
                400,
                "unsupported_tool",
                f"tools[{i}] has type {tool.type!r}; only function tools with a name are served here",
            )
        function = {"name": tool.name, "description": tool.description, "parameters": tool.parameters}
        tools.append({"type": "function", "function": {k: v for k, v in function.items() if v is not None}})
    choice: Any = body.tool_choice
    if choice is not None and not isinstance(choice, str):
        choice = {"type": "function", "function": {"name": choice.name}}
    text_format = body.text.format if body.text else None
    schema = None
    if text_format is not None and text_format.type == "json_object":
        schema = {"type": "object"}
    elif text_format is not None and text_format.type == "json_schema":
        if text_format.schema_ is None:
            raise ApiError(400, "invalid_request", "text.format of type 'json_schema' needs a schema")
        schema = text_format.schema_
    return OutputRequest(
        tools=tools, tool_choice=choice, parallel_tool_calls=body.parallel_tool_calls, json_schema=schema
    )


@router.post(
    "/responses",
    dependencies=[JsonBody],
    response_model=ResponseObject,
    response_model_exclude_unset=True,
    responses={200: EVENT_STREAM},
    summary="Responses API (text and function tools), optionally streamed",
)
async def create_response(
    body: ResponsesRequest, request: Request, response: Response, principal: Caller, runner: Runner
) -> Any:
    runner.check_model(body.model)
    if body.previous_response_id:
        raise ApiError(
            400,
            "unsupported_parameter",
            "previous_response_id is not supported: responses are never stored here; send the whole conversation in input",
        )
    job = await runner.prepare(
        "/v1/responses",
        principal,
        _messages(body, runner.model_name),
        GenerationFields(temperature=body.temperature, top_p=body.top_p),
        max_tokens=body.max_output_tokens,
        request_id=_new_id("resp"),
        output=_output_request(body),
    )
    shape = ResponseShape(body, job, runner.model_name)
    if body.stream:
        return await runner.stream(job, request, ResponseEvents(shape))
    result = await runner.complete(job, request)
    response.headers.update(result.headers)
    return shape.final(result)


@dataclass
class ResponseShape:
    """The Response object of one request, as it stands at each point of its life."""

    body: ResponsesRequest
    job: ChatJob
    model: str
    created_at: int = field(default_factory=lambda: int(time.time()))

    def response(
        self,
        status: ResponseStatus,
        output: list[MessageItem | FunctionCallItem],
        result: ChatResult | None = None,
        error: ResponseError | None = None,
    ) -> ResponseObject:
        body = self.body
        text_format = body.text.format.model_dump(by_alias=True, exclude_none=True) if body.text else {"type": "text"}
        choice = body.tool_choice
        tool_choice = choice.model_dump() if choice is not None and not isinstance(choice, str) else (choice or "auto")
        return ResponseObject(
            id=self.job.request_id,
            object="response",
            created_at=self.created_at,
            status=status,
            error=error,
            incomplete_details=IncompleteDetails(reason="max_output_tokens") if status == "incomplete" else None,
            instructions=body.instructions,
            max_output_tokens=self.job.max_tokens,
            model=self.model,
            output=output,
            parallel_tool_calls=self.job.plan.parallel,
            previous_response_id=None,
            store=False,
            temperature=self.job.params.temperature,
            top_p=self.job.params.top_p,
            text={"format": text_format},
            tool_choice=tool_choice,
            tools=[t.model_dump(exclude_none=True) for t in body.tools or ()],
            truncation="disabled",
            metadata=body.metadata or {},
            usage=None if result is None else usage_of(result),
        )

    def final(self, result: ChatResult) -> ResponseObject:
        parsed = result.parsed
        output: list[MessageItem | FunctionCallItem] = []
        if parsed.content:
            output.append(message_item(_new_id("msg"), parsed.content, "completed"))
        output += [call_item(_new_id("fc"), call, call.arguments, "completed") for call in parsed.calls]
        return self.response(status_of(result), output, result)


def status_of(result: ChatResult) -> ItemStatus:
    return "incomplete" if result.answer.finish_reason == "length" else "completed"


def usage_of(result: ChatResult) -> ResponseUsage:
    answer = result.answer
    return ResponseUsage(
        input_tokens=answer.prompt_tokens,
        input_tokens_details=InputTokensDetails(cached_tokens=answer.cached_tokens, cache_write_tokens=0),
        output_tokens=answer.completion_tokens,
        output_tokens_details=OutputTokensDetails(reasoning_tokens=0),
        total_tokens=answer.prompt_tokens + answer.completion_tokens,
    )


def output_text(text: str) -> OutputText:
    return OutputText(type="output_text", text=text, annotations=[])


def message_item(item_id: str, text: str | None, status: ItemStatus) -> MessageItem:
    content = [] if text is None else [output_text(text)]
    return MessageItem(type="message", id=item_id, status=status, role="assistant", content=content)


def call_item(item_id: str, call: ToolCall, arguments: str, status: ItemStatus) -> FunctionCallItem:
    return FunctionCallItem(
        type="function_call", id=item_id, call_id=call.id, name=call.name, arguments=arguments, status=status
    )


def dumped(model: Any) -> dict[str, Any]:
    out: dict[str, Any] = model.model_dump(mode="json", exclude_unset=True)
    return out


@dataclass
class ResponseEvents:
    """A Response as Responses API events (app.api.serving.StreamFormat): numbered, opening and closing output items
    as text and call pieces arrive."""

    shape: ResponseShape
    output: list[MessageItem | FunctionCallItem] = field(default_factory=list)
    sequence: int = 0
    text: str = ""  # of the open message item
    arguments: str = ""  # of the open function_call item
    open_kind: str | None = None  # "message" | "function_call"

    def event(self, kind: str, **fields: Any) -> str:
        payload = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return f"event: {kind}\ndata: {json.dumps(payload)}\n\n"

    @property
    def index(self) -> int:
        return len(self.output) - 1

    def start(self) -> list[str]:
        return [
            self.event(kind, response=dumped(self.shape.response("in_progress", [])))
            for kind in ("response.created", "response.in_progress")
        ]

    def piece(self, piece: Delta) -> list[str]:
        events = []
        if piece.call is not None or (piece.call_index is None and self.open_kind != "message"):
            events += self.end_of_output()
            events += self.open(piece)
        item = self.output[-1]
        if piece.call_index is None and piece.text:
            self.text += piece.text
            events.append(
                self.event(
                    "response.output_text.delta",
                    item_id=item.id,
                    output_index=self.index,
                    content_index=0,
                    delta=piece.text,
                    logprobs=[],
                )
            )
        elif piece.call_index is not None and piece.arguments:
            self.arguments += piece.arguments
            events.append(
                self.event(
                    "response.function_call_arguments.delta",
                    item_id=item.id,
                    output_index=self.index,
                    delta=piece.arguments,
                )
            )
        return events

    def open(self, piece: Delta) -> list[str]:
        if piece.call is not None:
            self.open_kind, self.arguments = "function_call", ""
            self.output.append(call_item(_new_id("fc"), piece.call, "", "in_progress"))
            return [self.event("response.output_item.added", output_index=self.index, item=dumped(self.output[-1]))]
        self.open_kind, self.text = "message", ""
        self.output.append(message_item(_new_id("msg"), None, "in_progress"))
        item_id = self.output[-1].id
        return [
            self.event("response.output_item.added", output_index=self.index, item=dumped(self.output[-1])),
            self.event(
                "response.content_part.added",
                item_id=item_id,
                output_index=self.index,
                content_index=0,
                part=dumped(output_text("")),
            ),
        ]

    def end_of_output(self) -> list[str]:
        """Close the open output item, if any."""
        if self.open_kind is None:
            return []
        item, events = self.output[-1], []
        if isinstance(item, MessageItem):
            part = output_text(self.text)
            events += [
                self.event(
                    "response.output_text.done",
                    item_id=item.id,
                    output_index=self.index,
                    content_index=0,
                    text=self.text,
                    logprobs=[],
                ),
                self.event(
                    "response.content_part.done",
                    item_id=item.id,
                    output_index=self.index,
                    content_index=0,
                    part=dumped(part),
                ),
            ]
            item.status, item.content = "completed", [part]
        else:
            events.append(
                self.event(
                    "response.function_call_arguments.done",
                    item_id=item.id,
                    output_index=self.index,
                    name=item.name,
                    arguments=self.arguments,
                )
            )
            item.status, item.arguments = "completed", self.arguments
        events.append(self.event("response.output_item.done", output_index=self.index, item=dumped(item)))
        self.open_kind = None
        return events

    def finish(self, result: ChatResult) -> list[str]:
        status = status_of(result)
        return [self.event(f"response.{status}", response=dumped(self.shape.response(status, self.output, result)))]

    def error(self, error: ApiError) -> list[str]:
        failed = self.shape.response("failed", self.output, error=ResponseError(code=error.code, message=error.message))
        return [
            self.event("error", code=error.code, message=error.message, param=None),
            self.event("response.failed", response=dumped(failed)),
        ]

    def done(self) -> list[str]:
        return []
