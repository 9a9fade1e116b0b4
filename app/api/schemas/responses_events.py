"""The Responses API's stream events (POST /v1/responses with `stream: true`), one model per event type.

Each is the JSON of one server-sent event's `data:`, whose `event:` line repeats its `type`; the published schema
(app.api.openapi) documents the stream as these events.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, RootModel

from app.api.schemas.responses_response import OutputItem, OutputText, ResponseObject


class ResponseLifecycleEvent(BaseModel):
    type: Literal[
        "response.created", "response.in_progress", "response.completed", "response.incomplete", "response.failed"
    ]
    sequence_number: int
    response: ResponseObject


class OutputItemEvent(BaseModel):
    type: Literal["response.output_item.added", "response.output_item.done"]
    sequence_number: int
    output_index: int
    item: OutputItem


class ContentPartEvent(BaseModel):
    type: Literal["response.content_part.added", "response.content_part.done"]
    sequence_number: int
    item_id: str
    output_index: int
    content_index: int
    part: OutputText


class OutputTextDeltaEvent(BaseModel):
    type: Literal["response.output_text.delta"]
    sequence_number: int
    item_id: str
    output_index: int
    content_index: int
    delta: str
    logprobs: list[object]


class OutputTextDoneEvent(BaseModel):
    type: Literal["response.output_text.done"]
    sequence_number: int
    item_id: str
    output_index: int
    content_index: int
    text: str
    logprobs: list[object]


class FunctionCallArgumentsDeltaEvent(BaseModel):
    type: Literal["response.function_call_arguments.delta"]
    sequence_number: int
    item_id: str
    output_index: int
    delta: str


class FunctionCallArgumentsDoneEvent(BaseModel):
    type: Literal["response.function_call_arguments.done"]
    sequence_number: int
    item_id: str
    output_index: int
    name: str
    arguments: str


class StreamErrorEvent(BaseModel):
    """An error after the 200 was sent; a `response.failed` event follows it."""

    type: Literal["error"]
    sequence_number: int
    code: str
    message: str
    param: None


class ResponseStreamEvent(
    RootModel[
        Annotated[
            ResponseLifecycleEvent
            | OutputItemEvent
            | ContentPartEvent
            | OutputTextDeltaEvent
            | OutputTextDoneEvent
            | FunctionCallArgumentsDeltaEvent
            | FunctionCallArgumentsDoneEvent
            | StreamErrorEvent,
            Field(discriminator="type"),
        ]
    ]
):
    """One event of a streamed Response."""
