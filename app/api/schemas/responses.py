"""The Responses API request (POST /v1/responses): text input items, instructions, function tools, text.format."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, StrictBool

from app.api.schemas.chat import FUNCTION_NAME, required_when
from app.api.schemas.common import TEMPERATURE_DOC
from app.api.schemas.limits import MAX_FUNCTION_NAME_CHARS, MAX_TOOL_CALL_ID_CHARS, MAX_TOOLS
from app.inference.requests import MAX_TEMPERATURE


# -- input items: what the published schema promises the route serves (app.api.routes.responses_api._messages) --
class InputTextPart(BaseModel):
    type: Literal["input_text", "output_text", "text"]
    text: str


class InputMessage(BaseModel):
    """A message item; `type` may be left out."""

    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[InputTextPart]


class FunctionCallInput(BaseModel):
    """A function call the model made earlier in the conversation."""

    type: Literal["function_call"]
    call_id: str = Field(min_length=1, max_length=MAX_TOOL_CALL_ID_CHARS)
    name: str = Field(min_length=1, max_length=MAX_FUNCTION_NAME_CHARS)
    arguments: str = Field(default="{}", description="JSON text")
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None


class FunctionCallOutputInput(BaseModel):
    """The result of a function call, for the call with the same call_id."""

    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1, max_length=MAX_TOOL_CALL_ID_CHARS)
    output: str | list[InputTextPart]
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None


class ReasoningInput(BaseModel):
    """A reasoning item from an earlier answer: accepted and left out of the prompt."""

    model_config = ConfigDict(extra="allow")
    type: Literal["reasoning"]


InputItem = InputMessage | FunctionCallInput | FunctionCallOutputInput | ReasoningInput


def _objects(value: Any) -> list[dict[str, Any]]:
    """Input items as objects; the route checks each against its type and names the item it refuses."""
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise ValueError("input must be a string or a list of item objects")
    if not value:
        raise ValueError("input must hold at least one item")
    return value


# The schema is the typed items (so a schema-valid item is one the route serves); validation is the route's own, whose
# 400s name the item and what is allowed.
InputItems = Annotated[
    list[dict[str, Any]],
    PlainValidator(_objects, json_schema_input_type=Annotated[list[InputItem], Field(min_length=1)]),
]


class ResponsesTool(BaseModel):
    """A tool of the Responses API; only `function` tools are served (others are refused with a 400)."""

    model_config = ConfigDict(extra="ignore")
    type: str
    name: str | None = Field(default=None, pattern=FUNCTION_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: StrictBool | None = None


class FunctionToolChoice(BaseModel):
    type: Literal["function"]
    name: str


class TextFormat(BaseModel):
    model_config = ConfigDict(
        populate_by_name=True,
        json_schema_extra=required_when(
            {"required": ["type"], "properties": {"type": {"const": "json_schema"}}},
            {"required": ["schema"], "properties": {"schema": {"type": "object"}}},
        ),
    )
    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: StrictBool | None = None


class TextConfig(BaseModel):
    model_config = ConfigDict(extra="ignore")
    format: TextFormat = TextFormat()


class ResponsesRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    input: str | InputItems
    instructions: str | None = None
    tools: list[ResponsesTool] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: Literal["none", "auto", "required"] | FunctionToolChoice | None = None
    parallel_tool_calls: StrictBool | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=MAX_TEMPERATURE, description=TEMPERATURE_DOC)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0, description="nucleus sampling mass, in (0, 1]")
    stream: StrictBool = False
    store: StrictBool | None = None
    previous_response_id: str | None = None
    text: TextConfig | None = None
    metadata: dict[str, str] | None = None
