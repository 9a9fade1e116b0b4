"""Request and response bodies of the seed API and the OpenAI-compatible API."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.inference.requests import MAX_STOP_CHARS, MAX_STOP_SEQUENCES

Role = Literal["system", "user", "assistant"]


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


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

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class AuthRequest(BaseModel):
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
