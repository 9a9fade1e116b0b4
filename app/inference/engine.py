"""The batching engine: a bounded queue and one worker thread that runs continuous batching on the model.

Requests wait in a bounded FIFO queue. A single worker thread (never the event loop)
owns the model: between decode steps it prefills newly admitted requests as one
left-padded group, merges them into the running batch (`app.inference.kv_batch`), runs one
decode step for every row, and drops rows that finished or were cancelled. This is
TGI's `CausalLMBatch` scheme on the ordinary transformers KV cache. Text deltas reach
the asyncio side through `loop.call_soon_threadsafe`, one hop per decode step.

`continuous=False` turns the same machinery into static batching (a batch is only
formed when the previous one has fully finished); `bench/throughput.py` measures both.
"""
from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Iterable

import torch
from transformers import DynamicCache

from app.inference.handle import GenerationHandle
from app.inference.kv_batch import KVBatch, merge, select
from app.inference.requests import FINISH_REASONS, Completion, EngineClosedError, QueueFullError, Row, SamplingParams
from app.inference.sampler import sample
from app.inference.stops import append_token

if TYPE_CHECKING:
    from app.observability.metrics import Metrics

__all__ = [
    "FINISH_REASONS", "Completion", "Engine", "EngineClosedError", "GenerationHandle", "QueueFullError", "SamplingParams",
]


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
        metrics: "Metrics | None" = None,
        continuous: bool = True,
    ) -> None:
        for name, value, lo in (
            ("max_batch_size", max_batch_size, 1),
            ("batch_wait_ms", batch_wait_ms, 0),
            ("max_queue", max_queue, 1),
            ("max_tokens", max_tokens, 1),
            ("context_window", context_window, 2),
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
        self.metrics = metrics
        self.continuous = continuous
        self.eos_ids = _eos_ids(model, tokenizer)
        self.pad_id = _pad_id(tokenizer, self.eos_ids)

        self._cond = threading.Condition()
        self._queue: deque[Row] = deque()
        self._rows: list[Row] = []  # running batch, in cache row order
        self._batch: KVBatch | None = None
        self._closing = False
        self._stopped = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
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
        return len(self._rows)

    def submit(self, prompt_ids: list[int], params: SamplingParams) -> GenerationHandle:
        """Queue a generation. Raises QueueFullError, EngineClosedError, or ValueError for a bad prompt or params."""
        if self._loop is None:
            raise EngineClosedError("the engine has not been started; call `await engine.start()` first")
        params.validate()
        prompt = [int(t) for t in prompt_ids]
        if not prompt:
            raise ValueError("the prompt is empty; at least one token is needed")
        room = self.context_window - len(prompt)
        if room < 1:
            raise ValueError(
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
        )
        if params.temperature > 0 and params.seed is not None:
            request.generator = torch.Generator(device=self.device).manual_seed(params.seed)
        with self._cond:
            if self._closing:
                raise EngineClosedError("the engine is shutting down and takes no new requests")
            if len(self._queue) >= self.max_queue:
                waves = 1 + len(self._queue) // self.max_batch_size
                raise QueueFullError(self.max_queue, max(1, math.ceil(self._request_s * waves)))
            self._queue.append(request)
            self._gauges()
            self._cond.notify()
        return handle

    async def shutdown(self, grace_s: float = 30.0) -> None:
        """Refuse new work, let queued and running requests finish for up to `grace_s`, cancel the rest, join."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread is None:
            return
        await asyncio.to_thread(self._thread.join, grace_s)
        if self._thread.is_alive():
            with self._cond:
                self._stopped = True
                self._cond.notify()
            await asyncio.to_thread(self._thread.join)

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
                while True:
                    admitted = self._next_admissions()
                    if admitted is None:
                        break
                    if admitted:
                        self._prefill(admitted)
                    if self._rows:
                        self._decode_step()
        except BaseException as exc:  # noqa: BLE001 - a dead worker must fail every waiter, not leave them hanging
            self._fail_everything(exc)
            raise

    def _next_admissions(self) -> list[Row] | None:
        """FIFO requests to admit now ([] = just decode); None once the engine is closed and idle.

        When nothing is running the worker sleeps for work, then waits up to batch_wait_ms for more
        arrivals so that a burst is prefilled as one group rather than one forward pass each.
        """
        with self._cond:
            self._expire_queued(time.perf_counter())
            while not self._rows and not self._queue:
                if self._closing or self._stopped:
                    return None
                self._cond.wait()
                self._expire_queued(time.perf_counter())
            if self._stopped:
                self._cancel_all()
                return None
            room = self.max_batch_size - len(self._rows)
            if room <= 0 or not self._queue or (not self.continuous and self._rows):
                return []
            if not self._rows and len(self._queue) < room and self.batch_wait_s > 0:
                until = time.perf_counter() + self.batch_wait_s
                while len(self._queue) < room and not self._closing:
                    left = until - time.perf_counter()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            admitted: list[Row] = []
            while self._queue and len(admitted) < room:
                admitted.append(self._queue.popleft())
            self._gauges(active=len(self._rows) + len(admitted))
            return admitted

    def _expire_queued(self, now: float) -> None:
        expired = [r for r in self._queue if r.deadline is not None and now >= r.deadline]
        for request in expired:
            self._queue.remove(request)
            request.finish_reason = "timeout"
        if expired:
            self._gauges()
            self._deliver([], expired)

    def _cancel_all(self) -> None:
        dropped = list(self._queue) + self._rows
        self._queue.clear()
        self._rows, self._batch = [], None
        for request in dropped:
            request.finish_reason = "cancelled"
        self._gauges()
        self._deliver([], dropped)

    def _prefill(self, group: list[Row]) -> None:
        """Run the admitted prompts as one left-padded forward pass, sample their first token, join the batch."""
        width = max(len(r.prompt_ids) for r in group)
        ids = torch.full((len(group), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(group), width), dtype=torch.long)
        for i, r in enumerate(group):
            ids[i, width - len(r.prompt_ids):] = torch.tensor(r.prompt_ids, dtype=torch.long)
            mask[i, width - len(r.prompt_ids):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        ids, mask, positions = ids.to(self.device), mask.to(self.device), positions.to(self.device)
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=DynamicCache(),
            use_cache=True,
            logits_to_keep=1,
        )
        if self.metrics is not None:
            self.metrics.prompt_tokens.inc(sum(len(r.prompt_ids) for r in group))
        fresh = KVBatch(cache=out.past_key_values, attention_mask=mask)
        self._batch = fresh if self._batch is None else merge([self._batch, fresh])
        self._rows.extend(group)
        self._advance(out.logits[:, -1, :], first_row=len(self._rows) - len(group))

    def _decode_step(self) -> None:
        assert self._batch is not None
        batch = self._batch
        rows = self._rows
        last = torch.tensor([[r.generated[-1]] for r in rows], dtype=torch.long, device=self.device)
        positions = torch.tensor([[r.position] for r in rows], dtype=torch.long, device=self.device)
        mask = torch.cat([batch.attention_mask, batch.attention_mask.new_ones((len(rows), 1))], dim=1)
        if self.metrics is not None:
            self.metrics.batch_size.observe(len(rows))
        out = self.model(
            input_ids=last,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=batch.cache,
            use_cache=True,
        )
        self._batch = KVBatch(cache=out.past_key_values, attention_mask=mask)
        self._advance(out.logits[:, -1, :])

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
        """Sample one token per row, detokenize it and collect the text each row may stream now."""
        tokens = sample(logits, rows, self._sampler)
        deltas: list[tuple[GenerationHandle, str]] = []
        for row, token in zip(rows, tokens):
            if row.first_token_at is None:
                row.first_token_at = now
                if self.metrics is not None:
                    self.metrics.time_to_first_token.observe(now - row.submitted_at)
            delta = append_token(row, token, self.tokenizer, self.eos_ids)
            if delta:
                deltas.append((row.handle, delta))
        if self.metrics is not None:
            self.metrics.generated_tokens.inc(len(rows))
        return deltas

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
            if tail and row.finish_reason != "cancelled":
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
        completions = [(r.handle, self._completion(r)) for r in finished]
        if not deltas and not completions:
            return

        def on_loop() -> None:
            for handle, delta in deltas:
                handle._push(delta)
            for handle, completion in completions:
                handle._finish(completion)

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
        )

    def _gauges(self, active: int | None = None) -> None:
        if self.metrics is not None:
            running = len(self._rows) if active is None else active
            self.metrics.queue_depth.set(len(self._queue))
            self.metrics.inflight.set(len(self._queue) + running)

    def _fail_everything(self, exc: BaseException) -> None:
        with self._cond:
            self._closing = True
            dropped = list(self._queue) + self._rows
            self._queue.clear()
            self._rows, self._batch = [], None

        def on_loop() -> None:
            for request in dropped:
                request.handle._fail(RuntimeError(f"the generation engine failed: {exc!r}"))

        self._on_loop(on_loop)


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
