"""What the engine is asked for and what it answers: sampling parameters, completions, per-row state, refusals."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import torch

if TYPE_CHECKING:
    from app.inference.handle import GenerationHandle

FINISH_REASONS = ("stop", "length", "cancelled", "timeout")
# Stop strings are searched after every token, so their number and length are bounded (OpenAI allows 4).
MAX_STOP_SEQUENCES = 4
MAX_STOP_CHARS = 64


class TokenConstraint(Protocol):
    """Per-request logits constraint (a grammar): the sampler masks a row's logits, then reports the token it chose.

    Implementations keep their own state (one object per request) and are called from the engine thread only.
    End-of-sequence tokens are allowed by `mask` only where the grammar may end.
    """

    def mask(self, logits: torch.Tensor) -> None:
        """Set the logits of tokens the grammar forbids next to -inf, in place ([vocab] float tensor)."""

    def advance(self, token_id: int) -> None:
        """The sampler chose `token_id`; move the grammar past it."""


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int  # already capped by the API; the engine also caps to its own max_tokens and the context window
    temperature: float = 0.0  # 0 => greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()  # output is truncated before the first stop string
    seed: int | None = None  # reproducible sampling per request
    ignore_eos: bool = False  # vLLM-style: generate exactly max_tokens (the benchmark relies on it)
    timeout_s: float | None = None  # generation deadline; finish_reason "timeout" when hit
    # Over the output so far: a generated token's logit is divided (if > 0) or multiplied (if < 0) by it; 1 = off.
    repetition_penalty: float = 1.0
    constraint: TokenConstraint | None = None  # grammar for structured output / forced tool calls

    def validate(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if len(self.stop) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop strings are allowed, got {len(self.stop)}")
        if any(not s for s in self.stop):
            raise ValueError("stop strings must not be empty")
        longest = max((len(s) for s in self.stop), default=0)
        if longest > MAX_STOP_CHARS:
            raise ValueError(f"stop strings may be at most {MAX_STOP_CHARS} characters, got one of {longest}")
        if self.timeout_s is not None and self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {self.timeout_s}")
        if not (self.repetition_penalty > 0 and math.isfinite(self.repetition_penalty)):
            raise ValueError(f"repetition_penalty must be a finite number > 0, got {self.repetition_penalty}")


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str  # "stop" | "length" | "cancelled" | "timeout"
    prompt_tokens: int
    completion_tokens: int
    time_to_first_token_s: float | None
    cached_tokens: int = 0  # prompt tokens whose KV came from the prefix cache (OpenAI's prompt_tokens_details)


class QueueFullError(Exception):
    """The request queue is at MAX_QUEUE; the client should retry after `retry_after_s` seconds."""

    def __init__(self, max_queue: int, retry_after_s: int) -> None:
        super().__init__(f"the request queue is full ({max_queue} waiting); retry after {retry_after_s}s")
        self.retry_after_s = retry_after_s


class EngineClosedError(Exception):
    """The engine is shutting down (or was never started): it takes no new work, or could not finish this request."""


class EngineFailedError(Exception):
    """The engine's worker died; every request it held fails with this, and the process must be restarted."""


class InsufficientMemoryError(Exception):
    """This request alone does not fit in the device's memory, even with nothing else running."""


@dataclass(eq=False)
class Row:
    """One generation as the worker tracks it, from the queue through the running batch."""

    handle: "GenerationHandle"
    prompt_ids: list[int]
    params: SamplingParams
    max_new: int
    submitted_at: float
    deadline: float | None
    generator: torch.Generator | None = None
    generated: list[int] = field(default_factory=list)
    text: str = ""
    emitted: int = 0  # characters of `text` already handed to the client
    prefix_offset: int = 0  # incremental detokenization window over `generated` (vLLM/TGI scheme)
    read_offset: int = 0
    first_token_at: float | None = None
    finish_reason: str | None = None
    cached_tokens: int = 0  # prompt tokens the first prefill took from the prefix cache
    prefix_scope: str = ""  # whose prefix-cache entries this row may use and add to (the API key's id)

    @property
    def context_ids(self) -> list[int]:
        """What a prefill feeds: the prompt, plus what was generated before a preemption sent the row back."""
        return self.prompt_ids + self.generated

    @property
    def position(self) -> int:
        """Position id of the next input token (prompt plus generated so far, minus the token being fed)."""
        return len(self.prompt_ids) + len(self.generated) - 1
