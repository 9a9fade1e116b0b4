"""What the serving layer passes along a request's life: the prepared job, the engine's answer, the finished result."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from app.api.tools import ParsedOutput, ToolPlan

if TYPE_CHECKING:
    from app.inference.requests import SamplingParams

# The output cap that applied (after clamping to MAX_TOKENS and the context window), on every generation response.
MAX_TOKENS_HEADER = "X-Max-Completion-Tokens"
# On an answer the generation deadline cut short: GENERATION_TIMEOUT_SECONDS, in seconds. (A stream's headers are
# sent before its first token; its last chunk says finish_reason "length", and its usage shows fewer tokens than
# the cap.)
DEADLINE_HEADER = "X-Generation-Deadline"


@dataclass(frozen=True)
class OutputRequest:
    """What the answer must be beyond free text: tools the model may (or must) call, or a JSON Schema to match."""

    tools: list[dict[str, Any]] = field(default_factory=list)  # OpenAI Chat function tools
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    json_schema: dict[str, Any] | None = None


@dataclass
class ChatJob:
    """A validated, rendered and sized request, ready for the response cache and the engine."""

    request_id: str
    route: str
    key_id: str
    messages: list[dict[str, Any]]
    prompt_ids: list[int]
    params: SamplingParams
    cache_key: str | None
    plan: ToolPlan
    started: float = field(default_factory=time.perf_counter)

    @property
    def max_tokens(self) -> int:
        """The output cap that applies: the request's, clamped to MAX_TOKENS and to the room the prompt leaves."""
        return self.params.max_tokens

    @property
    def headers(self) -> dict[str, str]:
        """Headers every answer to this job carries, a stream's included (sent before its first token)."""
        return {MAX_TOKENS_HEADER: str(self.max_tokens)}


@dataclass(frozen=True)
class Answer:
    text: str
    finish_reason: str  # "stop" | "length"
    prompt_tokens: int
    completion_tokens: int
    cached: bool = False  # the whole answer came from the response cache
    cached_tokens: int = 0  # prompt tokens whose KV came from the prefix cache
    deadline_s: float | None = None  # set when the generation deadline (this many seconds) ended the answer


@dataclass(frozen=True)
class ChatResult:
    """A request's outcome, recorded: the answer, its text parsed for tool calls, and the headers it carries."""

    job: ChatJob
    answer: Answer
    parsed: ParsedOutput

    @property
    def finish_reason(self) -> str:
        """OpenAI's finish_reason: `tool_calls` when the model stopped after calling tools, else `length` or `stop`."""
        if self.parsed.calls and self.answer.finish_reason == "stop":
            return "tool_calls"
        return "length" if self.answer.finish_reason == "length" else "stop"

    @property
    def headers(self) -> dict[str, str]:
        headers = self.job.headers
        if self.answer.deadline_s is not None:
            headers[DEADLINE_HEADER] = f"{self.answer.deadline_s:g}"
        return headers
