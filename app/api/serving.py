"""From a validated chat request to an answer: prompt rendering, limits, cache, engine, conversation record.

Prompts are rendered and tokenized off the event loop (`app.inference.prompts`). What the engine
answers besides a completion becomes an ApiError here: a full queue 429, a drain or a dead engine
503 with Retry-After. A client that goes away while it waits cancels its generation and raises
ClientDisconnected, which the request log records as 499.
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import Request
from jinja2 import TemplateError

from app.access.keyring import IGNORE_EOS_SCOPES
from app.api.errors import ApiError
from app.api.middleware.request_log import ClientDisconnected
from app.api.schemas import ChatMessage, GenerationFields
from app.inference.prompts import PromptRenderer
from app.api.tools import ToolChoiceError, ToolPlan, parser_for, template_renders_tools
from app.api.tools.render import for_native_template, for_plain_template
from app.inference.loader import SamplingDefaults

if TYPE_CHECKING:
    from app.inference.constraints import Grammars
    from app.inference.engine import Completion, Engine, GenerationHandle, SamplingParams
    from app.observability.metrics import Metrics
    from app.access.control import Principal
    from app.storage.stores import Storage
    from app.settings import Settings

log = logging.getLogger("clawbot.chat")
DISCONNECT_POLL_S = 0.25
# The output cap that applied (after clamping to MAX_TOKENS and the context window), on every generation response.
MAX_TOKENS_HEADER = "X-Max-Completion-Tokens"
TEXT_PARTS = ("text", "input_text", "output_text")
IMAGE_PARTS = ("image_url", "input_image", "image")


@dataclass(frozen=True)
class OutputRequest:
    """What the answer must be beyond free text: tools the model may (or must) call, or a JSON Schema to match."""

    tools: list[dict[str, Any]] = field(default_factory=list)  # OpenAI Chat function tools
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    json_schema: dict[str, Any] | None = None


@dataclass
class ChatJob:
    request_id: str
    route: str
    key_id: str
    messages: list[dict[str, Any]]
    prompt_ids: list[int]
    params: "SamplingParams"
    cache_key: str | None
    plan: ToolPlan
    started: float = field(default_factory=time.perf_counter)

    @property
    def max_tokens(self) -> int:
        """The output cap that applies: the request's, clamped to MAX_TOKENS and to the room the prompt leaves."""
        return self.params.max_tokens


@dataclass(frozen=True)
class Answer:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    cached: bool = False  # the whole answer came from the response cache
    cached_tokens: int = 0  # prompt tokens whose KV came from the prefix cache


class ChatRunner:
    """Turns chat messages into engine work; owns the rules both APIs share."""

    def __init__(
        self,
        *,
        settings: "Settings",
        metrics: "Metrics",
        engine: "Engine",
        tokenizer: Any,
        model_name: str,
        model_identity: str,
        context_window: int,
        storage: "Storage | None",
        defaults: SamplingDefaults | None = None,
        grammars: "Grammars | None" = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.engine = engine
        self.renderer = PromptRenderer(tokenizer)
        self.model_name = model_name
        self.model_identity = model_identity  # what the cache keys on: MODEL_NAME is only a display name
        self.context_window = context_window
        self.storage = storage
        self.defaults = defaults or SamplingDefaults()
        self.grammars = grammars
        template = getattr(tokenizer, "chat_template", None)
        self.parser = parser_for(settings.tool_call_parser, template)
        self.native_tools = template_renders_tools(template)

    # -- validation and prompt -------------------------------------------------------------
    def _text_of(self, i: int, message: ChatMessage) -> str:
        if message.content is None or isinstance(message.content, str):
            return message.content or ""
        texts = []
        for j, part in enumerate(message.content):
            if part.type in IMAGE_PARTS:
                raise ApiError(
                    400, "unsupported_content",
                    f"messages[{i}].content[{j}] is an {part.type!r} part, but the model {self.model_name!r} is "
                    "text-only; send text parts only",
                )
            if part.type not in TEXT_PARTS or part.text is None:
                raise ApiError(
                    400, "unsupported_content",
                    f"messages[{i}].content[{j}] has type {part.type!r}; content parts must be "
                    f"{', '.join(repr(t) for t in TEXT_PARTS)} with a text field",
                )
            texts.append(part.text)
        return "".join(texts)

    def _check_messages(self, messages: list[ChatMessage]) -> list[dict[str, Any]]:
        """Messages as the chat template takes them: text content, `developer` as `system`, tool calls kept.

        Their size is bounded by the context window (counted in tokens once rendered) and by MAX_BODY_BYTES.
        """
        if not messages:
            raise ApiError(400, "invalid_messages", "messages must contain at least one message")
        if len(messages) > self.settings.max_messages:
            raise ApiError(
                400, "too_many_messages", f"messages has {len(messages)} entries; at most {self.settings.max_messages} are allowed"
            )
        out: list[dict[str, Any]] = []
        for i, m in enumerate(messages):
            message: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role, "content": self._text_of(i, m)}
            if m.tool_calls:
                message["tool_calls"] = [c.model_dump() for c in m.tool_calls]
            if m.role == "tool":
                message["tool_call_id"] = m.tool_call_id
            out.append(message)
        if all(m["role"] != "user" for m in out):
            raise ApiError(400, "invalid_messages", "messages must contain at least one message with role 'user'")
        return out

    async def render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | tuple[dict[str, Any], ...] = ()) -> list[int]:
        """Token ids of the prompt, tools included (by the chat template where it can, else in the parser's format)."""
        if self.native_tools:
            template_messages, template_tools = for_native_template(messages), (list(tools) or None)
        else:
            template_messages, template_tools = for_plain_template(messages, list(tools), self.parser), None
        try:
            return await self.renderer.render(template_messages, template_tools)
        except TemplateError as exc:
            raise ApiError(400, "invalid_messages", f"the model's chat template refused these messages: {exc}") from None

    def close(self) -> None:
        self.renderer.close()
        if self.grammars is not None:
            self.grammars.close()

    async def _constraint(self, plan: ToolPlan, output: OutputRequest, owner: str) -> Any:
        """The grammar a forced tool call or response_format imposes on the output, or None."""
        schema, what = plan.schema(), "the parameters schema of the tools in tool_choice"
        if schema is None:
            schema, what = output.json_schema, "the response format's JSON schema"
        if schema is None:
            return None
        if self.grammars is None:
            raise ApiError(400, "unsupported_parameter", "structured output is not available for this model")
        from app.inference.constraints import CompilerUnavailable, GrammarError, SchemaRefused

        try:
            return await self.grammars.constraint(schema, owner)
        except SchemaRefused as exc:
            raise ApiError(400, exc.code, f"{what} is refused: {exc}") from None
        except GrammarError as exc:
            raise ApiError(400, "invalid_schema", f"{what} cannot be enforced: {exc}") from None
        except CompilerUnavailable as exc:
            raise ApiError(503, "grammar_compiler_unavailable", f"{exc}; retry shortly", headers={"Retry-After": "5"}) from None

    async def prepare(
        self,
        route: str,
        principal: "Principal",
        messages: list[ChatMessage],
        gen: GenerationFields,
        *,
        max_tokens: int | None,
        ignore_eos: bool = False,
        request_id: str | None = None,
        output: OutputRequest | None = None,
    ) -> ChatJob:
        """Validate, render and size a request. An output cap above MAX_TOKENS or beyond the room the prompt leaves
        in the context window is clamped (ChatJob.max_tokens); only a prompt that alone fills the window is refused."""
        from app.inference.engine import SamplingParams

        if ignore_eos and not principal.scopes & IGNORE_EOS_SCOPES:
            raise ApiError(
                403, "insufficient_scope",
                f"ignore_eos needs a key with the {' or '.join(repr(s) for s in sorted(IGNORE_EOS_SCOPES))} scope; "
                f"key {principal.key_id!r} has neither",
            )
        output = output or OutputRequest()
        plain = self._check_messages(messages)
        try:
            plan = ToolPlan.of(output.tools, output.tool_choice, output.parallel_tool_calls, self.parser)
        except ToolChoiceError as exc:
            raise ApiError(400, "invalid_tool_choice", str(exc)) from None
        # Before tokenizing: a schema that is refused costs no tokenizer work.
        constraint = await self._constraint(plan, output, principal.key_id)
        prompt_ids = await self.render(plain, plan.tools)
        room = self.context_window - len(prompt_ids)
        if room < 1:
            raise ApiError(
                400,
                "context_length_exceeded",
                f"the prompt is {len(prompt_ids)} tokens; the model's context window is {self.context_window} tokens",
            )
        cap = self.settings.max_tokens
        d = self.defaults
        # JSON repeats its quotes, colons and braces by nature: a default penalty would bend a grammar-bound output.
        penalty = gen.repetition_penalty
        if penalty is None:
            penalty = 1.0 if constraint is not None else d.repetition_penalty
        params = SamplingParams(
            max_tokens=min(max_tokens or cap, cap, room),
            temperature=d.temperature if gen.temperature is None else gen.temperature,
            top_p=d.top_p if gen.top_p is None else gen.top_p,
            repetition_penalty=penalty,
            stop=gen.stop_tuple(),
            seed=gen.seed,
            ignore_eos=ignore_eos,
            timeout_s=self.settings.generation_timeout_s,
            constraint=constraint,
        )
        cache_key = None
        # Answers that carry tool calls or follow a schema are not cached: the key would have to hold the tools too.
        if self.storage is not None and not ignore_eos and constraint is None and plan.mode == "none":
            cache_key = self.storage.cache.key_for(
                owner=principal.key_id,
                model=self.model_identity,
                prompt_ids=prompt_ids,
                params={"max_tokens": params.max_tokens, "temperature": params.temperature, "top_p": params.top_p,
                        "repetition_penalty": params.repetition_penalty, "stop": list(params.stop), "seed": params.seed},
            )
        return ChatJob(
            request_id=request_id or f"chatcmpl-{uuid.uuid4().hex}",
            route=route,
            key_id=principal.key_id,
            messages=plain,
            prompt_ids=prompt_ids,
            params=params,
            cache_key=cache_key,
            plan=plan,
        )

    # -- running -----------------------------------------------------------------------------
    async def cached(self, job: ChatJob) -> Answer | None:
        if job.cache_key is None or self.storage is None:
            return None
        hit = await self.storage.cache.get(job.cache_key)
        if hit is None:
            return None
        return Answer(
            text=hit["text"],
            finish_reason=hit["finish_reason"],
            prompt_tokens=len(job.prompt_ids),
            completion_tokens=int(hit["completion_tokens"]),
            cached=True,
        )

    def submit(self, job: ChatJob) -> "GenerationHandle":
        from app.inference.engine import EngineClosedError, EngineFailedError, InvalidRequestError, QueueFullError

        try:
            return self.engine.submit(job.prompt_ids, job.params, prefix_scope=job.key_id)
        except QueueFullError as exc:
            self.metrics.rate_limited.labels(scope="queue").inc()
            raise ApiError(
                429, "queue_full", "the service is at capacity; retry shortly", headers={"Retry-After": str(exc.retry_after_s)}
            ) from None
        except (EngineClosedError, EngineFailedError) as exc:
            raise unavailable(exc) from None
        except InvalidRequestError as exc:  # only what the engine means as the client's error; any other is a 500
            raise ApiError(400, "invalid_request", str(exc)) from None

    async def completion(self, handle: "GenerationHandle") -> "Completion":
        """The engine's answer; a request the engine could not finish becomes a 503 ApiError, one whose own step
        failed a 500 (the replica stays healthy)."""
        from app.inference.engine import EngineClosedError, EngineFailedError, InsufficientMemoryError, RequestFailedError

        try:
            return await handle.result()
        except (EngineClosedError, EngineFailedError, InsufficientMemoryError) as exc:
            raise unavailable(exc) from None
        except RequestFailedError as exc:
            raise ApiError(500, "generation_failed", f"{exc}; retry the request or change its parameters") from None

    async def wait(self, handle: "GenerationHandle", request: Request) -> "Completion":
        """Wait for the result; if the client goes away, cancel the generation and raise ClientDisconnected."""
        result = asyncio.ensure_future(self.completion(handle))
        try:
            while True:
                done, _ = await asyncio.wait({result}, timeout=DISCONNECT_POLL_S)
                if done:
                    return result.result()
                if await request.is_disconnected():
                    raise ClientDisconnected()
        finally:
            if not result.done():
                handle.cancel()
                result.cancel()

    def answer_of(self, job: ChatJob, completion: "Completion") -> Answer:
        if completion.finish_reason == "timeout":
            self.metrics.generation_timeouts.inc()
            raise ApiError(
                504, "generation_timeout", f"generation took longer than {self.settings.generation_timeout_s:g} seconds"
            )
        return Answer(
            text=completion.text,
            finish_reason=completion.finish_reason,
            prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens,
            cached_tokens=completion.cached_tokens,
        )

    async def finish(self, job: ChatJob, answer: Answer, request: Request) -> None:
        """Record the exchange durably (and fill the cache) before the response completes."""
        request.state.tokens = {"prompt": answer.prompt_tokens, "completion": answer.completion_tokens, "cached": answer.cached,
                                "cached_tokens": answer.cached_tokens}
        if self.storage is None:
            return
        if job.cache_key is not None and not answer.cached and answer.finish_reason in ("stop", "length"):
            await self.storage.cache.put(
                job.cache_key,
                {"text": answer.text, "finish_reason": answer.finish_reason, "completion_tokens": answer.completion_tokens},
            )
        from app.storage.conversations import Exchange, StoreUnavailable

        exchange = Exchange(
            request_id=job.request_id,
            key_id=job.key_id,
            route=job.route,
            messages=job.messages,
            answer=answer.text,
            usage={"prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens, "cached": answer.cached},
            latency_s=time.perf_counter() - job.started,
            created_at=time.time(),
        )
        try:
            await self.storage.conversations.record(exchange)
        except StoreUnavailable as exc:
            # Nothing is answered that is not stored: the client gets a 503 and may retry (the same prompt may
            # then come from the response cache, and is recorded then).
            log.error("exchange not recorded", extra={"request_id": job.request_id, "error": str(exc)})
            raise ApiError(
                503, "conversation_store_unavailable",
                "the conversation store is unreachable, so the answer was not recorded; retry the request",
                headers={"Retry-After": "5"},
            ) from exc

    async def complete(self, job: ChatJob, request: Request) -> Answer:
        answer = await self.cached(job)
        if answer is None:
            handle = self.submit(job)
            answer = self.answer_of(job, await self.wait(handle, request))
        await self.finish(job, answer, request)
        return answer


def unavailable(exc: Exception) -> ApiError:
    """The 503 for a request the engine would not take or could not finish; Retry-After says when to come back."""
    from app.inference.engine import EngineClosedError, EngineFailedError

    if isinstance(exc, EngineClosedError):
        return ApiError(503, "shutting_down", f"{exc}", headers={"Retry-After": "1"})
    if isinstance(exc, EngineFailedError):
        # The cause is in this replica's log; the client only needs to know to go elsewhere.
        return ApiError(503, "engine_failed", "the generation engine failed and this replica is restarting; retry",
                        headers={"Retry-After": "1"})
    return ApiError(503, "insufficient_memory", f"{exc}", headers={"Retry-After": "30"})
