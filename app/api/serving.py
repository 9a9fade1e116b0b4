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

from app.access.keyring import IGNORE_EOS_SCOPES
from app.api.errors import ApiError
from app.api.middleware.request_log import ClientDisconnected
from app.api.schemas import ChatMessage, GenerationFields
from app.inference.prompts import PromptRenderer

if TYPE_CHECKING:
    from app.inference.engine import Completion, Engine, GenerationHandle, SamplingParams
    from app.observability.metrics import Metrics
    from app.access.control import Principal
    from app.storage.stores import Storage
    from app.settings import Settings

log = logging.getLogger("clawbot.chat")
DISCONNECT_POLL_S = 0.25


@dataclass
class ChatJob:
    request_id: str
    route: str
    key_id: str
    messages: list[dict[str, str]]
    prompt_ids: list[int]
    params: "SamplingParams"
    cache_key: str | None
    started: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True)
class Answer:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    cached: bool = False


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
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.engine = engine
        self.renderer = PromptRenderer(tokenizer)
        self.model_name = model_name
        self.model_identity = model_identity  # what the cache keys on: MODEL_NAME is only a display name
        self.context_window = context_window
        self.storage = storage

    # -- validation and prompt -------------------------------------------------------------
    def _check_messages(self, messages: list[ChatMessage]) -> list[dict[str, str]]:
        if not messages:
            raise ApiError(400, "invalid_messages", "messages must contain at least one message")
        if len(messages) > self.settings.max_messages:
            raise ApiError(
                400, "too_many_messages", f"messages has {len(messages)} entries; at most {self.settings.max_messages} are allowed"
            )
        out = []
        for i, m in enumerate(messages):
            text = m.text()
            if len(text) > self.settings.max_message_chars:
                raise ApiError(
                    400,
                    "message_too_long",
                    f"messages[{i}].content is {len(text)} characters; at most {self.settings.max_message_chars} are allowed",
                )
            out.append({"role": m.role, "content": text})
        if all(m["role"] != "user" for m in out):
            raise ApiError(400, "invalid_messages", "messages must contain at least one message with role 'user'")
        return out

    async def render(self, messages: list[dict[str, str]]) -> list[int]:
        return await self.renderer.render(messages)

    def close(self) -> None:
        self.renderer.close()

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
    ) -> ChatJob:
        from app.inference.engine import SamplingParams

        if ignore_eos and not principal.scopes & IGNORE_EOS_SCOPES:
            raise ApiError(
                403, "insufficient_scope",
                f"ignore_eos needs a key with the {' or '.join(repr(s) for s in sorted(IGNORE_EOS_SCOPES))} scope; "
                f"key {principal.key_id!r} has neither",
            )
        plain = self._check_messages(messages)
        cap = self.settings.max_tokens
        if max_tokens is not None and not 1 <= max_tokens <= cap:
            raise ApiError(400, "invalid_max_tokens", f"max_tokens must be between 1 and {cap}, got {max_tokens}")
        prompt_ids = await self.render(plain)
        room = self.context_window - len(prompt_ids)
        if room < 1:
            raise ApiError(
                400,
                "context_length_exceeded",
                f"the prompt is {len(prompt_ids)} tokens; the model's context window is {self.context_window} tokens",
            )
        if max_tokens is not None and max_tokens > room:
            raise ApiError(
                400,
                "context_length_exceeded",
                f"the prompt ({len(prompt_ids)} tokens) plus max_tokens ({max_tokens}) exceeds "
                f"the model's context window of {self.context_window} tokens",
            )
        params = SamplingParams(
            max_tokens=min(max_tokens or cap, room),
            temperature=gen.temperature,
            top_p=gen.top_p,
            stop=gen.stop_tuple(),
            seed=gen.seed,
            ignore_eos=ignore_eos,
            timeout_s=self.settings.generation_timeout_s,
        )
        cache_key = None
        if self.storage is not None and not ignore_eos:
            cache_key = self.storage.cache.key_for(
                owner=principal.key_id,
                model=self.model_identity,
                prompt_ids=prompt_ids,
                params={"max_tokens": params.max_tokens, "temperature": params.temperature, "top_p": params.top_p,
                        "stop": list(params.stop), "seed": params.seed},
            )
        return ChatJob(
            request_id=request_id or f"chatcmpl-{uuid.uuid4().hex}",
            route=route,
            key_id=principal.key_id,
            messages=plain,
            prompt_ids=prompt_ids,
            params=params,
            cache_key=cache_key,
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
        from app.inference.engine import EngineClosedError, EngineFailedError, QueueFullError

        try:
            return self.engine.submit(job.prompt_ids, job.params)
        except QueueFullError as exc:
            self.metrics.rate_limited.labels(scope="queue").inc()
            raise ApiError(
                429, "queue_full", "the service is at capacity; retry shortly", headers={"Retry-After": str(exc.retry_after_s)}
            ) from None
        except (EngineClosedError, EngineFailedError) as exc:
            raise unavailable(exc) from None
        except ValueError as exc:
            raise ApiError(400, "invalid_request", str(exc)) from None

    async def completion(self, handle: "GenerationHandle") -> "Completion":
        """The engine's answer; a request the engine could not finish becomes a 503 ApiError."""
        from app.inference.engine import EngineClosedError, EngineFailedError, InsufficientMemoryError

        try:
            return await handle.result()
        except (EngineClosedError, EngineFailedError, InsufficientMemoryError) as exc:
            raise unavailable(exc) from None

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
        )

    async def finish(self, job: ChatJob, answer: Answer, request: Request) -> None:
        """Record the exchange durably (and fill the cache) before the response completes."""
        request.state.tokens = {"prompt": answer.prompt_tokens, "completion": answer.completion_tokens, "cached": answer.cached}
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
