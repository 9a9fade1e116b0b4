"""The batching engine: a bounded queue and one worker thread that runs continuous batching on the model.

Requests wait in a bounded FIFO queue. A single worker thread (never the event loop) owns the
model. The scheduler (`app.inference.scheduler`) decides which queued requests join: at most
MAX_BATCH_SIZE rows, and no more than the KV-cache budget (KV_CACHE_TOKENS, or derived from
free device memory) can hold at the batch's worst-case peak. An admitted group is prefilled
as one left-padded matrix, PREFILL_CHUNK_TOKENS at a time, interleaved with decode steps of
the running batch (`app.inference.model_runner`); once read, it is merged into the running
batch layer by layer (`app.inference.kv_batch`). Every step decodes one token for every row
and drops rows that finished or were cancelled. A prompt whose head was read before starts its
prefill after it, from the keys and values kept in the prefix cache (`app.inference.prefix_cache`,
PREFIX_CACHE_TOKENS). This is TGI's `CausalLMBatch` scheme on the
ordinary transformers KV cache. Text deltas reach the asyncio side through
`loop.call_soon_threadsafe`, one hop per decode step.

Failure modes, each visible to the caller rather than a hang:
- out of memory in a prefill or decode step: the batch is split (half the group retried, or
  the newer half of the running rows sent back to the queue and recomputed when readmitted),
  the KV budget shrinks, `clawbot_engine_oom_total` counts it; a request that cannot fit even
  alone fails with InsufficientMemoryError. The engine keeps running.
- an exception in one request's own work (its sampling, its grammar, its detokenization and stop
  handling) fails that request alone with RequestFailedError; the batch goes on without it, and
  `clawbot_request_failures_total` counts it.
- any other exception (the model's forward, the device) kills the worker: every request it held fails with EngineFailedError,
  `failure` says why (and /healthz turns 503 so the pod is restarted), `clawbot_engine_failures_total`
  counts it.
- `drain(grace_s)` (SIGTERM): no new work; what was accepted may finish for `grace_s`, then every
  request still waiting fails with EngineClosedError, before the server's own deadline.

`continuous=False` turns the same machinery into static batching (a batch is only
formed when the previous one has fully finished); `bench/throughput.py` measures both.
"""
from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
import weakref
from collections import deque
from itertools import islice
from typing import TYPE_CHECKING, Any, Callable, Iterable

import torch

from app.inference.handle import GenerationHandle
from app.inference.kv_batch import KVBatch, merge, select, truncate
from app.inference.memory import is_out_of_memory, kv_budget_tokens, release_cached_memory
from app.inference.model_runner import PrefillJob, decode
from app.inference.prefix_cache import PrefixCache
from app.inference.requests import (
    FINISH_REASONS,
    Completion,
    EngineClosedError,
    EngineFailedError,
    InsufficientMemoryError,
    InvalidRequestError,
    QueueFullError,
    RequestFailedError,
    Row,
    SamplingParams,
)
from app.inference.sampler import sample
from app.inference.scheduler import Demand, KVBudget, Scheduler
from app.inference.stops import append_token

if TYPE_CHECKING:
    from app.observability.metrics import Metrics

__all__ = [
    "FINISH_REASONS", "Completion", "Engine", "EngineClosedError", "EngineFailedError", "GenerationHandle",
    "InsufficientMemoryError", "InvalidRequestError", "QueueFullError", "RequestFailedError", "SamplingParams",
]
log = logging.getLogger("clawbot.engine")
# An exception's message goes into the log and /healthz; bounded, since some quote tensors at length.
MAX_FAILURE_CHARS = 500


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
        metrics: "Metrics | None" = None,
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
        self.model = model
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_ms / 1000
        self.max_queue = max_queue
        self.max_tokens = max_tokens
        self.context_window = context_window
        self.prefill_chunk_tokens = prefill_chunk_tokens
        self.metrics = metrics
        self.continuous = continuous
        self.eos_ids = _eos_ids(model, tokenizer)
        self.pad_id = _pad_id(tokenizer, self.eos_ids)
        self.prefix_cache = PrefixCache(prefix_cache_tokens)
        # The prefix cache's entries share the device with the running batch: a derived budget leaves them room.
        derived = kv_budget_tokens(model, self.device, kv_cache_tokens)
        self.budget = KVBudget(derived if kv_cache_tokens else max(1, derived - prefix_cache_tokens))
        self.scheduler = Scheduler(max_batch_size, self.budget)
        if metrics is not None:
            metrics.kv_budget_tokens.set(self.budget.tokens)

        self._cond = threading.Condition()
        self._queue: deque[Row] = deque()
        self._rows: list[Row] = []  # running batch, in cache row order
        self._batch: KVBatch | None = None
        self._prefill: PrefillJob | None = None  # the admitted group being read, not yet in the batch
        self._closing = False
        self._stopped = False
        self._failure: str | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Every handle not yet answered, so a drain deadline or a dead worker can fail them wherever they are.
        self._handles: weakref.WeakSet[GenerationHandle] = weakref.WeakSet()
        self._drain_timer: asyncio.TimerHandle | None = None
        self._drain_deadline: float | None = None
        # Generators live on the model's device: torch.multinomial refuses a generator from another device.
        self._sampler = torch.Generator(device=self.device)
        self._sampler.seed()
        self._request_s = 5.0  # moving average of request time, for Retry-After

    # -- public API (event loop side) ------------------------------------------------------
    async def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("Engine.start() was already called")
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="clawbot-engine", daemon=True)
        self._thread.start()

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def active(self) -> int:
        job = self._prefill  # read once: the worker may clear it meanwhile (gauges are set from the loop too)
        return len(self._rows) + (len(job.rows) if job is not None else 0)

    @property
    def failure(self) -> str | None:
        """Why the worker died ("ErrorType: message"), or None while it runs (or after a clean shutdown)."""
        return self._failure

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
        handle = GenerationHandle(self._loop, self._cancelled)
        request = Row(
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
        with self._cond:
            if self._failure is not None:
                raise EngineFailedError(f"the generation engine failed ({self._failure}); this replica must restart")
            if self._closing:
                raise EngineClosedError("the service is shutting down and takes no new requests; retry (another replica will answer)")
            if len(self._queue) >= self.max_queue:
                waves = 1 + len(self._queue) // self.max_batch_size
                raise QueueFullError(self.max_queue, max(1, math.ceil(self._request_s * waves)))
            self._queue.append(request)
            self._handles.add(handle)
            self._gauges()
            self._cond.notify()
        return handle

    def drain(self, grace_s: float) -> None:
        """Take no new work; what is queued or running may finish for `grace_s` seconds, then fails with EngineClosedError.

        Called on the event loop. The deadline is kept by a loop timer, not the worker, so a request is answered
        on time even while the worker is inside a long step. A second call can only bring the deadline forward.
        """
        if self._loop is None:
            raise EngineClosedError("the engine has not been started; nothing to drain")
        with self._cond:
            self._closing = True
            self._cond.notify()
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
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._fail_handles(lambda: EngineClosedError(
            "the service is shutting down and could not finish this request within its shutdown grace period; "
            "retry it (another replica will answer)"
        ))

    def _fail_handles(self, error: Callable[[], BaseException]) -> None:
        """Fail every handle that has no answer yet (on the event loop)."""
        for handle in list(self._handles):
            handle._fail(error())

    # -- cancellation ---------------------------------------------------------------------
    def _cancelled(self, handle: GenerationHandle) -> None:
        with self._cond:
            for request in self._queue:
                if request.handle is handle:
                    # A queued request never reached the model: free its queue slot right away.
                    self._queue.remove(request)
                    self._gauges()
                    request.finish_reason = "cancelled"
                    self._deliver([], [request])
                    return
            self._cond.notify()  # running: the worker drops the row at its next step

    # -- worker thread --------------------------------------------------------------------
    def _run(self) -> None:
        try:
            with torch.inference_mode():
                while self._next_work():
                    if self._prefill is not None:
                        self._prefill_step()
                    if self._rows:
                        self._decode_step()
        except BaseException as exc:  # noqa: BLE001 - a dead worker must fail every waiter and say why, not hang them
            self._die(exc)

    def _next_work(self) -> bool:
        """Sleep until there is work; admit from the queue when no group is being prefilled. False: exit."""
        with self._cond:
            while True:
                if self._stopped:
                    self._abandon()
                    return False
                self._expire_queued(time.perf_counter())
                if self._rows or self._prefill is not None or self._queue:
                    break
                if self._closing:
                    return False
                self._cond.wait()
            if self._prefill is None and self._queue and (self.continuous or not self._rows):
                self._admit()
            return True

    def _admit(self) -> None:
        """Start prefilling the FIFO head of the queue, as much of it as the scheduler lets in (under the lock).

        When nothing is running the worker first waits up to batch_wait_ms for more arrivals, so that a
        burst is prefilled as one group rather than one forward pass each.
        """
        if not self._rows and self.batch_wait_s > 0:
            until = time.perf_counter() + self.batch_wait_s
            while len(self._queue) < self.max_batch_size and not self._closing and not self._stopped:
                left = until - time.perf_counter()
                if left <= 0:
                    break
                self._cond.wait(left)
        waiting = list(islice(self._queue, max(0, self.max_batch_size - len(self._rows))))
        count = self.scheduler.admit([_demand(r) for r in self._rows], [_demand(r) for r in waiting])
        if count:
            group = [self._queue.popleft() for _ in range(count)]
            hits = [self.prefix_cache.lookup(r.context_ids, r.prefix_scope) for r in group]
            self._prefill = PrefillJob(group, pad_id=self.pad_id, device=self.device,
                                       chunk_tokens=self.prefill_chunk_tokens, hits=hits)
            for row, cached in zip(group, self._prefill.cached_tokens):
                if not row.generated:  # a preempted row's usage keeps what its first prefill found
                    row.cached_tokens = min(cached, len(row.prompt_ids))
            self._gauges()

    def _expire_queued(self, now: float) -> None:
        expired = [r for r in self._queue if r.deadline is not None and now >= r.deadline]
        for request in expired:
            self._queue.remove(request)
            request.finish_reason = "timeout"
        if expired:
            self._gauges()
            self._deliver([], expired)

    def _abandon(self) -> None:
        """The drain deadline passed (its timer already failed every handle): drop all work (under the lock)."""
        self._queue.clear()
        self._rows, self._batch, self._prefill = [], None, None
        self._gauges()

    def _prefill_step(self) -> None:
        """Prefill the next chunk of the admitted group; once it is all in, join the batch and sample first tokens."""
        job = self._prefill
        assert job is not None
        if all(r.handle.cancelled for r in job.rows):
            self._prefill = None  # every client went away: stop reading their prompts
            for row in job.rows:
                row.finish_reason = "cancelled"
            self._deliver([], job.rows)
            with self._cond:
                self._gauges()
            return
        try:
            logits = job.step(self.model)
            if logits is None:
                return
            for i, row in enumerate(job.rows):  # before the merge, which takes the group's cache apart
                self.prefix_cache.store(row.context_ids, job.row_kv(i), row.prefix_scope)
            fresh = job.batch()
            self._batch = fresh if self._batch is None else merge(self._batch, fresh)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            self._prefill_out_of_memory(job, exc)
            return
        self._prefill = None
        if self.metrics is not None:
            self.metrics.prompt_tokens.inc(sum(len(r.prompt_ids) for r in job.rows if not r.generated))
            self.metrics.prompt_tokens_cached.inc(sum(r.cached_tokens for r in job.rows if not r.generated))
        first = len(self._rows)
        self._rows.extend(job.rows)
        self._advance(logits, first_row=first)

    def _decode_step(self) -> None:
        assert self._batch is not None
        if self.metrics is not None:
            self.metrics.batch_size.observe(len(self._rows))
        try:
            logits, self._batch = decode(self.model, self._batch, self._rows, self.device)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            truncate(self._batch)  # layers the failed step already grew get their old width back
            self._decode_out_of_memory(exc)
            return
        if self.budget.step_ok() and self.metrics is not None:
            self.metrics.kv_budget_tokens.set(self.budget.tokens)
        self._advance(logits)

    # -- out of memory: split, retry, shrink the budget ------------------------------------
    def _prefill_out_of_memory(self, job: PrefillJob, exc: BaseException) -> None:
        """Retry the first half of the group now and queue the rest; a lone row waits for room or fails."""
        self._prefill = None
        del job.cache
        self._out_of_memory("prefill", exc, self._cache_tokens() + len(job.rows) * job.width)
        if len(job.rows) > 1:
            half = len(job.rows) // 2
            self._requeue(job.rows[half:])
            self._prefill = PrefillJob(job.rows[:half], pad_id=self.pad_id, device=self.device,
                                       chunk_tokens=self.prefill_chunk_tokens)
        elif self._rows:
            self._requeue(job.rows)  # admitted again once the running rows leave room under the smaller budget
        else:
            self._fail_rows(job.rows)

    def _decode_out_of_memory(self, exc: BaseException) -> None:
        """Make room for the running rows: first drop a group still being prefilled (it goes back to the queue),
        else keep the older half of the batch and send the newer half back (recomputed when readmitted)."""
        job = self._prefill
        self._out_of_memory("decode", exc, self._cache_tokens() + len(self._rows) + (0 if job is None else job.cache_tokens))
        if job is not None:
            self._prefill = None
            self._requeue(job.rows)
            return
        if len(self._rows) == 1:
            alone, self._rows, self._batch = self._rows, [], None
            self._fail_rows(alone)
            return
        assert self._batch is not None
        half = len(self._rows) // 2
        preempted = self._rows[half:]
        self._rows = self._rows[:half]
        self._batch = select(self._batch, list(range(half)))
        self._requeue(preempted)

    def _cache_tokens(self) -> int:
        """Tokens the running batch's cache holds, padding included (rows x width)."""
        return 0 if self._batch is None else self._batch.rows * self._batch.length

    def _out_of_memory(self, phase: str, exc: BaseException, tokens: int) -> None:
        """Count and log an out-of-memory error at a cache of `tokens`, and admit less from now on."""
        self.prefix_cache.clear()  # stored prompt heads are the memory easiest to give back
        release_cached_memory(self.device)
        budget = self.budget.shrink(tokens)
        if self.metrics is not None:
            self.metrics.engine_oom.labels(phase=phase).inc()
            self.metrics.kv_budget_tokens.set(budget)
        log.warning(
            "out of memory; splitting the batch and lowering the KV budget",
            extra={"phase": phase, "kv_tokens": tokens, "kv_budget_tokens": budget, "error_type": type(exc).__name__},
        )

    def _requeue(self, rows: list[Row]) -> None:
        """Put rows back at the head of the queue, in order: they were admitted before anything queued now."""
        with self._cond:
            self._queue.extendleft(reversed(rows))
            self._gauges()

    def _fail_rows(self, rows: list[Row]) -> None:
        handles = [row.handle for row in rows]

        def on_loop() -> None:
            for handle in handles:
                handle._fail(InsufficientMemoryError(
                    "this request does not fit in the model server's memory even alone; shorten the prompt or max_tokens"
                ))

        self._on_loop(on_loop)
        with self._cond:
            self._gauges()

    def _advance(self, logits: torch.Tensor, first_row: int = 0) -> None:
        """One step's bookkeeping: sample rows[first_row:], end rows that are done, deliver, shrink the batch."""
        now = time.perf_counter()
        deltas = self._append_tokens(logits, self._rows[first_row:], now)
        self._sweep(now)
        finished = [r for r in self._rows if r.finish_reason is not None]
        deltas.extend(self._flush_tails(finished))
        self._deliver(deltas, finished)
        if finished:
            self._drop_finished(finished, now)

    def _append_tokens(self, logits: torch.Tensor, rows: list[Row], now: float) -> list[tuple[GenerationHandle, str]]:
        """Sample one token per row, detokenize it and collect the text each row may stream now.

        A row whose own sampling or detokenization raises is finished with its error; the others go on."""
        sampled = sample(logits, rows, self._sampler)
        deltas: list[tuple[GenerationHandle, str]] = []
        for i, (row, token) in enumerate(zip(rows, sampled.tokens)):
            if row.first_token_at is None:
                row.first_token_at = now
                if self.metrics is not None:
                    self.metrics.time_to_first_token.observe(now - row.submitted_at)
            failure = sampled.failures.get(i)
            if failure is None:
                try:
                    delta = append_token(row, token, self.tokenizer, self.eos_ids)
                except Exception as exc:  # noqa: BLE001 - this row's text or stop handling: its failure alone
                    failure = exc
                else:
                    if delta:
                        deltas.append((row.handle, delta))
                    continue
            self._fail_request(row, failure)
        if self.metrics is not None:
            self.metrics.generated_tokens.inc(len(rows))
        return deltas

    def _fail_request(self, row: Row, exc: Exception) -> None:
        """End one row on an error of its own; it is answered with RequestFailedError when the step delivers."""
        stage = getattr(exc, "stage", "detokenization")
        cause = exc.__cause__ if exc.__cause__ is not None else exc
        row.error = RequestFailedError(f"this request's generation failed in its {stage}; the service is healthy")
        row.finish_reason = "error"
        log.error(
            "one request's step failed; it alone is answered with an error",
            extra={"stage": stage, "error_type": type(cause).__name__, "error": str(exc)[:MAX_FAILURE_CHARS]},
            exc_info=cause,
        )
        if self.metrics is not None:
            self.metrics.request_failures.labels(stage=stage).inc()

    def _sweep(self, now: float) -> None:
        """Cancellation and deadlines apply to every running row, not only the ones just sampled."""
        for row in self._rows:
            if row.finish_reason is None:
                if row.handle.cancelled:
                    row.finish_reason = "cancelled"
                elif row.deadline is not None and now >= row.deadline:
                    row.finish_reason = "timeout"

    @staticmethod
    def _flush_tails(finished: list[Row]) -> list[tuple[GenerationHandle, str]]:
        """Text held back as a possible stop-string prefix goes out once the row is done (unless it was cancelled)."""
        tails = []
        for row in finished:
            tail = row.text[row.emitted:]
            if tail and row.finish_reason not in ("cancelled", "error"):
                tails.append((row.handle, tail))
                row.emitted = len(row.text)
        return tails

    def _drop_finished(self, finished: list[Row], now: float) -> None:
        keep = [i for i, r in enumerate(self._rows) if r.finish_reason is None]
        self._rows = [self._rows[i] for i in keep]
        self._batch = select(self._batch, keep) if keep and self._batch is not None else None
        with self._cond:
            self._gauges()
        for row in finished:
            self._request_s = 0.9 * self._request_s + 0.1 * (now - row.submitted_at)
            if self.metrics is not None and row.first_token_at is not None and len(row.generated) > 1:
                self.metrics.time_per_output_token.observe((now - row.first_token_at) / (len(row.generated) - 1))

    def _deliver(self, deltas: list[tuple[GenerationHandle, str]], finished: Iterable[Row]) -> None:
        completions = [(r.handle, self._completion(r)) for r in finished if r.error is None]
        errors = [(r.handle, r.error) for r in finished if r.error is not None]
        if not deltas and not completions and not errors:
            return

        def on_loop() -> None:
            for handle, delta in deltas:
                handle._push(delta)
            for handle, completion in completions:
                handle._finish(completion)
            for handle, error in errors:
                handle._fail(error)

        self._on_loop(on_loop)

    def _on_loop(self, callback: Callable[[], None]) -> None:
        """Run `callback` on the event loop (from any thread)."""
        if self._loop is None:
            return
        try:
            self._loop.call_soon_threadsafe(callback)
        except RuntimeError:
            pass  # the loop is closed: nobody is waiting any more

    def _completion(self, request: Row) -> Completion:
        return Completion(
            text=request.text,
            finish_reason=request.finish_reason or "cancelled",
            prompt_tokens=len(request.prompt_ids),
            completion_tokens=len(request.generated),
            time_to_first_token_s=None if request.first_token_at is None else request.first_token_at - request.submitted_at,
            cached_tokens=request.cached_tokens,
        )

    def _gauges(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(len(self._queue))
            self.metrics.inflight.set(len(self._queue) + self.active)

    def _die(self, exc: BaseException) -> None:
        """The worker is ending on an exception: record why, count it, and fail every request it held."""
        kind = type(exc).__name__
        self._failure = f"{kind}: {str(exc)[:MAX_FAILURE_CHARS]}"
        with self._cond:
            self._closing = True
            self._queue.clear()
            self._rows, self._batch, self._prefill = [], None, None
            self._gauges()
        # The traceback names code, never request text; prompts are not part of any exception the model raises.
        log.error(
            "generation engine failed; every request it held fails and /healthz reports it",
            extra={"error_type": kind, "error": self._failure},
            exc_info=exc,
        )
        if self.metrics is not None:
            self.metrics.engine_failures.labels(reason=kind).inc()
        failure = self._failure
        self._on_loop(lambda: self._fail_handles(
            lambda: EngineFailedError(f"the generation engine failed ({failure}); this replica must restart")
        ))


def _demand(row: Row) -> Demand:
    generated = len(row.generated)
    return Demand(held=len(row.prompt_ids) + generated, remaining=max(0, row.max_new - generated))


def _eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    ids: set[int] = set()
    config = getattr(model, "generation_config", None)
    for source in (getattr(config, "eos_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, (list, tuple)):
            ids.update(int(i) for i in source)
    return frozenset(ids)


def _pad_id(tokenizer: Any, eos_ids: frozenset[int]) -> int:
    pad = getattr(tokenizer, "pad_token_id", None)
    if isinstance(pad, int):
        return pad
    return min(eos_ids) if eos_ids else 0
