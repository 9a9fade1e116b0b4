"""The batching engine: a bounded request queue, an engine core stepped by one worker thread, and an output sink.

The parts follow vLLM v1's engine:
- `RequestQueue` (`app.inference.request_queue`): submit, cancel, expire, requeue, drain. It holds the only
  lock the event loop and the worker share.
- `EngineCore` (`app.inference.engine_core`): the model's side. The scheduler (`app.inference.scheduler`)
  decides which queued requests join: at most MAX_BATCH_SIZE rows, and no more than the KV-cache budget
  (KV_CACHE_TOKENS, or derived from free device memory) can hold at the batch's worst-case peak. `step()`
  prefills an admitted group as one left-padded matrix, PREFILL_CHUNK_TOKENS at a time, taking turns with
  decode steps of the running batch (`app.inference.model_runner`); once read, the group is merged into the
  running batch layer by layer (`app.inference.kv_batch`). A prompt whose head was read before starts its
  prefill after it, from the keys and values kept in the prefix cache (`app.inference.prefix_cache`,
  PREFIX_CACHE_TOKENS). This is TGI's `CausalLMBatch` scheme on the ordinary transformers KV cache.
- `OutputSink` (`app.inference.output_sink`): text deltas and answers reach the asyncio side through
  `loop.call_soon_threadsafe`, one hop per step.
`Engine` wires them together and runs the worker thread: wait for work, admit, step, apply the step's output.

Failure modes, each visible to the caller rather than a hang:
- out of memory in a prefill or decode step: the core splits the batch and shrinks the KV budget; a request
  that cannot fit even alone fails with InsufficientMemoryError. The engine keeps running.
- an exception in one request's own work (its sampling, its grammar, its detokenization and stop
  handling) fails that request alone with RequestFailedError; the batch goes on without it.
- any other exception (the model's forward, the device) kills the worker: every request it held fails with
  EngineFailedError, `failure` says why (and /healthz turns 503 so the pod is restarted),
  `clawbot_engine_failures_total` counts it.
- `drain(grace_s)` (SIGTERM): no new work; what was accepted may finish for `grace_s`, then every
  request still waiting fails with EngineClosedError, before the server's own deadline.

`continuous=False` turns the same machinery into static batching (a batch is only
formed when the previous one has fully finished); `bench/throughput.py` measures both.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

import torch

from app.inference.engine_core import MAX_FAILURE_CHARS, EngineCore, StepOutput, demand_of
from app.inference.handle import GenerationHandle
from app.inference.memory import kv_budget_tokens
from app.inference.output_sink import OutputSink
from app.inference.prefix_cache import PrefixCache
from app.inference.request_queue import RequestQueue
from app.inference.request_state import RequestState
from app.inference.requests import (
    FINISH_REASONS,
    Completion,
    EngineClosedError,
    EngineFailedError,
    InsufficientMemoryError,
    InvalidRequestError,
    QueueFullError,
    RequestFailedError,
    SamplingParams,
)
from app.inference.scheduler import KVBudget, Scheduler

if TYPE_CHECKING:
    from app.observability.metrics import Metrics

__all__ = [
    "FINISH_REASONS",
    "Completion",
    "Engine",
    "EngineClosedError",
    "EngineFailedError",
    "GenerationHandle",
    "InsufficientMemoryError",
    "InvalidRequestError",
    "QueueFullError",
    "RequestFailedError",
    "SamplingParams",
]
log = logging.getLogger("clawbot.engine")


class Engine:
    """Continuous batching over one model; see the module docstring."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        device: torch.device | str,
        max_batch_size: int = 32,
        batch_wait_ms: int = 10,
        max_queue: int = 256,
        max_tokens: int = 2048,
        context_window: int = 2048,
        kv_cache_tokens: int = 0,
        prefill_chunk_tokens: int = 2048,
        prefix_cache_tokens: int = 0,
        metrics: Metrics | None = None,
        continuous: bool = True,
    ) -> None:
        for name, value, lo in (
            ("max_batch_size", max_batch_size, 1),
            ("batch_wait_ms", batch_wait_ms, 0),
            ("max_queue", max_queue, 1),
            ("max_tokens", max_tokens, 1),
            ("context_window", context_window, 2),
            ("kv_cache_tokens", kv_cache_tokens, 0),
            ("prefill_chunk_tokens", prefill_chunk_tokens, 1),
            ("prefix_cache_tokens", prefix_cache_tokens, 0),
        ):
            if value < lo:
                raise ValueError(f"{name} must be at least {lo}, got {value}")
        self.device = torch.device(device)
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_ms / 1000
        self.max_tokens = max_tokens
        self.context_window = context_window
        self.metrics = metrics
        self.continuous = continuous
        self.prefix_cache = PrefixCache(prefix_cache_tokens)
        # The prefix cache's entries share the device with the running batch: a derived budget leaves them room.
        derived = kv_budget_tokens(model, self.device, kv_cache_tokens)
        self.budget = KVBudget(derived if kv_cache_tokens else max(1, derived - prefix_cache_tokens))
        self.scheduler = Scheduler(max_batch_size, self.budget)
        if metrics is not None:
            metrics.kv_budget_tokens.set(self.budget.tokens)
        self.sink = OutputSink(metrics)
        self.queue = RequestQueue(
            max_queue=max_queue,
            max_batch_size=max_batch_size,
            ended=lambda requests: self.sink.deliver([], requests),
            on_change=self._queue_gauge,
        )
        self.core = EngineCore(
            model,
            tokenizer,
            device=self.device,
            budget=self.budget,
            prefix_cache=self.prefix_cache,
            prefill_chunk_tokens=prefill_chunk_tokens,
            metrics=metrics,
        )
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_timer: asyncio.TimerHandle | None = None
        self._drain_deadline: float | None = None

    # -- what the core owns, as callers name it --------------------------------------------------
    @property
    def model(self) -> Any:
        return self.core.model

    @model.setter
    def model(self, model: Any) -> None:
        self.core.model = model

    @property
    def tokenizer(self) -> Any:
        return self.core.tokenizer

    @property
    def eos_ids(self) -> frozenset[int]:
        return self.core.eos_ids

    @property
    def queue_depth(self) -> int:
        return len(self.queue)

    @property
    def active(self) -> int:
        """Requests in the running batch or being prefilled."""
        return self.core.active

    @property
    def failure(self) -> str | None:
        """Why the worker died ("ErrorType: message"), or None while it runs (or after a clean shutdown)."""
        return self.queue.failure

    # -- public API (event loop side) ------------------------------------------------------
    async def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("Engine.start() was already called")
        self._loop = asyncio.get_running_loop()
        self.sink.bind(self._loop)
        self._thread = threading.Thread(target=self._run, name="clawbot-engine", daemon=True)
        self._thread.start()

    def submit(self, prompt_ids: list[int], params: SamplingParams, *, prefix_scope: str = "") -> GenerationHandle:
        """Queue a generation. Raises QueueFullError, EngineClosedError, EngineFailedError, or InvalidRequestError for a bad prompt or params.

        `prefix_scope`: prompt heads cached under this scope only are reused for it (the API passes the key id)."""
        if self._loop is None:
            raise EngineClosedError("the engine has not been started; call `await engine.start()` first")
        params.validate()
        prompt = [int(t) for t in prompt_ids]
        if not prompt:
            raise InvalidRequestError("the prompt is empty; at least one token is needed")
        room = self.context_window - len(prompt)
        if room < 1:
            raise InvalidRequestError(
                f"the prompt is {len(prompt)} tokens; the context window is {self.context_window} tokens, "
                "which leaves no room for a completion"
            )
        now = time.perf_counter()
        # The handle reports the request's progress (its caller is charged for it if it hangs up): `request` below.
        handle = GenerationHandle(self._loop, self.queue.cancel, lambda: request.progress())
        request = RequestState(
            handle=handle,
            prompt_ids=prompt,
            params=params,
            max_new=min(params.max_tokens, self.max_tokens, room),
            submitted_at=now,
            deadline=None if params.timeout_s is None else now + params.timeout_s,
            prefix_scope=prefix_scope,
        )
        if not params.greedy and params.seed is not None:
            request.generator = torch.Generator(device=self.device).manual_seed(params.seed)
        self.queue.submit(request)
        self.sink.track(handle)
        return handle

    def drain(self, grace_s: float) -> None:
        """Take no new work; what is queued or running may finish for `grace_s` seconds, then fails with EngineClosedError.

        Called on the event loop. The deadline is kept by a loop timer, not the worker, so a request is answered
        on time even while the worker is inside a long step. A second call can only bring the deadline forward.
        """
        if self._loop is None:
            raise EngineClosedError("the engine has not been started; nothing to drain")
        self.queue.close()
        deadline = self._loop.time() + max(0.0, grace_s)
        if self._drain_deadline is not None and self._drain_deadline <= deadline:
            return
        if self._drain_timer is not None:
            self._drain_timer.cancel()
        self._drain_deadline = deadline
        self._drain_timer = self._loop.call_at(deadline, self._drain_expired)

    async def shutdown(self, grace_s: float = 30.0) -> None:
        """Drain for up to `grace_s` (see `drain`), then wait for the worker to end."""
        if self._loop is None:
            return
        self.drain(grace_s)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
        if self._drain_timer is not None:
            self._drain_timer.cancel()

    def _drain_expired(self) -> None:
        self.queue.stop()
        self.sink.fail_all(
            lambda: EngineClosedError(
                "the service is shutting down and could not finish this request within its shutdown grace period; "
                "retry it (another replica will answer)"
            )
        )

    # -- worker thread --------------------------------------------------------------------
    def _run(self) -> None:
        try:
            with torch.inference_mode():
                while self.queue.wait_for_work(busy=self.core.busy):
                    self._apply(self.core.step(self._admit()))
            self.core.reset()
        except BaseException as exc:
            self._die(exc)

    def _admit(self) -> list[RequestState]:
        """The scheduler's decision: the head of the queue that joins now (FIFO, under the row cap and KV budget).

        When nothing is running the queue first waits up to batch_wait_ms for more arrivals, so that a burst
        is prefilled as one group rather than one forward pass each."""
        core = self.core
        if not core.admits or not (self.continuous or not core.running):
            return []
        running = core.demands()
        return self.queue.admit(
            lambda waiting: self.scheduler.admit(running, [demand_of(r) for r in waiting]),
            room=self.max_batch_size - len(running),
            burst_wait_s=0.0 if running else self.batch_wait_s,
        )

    def _apply(self, output: StepOutput) -> None:
        self.queue.requeue(output.requeued)
        self.sink.deliver(output.deltas, output.finished)
        now = time.perf_counter()
        for request in output.finished:
            self.queue.observe_request_time(now - request.submitted_at)

    def _queue_gauge(self, depth: int) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(depth)

    def _die(self, exc: BaseException) -> None:
        """The worker is ending on an exception: record why, count it, and fail every request it held."""
        kind = type(exc).__name__
        failure = f"{kind}: {str(exc)[:MAX_FAILURE_CHARS]}"
        self.queue.fail(failure)
        self.core.reset()
        # The traceback names code, never request text; prompts are not part of any exception the model raises.
        log.error(
            "generation engine failed; every request it held fails and /healthz reports it",
            extra={"error_type": kind, "error": failure},
            exc_info=exc,
        )
        if self.metrics is not None:
            self.metrics.engine_failures.labels(reason=kind).inc()
        self.sink.call_soon(
            lambda: self.sink.fail_all(
                lambda: EngineFailedError(f"the generation engine failed ({failure}); this replica must restart")
            )
        )
