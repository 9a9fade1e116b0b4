"""What the engine is asked for and what it answers: sampling parameters, completions, refusals."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

FINISH_REASONS = ("stop", "length", "cancelled", "timeout")
# Stop strings are searched after every token, so their number and length are bounded (OpenAI allows 4).
MAX_STOP_SEQUENCES = 4
MAX_STOP_CHARS = 64
# Sampling parameters are bounded where they are validated, so that no accepted value can overflow the sampler's
# float32 arithmetic. A temperature below GREEDY_TEMPERATURE is greedy, as vLLM treats it (its _SAMPLING_EPS):
# dividing the logits by 1e-300 gives infinities, and softmax over them NaNs that torch.multinomial refuses.
GREEDY_TEMPERATURE = 1e-5
MAX_TEMPERATURE = 2.0
# transformers' formula divides a repeated token's positive logit by the penalty: 0.01 turns a logit of 1e3 into
# 1e5, far inside float32; 1e-300 rounds to 0 in float32 and divides by zero.
MIN_REPETITION_PENALTY = 0.01
MAX_REPETITION_PENALTY = 2.0


class TokenConstraint(Protocol):
    """Per-request logits constraint (a grammar): the sampler masks a row's logits, then reports the token it chose.

    Implementations keep their own state (one object per request) and are called from the engine thread only.
    End-of-sequence tokens are allowed by `mask` only where the grammar may end.
    """

    def mask(self, logits: torch.Tensor) -> None:
        """Set the logits of tokens the grammar forbids next to -inf, in place ([vocab] float tensor)."""

    def advance(self, token_id: int) -> None:
        """The sampler chose `token_id`; move the grammar past it."""

    @property
    def finished(self) -> bool:
        """The grammar has accepted its end: nothing may follow (the row stops even with ignore_eos)."""


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int  # already capped by the API; the engine also caps to its own max_tokens and the context window
    temperature: float = 0.0  # below GREEDY_TEMPERATURE => greedy
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
            raise InvalidRequestError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if not 0 <= self.temperature <= MAX_TEMPERATURE:  # NaN fails every comparison
            raise InvalidRequestError(f"temperature must be between 0 and {MAX_TEMPERATURE:g}, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise InvalidRequestError(f"top_p must be in (0, 1], got {self.top_p}")
        if len(self.stop) > MAX_STOP_SEQUENCES:
            raise InvalidRequestError(f"at most {MAX_STOP_SEQUENCES} stop strings are allowed, got {len(self.stop)}")
        if any(not s for s in self.stop):
            raise InvalidRequestError("stop strings must not be empty")
        longest = max((len(s) for s in self.stop), default=0)
        if longest > MAX_STOP_CHARS:
            raise InvalidRequestError(f"stop strings may be at most {MAX_STOP_CHARS} characters, got one of {longest}")
        if self.timeout_s is not None and self.timeout_s <= 0:
            raise InvalidRequestError(f"timeout_s must be positive, got {self.timeout_s}")
        if not MIN_REPETITION_PENALTY <= self.repetition_penalty <= MAX_REPETITION_PENALTY:
            raise InvalidRequestError(
                f"repetition_penalty must be between {MIN_REPETITION_PENALTY:g} and {MAX_REPETITION_PENALTY:g}, "
                f"got {self.repetition_penalty}"
            )

    @property
    def greedy(self) -> bool:
        """Whether the row takes the argmax: a temperature this close to 0 is greedy (see GREEDY_TEMPERATURE)."""
        return self.temperature < GREEDY_TEMPERATURE


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str  # "stop" | "length" | "cancelled" | "timeout"
    prompt_tokens: int
    completion_tokens: int
    time_to_first_token_s: float | None
    cached_tokens: int = 0  # prompt tokens whose KV came from the prefix cache (OpenAI's prompt_tokens_details)


@dataclass(frozen=True)
class Progress:
    """How far a generation has got: the prompt tokens read into the KV cache (cached ones included) and the tokens
    generated. What a request that ends without an answer (its client hung up) is charged for."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0


class InvalidRequestError(ValueError):
    """A request's prompt or parameters are out of range: the client's to fix, so the API answers 400 with this message
    (which names the field and the value). Any other ValueError is the service's own fault."""


class QueueFullError(Exception):
    """The request queue is at MAX_QUEUE; the client should retry after `retry_after_s` seconds."""

    def __init__(self, max_queue: int, retry_after_s: int) -> None:
        super().__init__(f"the request queue is full ({max_queue} waiting); retry after {retry_after_s}s")
        self.retry_after_s = retry_after_s


class EngineClosedError(Exception):
    """The engine is shutting down (or was never started): it takes no new work, or could not finish this request."""


class EngineFailedError(Exception):
    """The engine's worker died; every request it held fails with this, and the process must be restarted."""


class RequestFailedError(Exception):
    """This request's own step failed (its sampling, its grammar, its stop handling): it alone fails; the engine goes on.

    The message names the stage and the exception type, never the request's text."""


class InsufficientMemoryError(Exception):
    """This request alone does not fit in the device's memory, even with nothing else running."""
