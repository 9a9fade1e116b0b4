"""A request as the engine tracks it, from the queue through the running batch to its answer."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from app.inference.handle import GenerationHandle
from app.inference.requests import Progress, SamplingParams


@dataclass(eq=False)
class RequestState:
    """One request as the engine tracks it, from the queue through the running batch (a row of it) to its answer."""

    handle: GenerationHandle
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
    prompt_read: int = 0  # prompt tokens in the KV cache so far (cached ones included), chunk by chunk
    prefix_scope: str = ""  # whose prefix-cache entries this row may use and add to (the API key's id)
    # Set (with finish_reason "error") when this request cannot be answered: its own step failed (RequestFailedError),
    # or it does not fit in memory even alone (InsufficientMemoryError).
    error: Exception | None = None

    def progress(self) -> Progress:
        """What the request has used so far. Read from the event loop while the worker runs: each field is one read."""
        return Progress(
            prompt_tokens=self.prompt_read, completion_tokens=len(self.generated), cached_tokens=self.cached_tokens
        )

    @property
    def context_ids(self) -> list[int]:
        """What a prefill feeds: the prompt, plus what was generated before a preemption sent the row back."""
        return self.prompt_ids + self.generated

    @property
    def position(self) -> int:
        """Position id of the next input token (prompt plus generated so far, minus the token being fed)."""
        return len(self.prompt_ids) + len(self.generated) - 1
