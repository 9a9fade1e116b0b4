"""Response bodies of the seed API, Chat Completions (the JSON answer and the streamed chunk), /v1/models and the probes.

Routes that return these set `response_model_exclude_unset=True`: a field the route did not set (an
optional extension such as `tool_calls` or `usage` in a chunk) is left out of the body, while a field set
to None is sent as null, as OpenAI's own answers do.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

FinishReason = Literal["stop", "length", "tool_calls"]


class PromptTokensDetails(BaseModel):
    cached_tokens: int = Field(description="prompt tokens whose keys and values came from the prefix cache")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails
    max_completion_tokens: int | None = Field(
        default=None, description="the output cap that applied, after clamping to MAX_TOKENS and the context window"
    )

    @classmethod
    def of(
        cls,
        prompt_tokens: int,
        completion_tokens: int,
        max_completion_tokens: int | None = None,
        cached_tokens: int = 0,
    ) -> Usage:
        """OpenAI's usage object; `max_completion_tokens` is the output cap that applied, after clamping;
        `cached_tokens` the prompt tokens read from the prefix cache (`prompt_tokens_details`, as OpenAI reports it)."""
        usage = cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=cached_tokens),
        )
        if max_completion_tokens is not None:
            usage.max_completion_tokens = max_completion_tokens
        return usage


# -- the seed API ----------------------------------------------------------------------------------
class AuthToken(BaseModel):
    token: str = Field(description="a JWT to send as `Authorization: Bearer <token>`")
    token_type: Literal["bearer"]
    expires_in: int = Field(description="seconds until the token expires")


class SeedMessage(BaseModel):
    role: Literal["assistant"]
    content: str


class SeedChatResponse(BaseModel):
    id: str
    model: str
    created: int
    message: SeedMessage
    finish_reason: Literal["stop", "length"]
    usage: Usage
    cached: bool = Field(description="the whole answer came from the response cache")


# -- Chat Completions ------------------------------------------------------------------------------
class FunctionCallOut(BaseModel):
    name: str
    arguments: str = Field(description="JSON text")


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"]
    function: FunctionCallOut


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str | None
    tool_calls: list[ToolCallOut] | None = None


class ChatCompletionChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: FinishReason


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatCompletionChoice]
    usage: Usage


# Field order is the order the stream has always written them in (the arguments first, the name once).
class FunctionCallDelta(BaseModel):
    arguments: str
    name: str | None = None


class ToolCallDelta(BaseModel):
    index: int
    function: FunctionCallDelta
    id: str | None = None
    type: Literal["function"] | None = None


class ChunkDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: ChunkDelta
    finish_reason: FinishReason | None


class ChatCompletionChunk(BaseModel):
    """One `data:` event of a streamed chat completion; the stream ends with `data: [DONE]`."""

    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = Field(
        default=None, description="with stream_options.include_usage: null, then set in the last chunk"
    )


# -- /v1/models and the probes ---------------------------------------------------------------------
class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    quantization: str | None = Field(
        default=None,
        description="the weights' format once the model has loaded: gguf:q4_1 (the file's own blocks), nf4, int8, none",
    )
    # vLLM names the window max_model_len; other clients read context_window or context_length.
    max_model_len: int | None = Field(default=None, description="the context window, once the model has loaded")
    context_window: int | None = None
    context_length: int | None = None
    max_output_tokens: int = Field(description="MAX_TOKENS: the most tokens one answer may generate")

    @classmethod
    def of(
        cls,
        name: str,
        created: int,
        context_window: int | None,
        max_output_tokens: int,
        quantization: str | None = None,
    ) -> ModelCard:
        """The /v1/models entry; the context window and the quantization are known once the model has loaded."""
        card = cls(id=name, object="model", created=created, owned_by="clawbot", max_output_tokens=max_output_tokens)
        if quantization is not None:
            card.quantization = quantization
        if context_window is not None:
            card.max_model_len = card.context_window = card.context_length = context_window
        return card


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready"]
    model: str
