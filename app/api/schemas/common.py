"""Fields and shapes every API shares: sampling parameters, usage, the auth body, the model card."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, field_validator


class GenerationFields(BaseModel):
    """Sampling parameters; one left out (None) gets the model's default (app.inference.loader.SamplingDefaults)."""

    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=2.0, description="vLLM-style extension; 1 = off")
    stop: str | list[str] | None = None
    seed: int | None = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: str | list[str] | None) -> str | list[str] | None:
        items = [value] if isinstance(value, str) else (value or [])
        if len(items) > 4:
            raise ValueError(f"stop accepts at most 4 sequences, got {len(items)}")
        if any(not s for s in items):
            raise ValueError("stop sequences must not be empty")
        return value

    def stop_tuple(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class AuthRequest(BaseModel):
    api_key: str = Field(min_length=1, max_length=512)


def usage_dict(prompt_tokens: int, completion_tokens: int, max_completion_tokens: int | None = None) -> dict[str, int]:
    """OpenAI's usage object; `max_completion_tokens` is the output cap that applied, after clamping."""
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
             "total_tokens": prompt_tokens + completion_tokens}
    if max_completion_tokens is not None:
        usage["max_completion_tokens"] = max_completion_tokens
    return usage


def model_card(name: str, created: int, context_window: int | None, max_output_tokens: int) -> dict[str, Any]:
    """The /v1/models entry; the context window is known once the model has loaded."""
    card: dict[str, Any] = {"id": name, "object": "model", "created": created, "owned_by": "clawbot"}
    if context_window is not None:
        # vLLM names the window max_model_len; other clients read context_window or context_length.
        card.update(max_model_len=context_window, context_window=context_window, context_length=context_window)
    card["max_output_tokens"] = max_output_tokens
    return card
