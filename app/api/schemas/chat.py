"""The Chat Completions request: messages (with tool calls and results), tools, tool_choice, response_format."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator, model_validator

from app.api.schemas.common import GenerationFields
from app.api.schemas.limits import (
    MAX_ARGUMENT_DEPTH,
    MAX_FUNCTION_NAME_CHARS,
    MAX_TOOL_CALL_ID_CHARS,
    MAX_TOOL_CALLS,
    MAX_TOOLS,
    json_text_depth,
    json_value_depth,
)

ROLES = ("system", "developer", "user", "assistant", "tool")
FUNCTION_NAME = rf"^[A-Za-z0-9_.:-]{{1,{MAX_FUNCTION_NAME_CHARS}}}$"


class ContentPart(BaseModel):
    """A part of a message's content; only text parts are served (the API turns other types into a 400)."""

    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class FunctionCall(BaseModel):
    name: str = Field(max_length=MAX_FUNCTION_NAME_CHARS)
    arguments: str = "{}"

    @field_validator("arguments", mode="before")
    @classmethod
    def _as_text(cls, value: Any) -> Any:
        depth = json_text_depth(value) if isinstance(value, str) else json_value_depth(value)
        if depth > MAX_ARGUMENT_DEPTH:
            raise ValueError(f"tool call arguments nest {depth} levels deep; at most {MAX_ARGUMENT_DEPTH} are allowed")
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


class ToolCallItem(BaseModel):
    id: str = Field(max_length=MAX_TOOL_CALL_ID_CHARS)
    type: Literal["function"] = "function"
    function: FunctionCall


def required_when(condition: dict[str, Any], then: dict[str, Any]) -> dict[str, Any]:
    """A JSON Schema rule: objects matching `condition` must also match `then` (for the published schema)."""
    return {"if": condition, "then": then}


# _shape_fits_role below, as the published schema states it.
MESSAGE_RULES: dict[str, Any] = {
    "allOf": [
        required_when(  # content is null (or left out) only in an assistant's message that has tool calls
            {
                "not": {
                    "required": ["role", "tool_calls"],
                    "properties": {"role": {"const": "assistant"}, "tool_calls": {"type": "array", "minItems": 1}},
                }
            },
            {"required": ["content"], "properties": {"content": {"not": {"type": "null"}}}},
        ),
        required_when(  # a tool result names the call it answers
            {"required": ["role"], "properties": {"role": {"const": "tool"}}},
            {"required": ["tool_call_id"], "properties": {"tool_call_id": {"type": "string", "minLength": 1}}},
        ),
    ]
}


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", json_schema_extra=MESSAGE_RULES)

    role: str = Field(json_schema_extra={"enum": list(ROLES)})  # checked below, with a message naming the roles
    content: str | list[ContentPart] | None = None
    tool_calls: list[ToolCallItem] | None = Field(default=None, max_length=MAX_TOOL_CALLS)
    tool_call_id: str | None = Field(default=None, max_length=MAX_TOOL_CALL_ID_CHARS)
    name: str | None = None

    @field_validator("role")
    @classmethod
    def _known_role(cls, value: str) -> str:
        if value not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}; got {value!r}")
        return value

    @model_validator(mode="after")
    def _shape_fits_role(self) -> ChatMessage:
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError(
                f"content is required for a {self.role!r} message (null only for an assistant's tool_calls)"
            )
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a 'tool' message needs the tool_call_id of the call it answers")
        return self


class FunctionDefinition(BaseModel):
    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: StrictBool | None = None


class ChatTool(BaseModel):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    name: str = "response"
    description: str | None = None
    schema_: dict[str, Any] = Field(alias="schema")
    strict: StrictBool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(
        json_schema_extra=required_when(
            {"required": ["type"], "properties": {"type": {"const": "json_schema"}}},
            {"required": ["json_schema"], "properties": {"json_schema": {"type": "object"}}},
        )
    )
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format of type 'json_schema' needs a json_schema object with a schema")
        return self

    def output_schema(self) -> dict[str, Any] | None:
        """The JSON Schema the output must match; None for plain text."""
        if self.type == "json_object":
            return {"type": "object"}
        return self.json_schema.schema_ if self.type == "json_schema" and self.json_schema else None


class StreamOptions(BaseModel):
    include_usage: StrictBool = False


# At least one message; the published schema says so (minItems), so an empty list is not schema-valid.
Messages = Annotated[list[ChatMessage], Field(min_length=1)]


class SeedChatRequest(GenerationFields):
    model_config = ConfigDict(extra="ignore")
    messages: Messages


class ChatCompletionRequest(GenerationFields):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    messages: Messages
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, le=1, description="only n=1 is supported")
    ignore_eos: StrictBool = False
    user: str | None = None
    tools: list[ChatTool] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: StrictBool | None = None
    response_format: ResponseFormat | None = None

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens
