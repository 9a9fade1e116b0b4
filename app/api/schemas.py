"""Request and response bodies of the seed API and the OpenAI-compatible API, and the error shape every route shares."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from app.inference.requests import MAX_STOP_CHARS, MAX_STOP_SEQUENCES

Role = Literal["system", "user", "assistant"]


def encodable(text: str, what: str) -> str:
    """`text` unchanged, or ValueError when it cannot be UTF-8 (a lone surrogate sent as a JSON escape like \\ud800).

    Such text would fail later, in the tokenizer, the conversation store or a JSON response, as a 500.
    The message names the position and the code point, never the character itself (it cannot be encoded either).
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"{what} is not valid Unicode text: it holds a lone surrogate (\\u{ord(text[exc.start]):04x}) at character "
            f"{exc.start}; send UTF-8 text"
        ) from None
    return text


class ErrorDetail(BaseModel):
    type: str = Field(description="error class, e.g. invalid_request_error, authentication_error, rate_limit_error")
    message: str = Field(description="what went wrong and what is allowed, safe to show a user")
    code: str = Field(description="machine-readable reason, e.g. invalid_api_key, rate_limited, queue_full")


class ErrorResponse(BaseModel):
    """The body of every 4xx and 5xx answer."""

    error: ErrorDetail


class TextPart(BaseModel):
    type: Literal["text"]
    text: str

    @field_validator("text")
    @classmethod
    def _encodable(cls, value: str) -> str:
        return encodable(value, "text")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: str
    content: str | list[TextPart]

    @field_validator("role")
    @classmethod
    def _known_role(cls, value: str) -> str:
        if value not in ("system", "user", "assistant"):
            raise ValueError(f"role must be one of system, user, assistant; got {value!r}")
        return value

    @field_validator("content")
    @classmethod
    def _encodable_content(cls, value: str | list[TextPart]) -> str | list[TextPart]:
        if isinstance(value, str):
            encodable(value, "content")
        return value

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class GenerationFields(BaseModel):
    """Sampling parameters shared by both APIs; the API caps max_tokens at MAX_TOKENS."""

    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: str | list[str] | None) -> str | list[str] | None:
        items = [value] if isinstance(value, str) else (value or [])
        if len(items) > MAX_STOP_SEQUENCES:
            raise ValueError(f"stop accepts at most {MAX_STOP_SEQUENCES} sequences, got {len(items)}")
        if any(not s for s in items):
            raise ValueError("stop sequences must not be empty")
        for s in items:
            encodable(s, "a stop sequence")
        longest = max((len(s) for s in items), default=0)
        if longest > MAX_STOP_CHARS:
            raise ValueError(f"stop sequences may be at most {MAX_STOP_CHARS} characters each, got one of {longest}")
        return value

    def stop_tuple(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class SeedChatRequest(GenerationFields):
    model_config = ConfigDict(extra="ignore")
    messages: list[ChatMessage]


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(GenerationFields):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    messages: list[ChatMessage]
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, le=1, description="only n=1 is supported")
    ignore_eos: bool = False
    user: str | None = None

    @field_validator("model", "user")
    @classmethod
    def _encodable(cls, value: str | None, info: ValidationInfo) -> str | None:
        return value if value is None else encodable(value, str(info.field_name))

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class AuthRequest(BaseModel):
    # With a length bound, pydantic itself refuses text that is not valid Unicode (a 400 like any bad field).
    api_key: str = Field(min_length=1, max_length=512)


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


def usage_dict(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}


def openai_finish_reason(reason: str) -> str:
    return {"stop": "stop", "length": "length"}.get(reason, "stop")


def model_card(name: str, created: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": "clawbot"}
