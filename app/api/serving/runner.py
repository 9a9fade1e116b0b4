"""ChatRunner: runs a chat request's whole life, so that the routes only parse requests and format answers.

    route ── prepare ──> ChatJob ── complete ──> ChatResult                  (one JSON answer)
                                └── stream(format) ──> text/event-stream    (the same life, as events)

A run looks up the response cache, submits to the engine (a full queue is a 429 before any stream starts),
waits for the answer or streams its deltas shaped into text and tool-call pieces, notices a client that
goes away, records the exchange in the conversation store (and the cache), and leaves the tokens used in the
request's context (app.access.context) for the key's token budget and the request log. A stream that fails after its 200 went out
ends with the format's error events, and the request is logged with the status it really ended with.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, Any, Protocol

from fastapi import Request
from fastapi.responses import StreamingResponse

from app.access.context import TokenUsage
from app.api.context import context_of
from app.api.errors import ApiError
from app.api.serving import engine_calls
from app.api.serving.jobs import Answer, ChatJob, ChatResult
from app.api.serving.preparation import JobBuilder
from app.api.tools import Delta, ParsedOutput
from app.inference.loader import SamplingDefaults, output_cap
from app.inference.requests import Completion

if TYPE_CHECKING:
    from app.inference.constraints import Grammars
    from app.inference.engine import Engine
    from app.inference.handle import GenerationHandle
    from app.observability.metrics import Metrics
    from app.settings import Settings
    from app.storage.stores import Storage

log = logging.getLogger("clawbot.chat")
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class StreamFormat(Protocol):
    """How one API writes a streamed answer as server-sent events (each string is one whole event)."""

    def start(self) -> Iterable[str]:
        """Events before any output."""

    def piece(self, piece: Delta) -> Iterable[str]:
        """Events for a piece of text or of a tool call."""

    def end_of_output(self) -> Iterable[str]:
        """Events once the output is complete, before it is recorded."""

    def finish(self, result: ChatResult) -> Iterable[str]:
        """Events once the exchange is recorded: the finish reason, the usage."""

    def error(self, error: ApiError) -> Iterable[str]:
        """Events for an error after the stream started (the 200 is already on the wire)."""

    def done(self) -> Iterable[str]:
        """Events that close every stream, after success or error."""


class ChatRunner:
    """Prepares chat jobs and runs them on the engine; owns the rules both OpenAI APIs and the seed API share."""

    def __init__(
        self,
        *,
        settings: Settings,
        metrics: Metrics,
        engine: Engine,
        tokenizer: Any,
        model_name: str,
        model_identity: str,
        context_window: int,
        storage: Storage | None,
        defaults: SamplingDefaults | None = None,
        grammars: Grammars | None = None,
        max_tokens: int | None = None,
    ) -> None:
        self.settings = settings
        # The output cap: MAX_TOKENS, else the model's own (app.inference.loader.output_cap).
        self.max_tokens = max_tokens or output_cap(settings.max_tokens, settings.model_path)
        self.metrics = metrics
        self.engine = engine
        self.model_name = model_name
        self.storage = storage
        self.jobs = JobBuilder(
            settings=settings,
            tokenizer=tokenizer,
            model_name=model_name,
            model_identity=model_identity,
            context_window=context_window,
            storage=storage,
            defaults=defaults or SamplingDefaults(),
            grammars=grammars,
            max_tokens=self.max_tokens,
        )
        self.prepare = self.jobs.prepare  # route, principal, messages, generation fields, limits -> ChatJob
        self.render = self.jobs.render

    def close(self) -> None:
        self.jobs.close()

    # -- preparing ---------------------------------------------------------------------------
    def check_model(self, requested: str | None) -> None:
        if requested not in (None, "", self.model_name):
            raise ApiError(
                404,
                "model_not_found",
                f"model {requested!r} is not served here; GET /v1/models lists {self.model_name!r}",
            )

    # -- running -----------------------------------------------------------------------------
    async def complete(self, job: ChatJob, request: Request) -> ChatResult:
        """Run `job` to its end and record it; a client that goes away cancels it (ClientDisconnected, a 499)."""
        answer = await self._cached(job)
        if answer is None:
            handle = self._submit(job, request)
            answer = self._answer_of(await engine_calls.wait(handle, request))
        return await self._record(job, answer, job.plan.parse(answer.text), request)

    async def stream(self, job: ChatJob, request: Request, fmt: StreamFormat) -> StreamingResponse:
        """Start `job` and answer with its events as they come. A full queue is a 429 before the stream starts."""
        cached = await self._cached(job)
        handle = None if cached is not None else self._submit(job, request)
        return StreamingResponse(
            self._events(job, request, fmt, handle, cached),
            media_type="text/event-stream",
            headers={**STREAM_HEADERS, **job.headers},
        )

    async def _events(
        self, job: ChatJob, request: Request, fmt: StreamFormat, handle: GenerationHandle | None, cached: Answer | None
    ) -> AsyncIterator[str]:
        shaper = job.plan.shaper()
        try:
            for event in fmt.start():
                yield event
            if handle is None:
                assert cached is not None
                answer = cached
                for piece in shaper.feed(cached.text):
                    for event in fmt.piece(piece):
                        yield event
            else:
                async for delta in handle:
                    for piece in shaper.feed(delta):
                        for event in fmt.piece(piece):
                            yield event
                answer = self._answer_of(await engine_calls.completion(handle))
            tail, parsed = shaper.finish()
            for piece in tail:
                for event in fmt.piece(piece):
                    yield event
            for event in fmt.end_of_output():
                yield event
            result = await self._record(job, answer, parsed, request)
            for event in fmt.finish(result):
                yield event
        except Exception as exc:
            for event in fmt.error(self._stream_failed(request, exc)):
                yield event
        finally:
            if handle is not None:
                handle.cancel()  # no-op once finished; frees the slot when the client went away
        for event in fmt.done():
            yield event

    def _submit(self, job: ChatJob, request: Request) -> GenerationHandle:
        """Hand `job` to the engine. Until the request ends, its context can stop the generation and say what it used
        (a client that hangs up is charged for the prompt read and the tokens generated)."""
        handle = engine_calls.submit(self.engine, job, self.metrics)

        def stop() -> TokenUsage:
            used = handle.stop()
            return TokenUsage(
                prompt=used.prompt_tokens, completion=used.completion_tokens, cached_tokens=used.cached_tokens
            )

        context_of(request).stop_generation = stop
        return handle

    @staticmethod
    def _stream_failed(request: Request, exc: Exception) -> ApiError:
        """An error after the 200 went out: it is sent as events, and logged and counted with its own status."""
        if not isinstance(exc, ApiError):
            log.error("stream failed", extra={"error_type": type(exc).__name__}, exc_info=exc)
            exc = ApiError(500, "internal_error", "the generation failed; retry the request")
        context_of(request).final_status = exc.status
        return exc

    async def _cached(self, job: ChatJob) -> Answer | None:
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

    def _answer_of(self, completion: Completion) -> Answer:
        """The engine's completion as an answer. One the generation deadline ended is what was generated until then,
        with finish_reason "length" (an output cap, as OpenAI's clients know it); only a request the deadline reached
        before its first token is a 504."""
        finish_reason, deadline_s = completion.finish_reason, None
        if finish_reason == "timeout":
            self.metrics.generation_timeouts.inc()
            deadline_s = self.settings.generation_timeout_s
            if not completion.completion_tokens:
                raise ApiError(
                    504,
                    "generation_timeout",
                    f"generation did not start within GENERATION_TIMEOUT_SECONDS ({deadline_s:g} seconds); retry shortly",
                )
            finish_reason = "length"
        return Answer(
            text=completion.text,
            finish_reason=finish_reason,
            prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens,
            cached_tokens=completion.cached_tokens,
            deadline_s=deadline_s,
        )

    async def _record(self, job: ChatJob, answer: Answer, parsed: ParsedOutput, request: Request) -> ChatResult:
        """Record the exchange durably (and fill the cache) before the response completes."""
        context_of(request).usage = TokenUsage(
            prompt=answer.prompt_tokens,
            completion=answer.completion_tokens,
            cached=answer.cached,
            cached_tokens=answer.cached_tokens,
        )
        result = ChatResult(job=job, answer=answer, parsed=parsed)
        if self.storage is None:
            return result
        # An answer the deadline cut short depends on how busy the replica was: the next ask may get further.
        if (
            job.cache_key is not None
            and not answer.cached
            and answer.finish_reason in ("stop", "length")
            and answer.deadline_s is None
        ):
            await self.storage.cache.put(
                job.cache_key,
                {
                    "text": answer.text,
                    "finish_reason": answer.finish_reason,
                    "completion_tokens": answer.completion_tokens,
                },
            )
        from app.storage.conversations import Exchange, StoreUnavailable

        exchange = Exchange(
            request_id=job.request_id,
            key_id=job.key_id,
            route=job.route,
            messages=job.messages,
            answer=answer.text,
            usage={
                "prompt_tokens": answer.prompt_tokens,
                "completion_tokens": answer.completion_tokens,
                "cached": answer.cached,
            },
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
                503,
                "conversation_store_unavailable",
                "the conversation store is unreachable, so the answer was not recorded; retry the request",
                headers={"Retry-After": "5"},
            ) from exc
        return result
