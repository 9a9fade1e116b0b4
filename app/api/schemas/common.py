"""Fields and shapes every API shares: sampling parameters, the auth body, the error shape."""

from __future__ import annotations

from pydantic import BaseModel, Field, field_validator

from app.inference.requests import (
    GREEDY_TEMPERATURE,
    MAX_REPETITION_PENALTY,
    MAX_STOP_CHARS,
    MAX_STOP_SEQUENCES,
    MAX_TEMPERATURE,
    MIN_REPETITION_PENALTY,
)

TEMPERATURE_DOC = f"0 to {MAX_TEMPERATURE:g}; below {GREEDY_TEMPERATURE:g} is greedy (the most likely token)"


class ErrorDetail(BaseModel):
    type: str = Field(description="error class, e.g. invalid_request_error, authentication_error, rate_limit_error")
    message: str = Field(description="what went wrong and what is allowed, safe to show a user")
    code: str = Field(description="machine-readable reason, e.g. invalid_api_key, rate_limited, queue_full")


class ErrorResponse(BaseModel):
    """The body of every 4xx and 5xx answer."""

    error: ErrorDetail


class GenerationFields(BaseModel):
    """Sampling parameters; one left out (None) gets the model's default (app.inference.loader.SamplingDefaults)."""

    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=MAX_TEMPERATURE, description=TEMPERATURE_DOC)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0, description="nucleus sampling mass, in (0, 1]")
    repetition_penalty: float | None = Field(
        default=None,
        ge=MIN_REPETITION_PENALTY,
        le=MAX_REPETITION_PENALTY,
        description=f"vLLM-style extension, {MIN_REPETITION_PENALTY:g} to {MAX_REPETITION_PENALTY:g}; 1 = off",
    )
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


class AuthRequest(BaseModel):
    api_key: str = Field(min_length=1, max_length=512)
