"""The engine core: one step of continuous batching over the model, and what it does when memory runs out.

`step(admitted)` takes the scheduler's decision (the requests admitted from the queue's head, which start
their prefill) and runs one forward pass: the next chunk of the group being prefilled
(`app.inference.model_runner`), or one decode token for every running request, the two taking turns so
that running requests keep streaming while a long prompt is read. It returns what came of the pass: text
deltas, finished requests, and requests sent back to the queue. It runs on the worker thread alone and
touches no lock: the engine hands its `StepOutput` to the queue and the output sink.

Out of memory in a prefill or a decode step is handled here: the batch is split (half the group retried, or
the newer half of the running requests sent back to the queue and recomputed when readmitted), the KV budget
shrinks, `clawbot_engine_oom_total` counts it, and a request that cannot fit even alone fails with
InsufficientMemoryError. An exception in one request's own work (its sampling, its grammar, its detokenization
and stop handling) fails that request alone with RequestFailedError (`clawbot_request_failures_total`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from app.inference.kv_batch import KVBatch, merge, select, truncate
from app.inference.memory import is_out_of_memory, release_cached_memory
from app.inference.model_runner import PrefillJob, decode
from app.inference.output_sink import Delta
from app.inference.prefix_cache import PrefixCache
from app.inference.request_state import RequestState
from app.inference.requests import InsufficientMemoryError, RequestFailedError
from app.inference.sampler import sample
from app.inference.scheduler import Demand, KVBudget
from app.inference.shared_head import shared_heads
from app.inference.stops import append_token

if TYPE_CHECKING:
    from app.observability.metrics import Metrics

log = logging.getLogger("clawbot.engine")
# An exception's message goes into the log and /healthz; bounded, since some quote tensors at length.
MAX_FAILURE_CHARS = 500


@dataclass
class StepOutput:
    """What one step produced: text to stream, requests to answer, requests to put back at the queue's head."""

    deltas: list[Delta] = field(default_factory=list)
    finished: list[RequestState] = field(default_factory=list)
    requeued: list[RequestState] = field(default_factory=list)

    def requeue(self, requests: list[RequestState]) -> None:
        # Sent back later in a step means admitted earlier: it goes in front of what was sent back before.
        self.requeued[:0] = requests


class EngineCore:
    """The running batch, the group being prefilled, and the step that advances both; see the module docstring."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        device: torch.device,
        budget: KVBudget,
        prefix_cache: PrefixCache,
        prefill_chunk_tokens: int,
        metrics: Metrics | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.budget = budget
        self.prefix_cache = prefix_cache
        self.prefill_chunk_tokens = prefill_chunk_tokens
        self.metrics = metrics
        self.eos_ids = eos_ids_of(model, tokenizer)
        self.pad_id = pad_id_of(tokenizer, self.eos_ids)
        self._running: list[RequestState] = []  # the running batch, in cache row order
        self._batch: KVBatch | None = None
        self._prefill: PrefillJob | None = None  # the admitted group being read, not yet in the batch
        self._decode_due = False  # a prefill pass ran: the running requests decode before anything else happens
        # Generators live on the model's device: torch.multinomial refuses a generator from another device.
        self._sampler = torch.Generator(device=device)
        self._sampler.seed()

    @property
    def running(self) -> list[RequestState]:
        return self._running

    @property
    def active(self) -> int:
        job = self._prefill  # read once: the worker may clear it meanwhile (read from the event loop too)
        return len(self._running) + (len(job.rows) if job is not None else 0)

    @property
    def busy(self) -> bool:
        return bool(self._running) or self._prefill is not None

    @property
    def admits(self) -> bool:
        """Whether the next step may take a new group: none is being prefilled, and no decode pass is due."""
        return self._prefill is None and not self._decode_due

    def demands(self) -> list[Demand]:
        return [demand_of(r) for r in self._running]

    def reset(self) -> None:
        """Drop every request and the cache (the worker is ending; their handles are answered elsewhere)."""
        self._running, self._batch, self._prefill, self._decode_due = [], None, None, False

    def step(self, admitted: list[RequestState]) -> StepOutput:
        """Start prefilling `admitted` (given only when `admits`), then run one forward pass; see the module docstring."""
        out = StepOutput()
        if admitted:
            self._start_prefill(admitted)
        if self._prefill is not None and not self._decode_due:
            self._prefill_step(out)
            self._decode_due = bool(self._running)
        elif self._running:
            self._decode_step(out)
            self._decode_due = False
        return out

    # -- prefill and decode ------------------------------------------------------------------
    def _start_prefill(self, group: list[RequestState]) -> None:
        hits = [self.prefix_cache.lookup(r.context_ids, r.prefix_scope) for r in group]
        shared = None
        if self.prefix_cache.enabled and not any(hits):
            try:
                shared = shared_heads(self.model, group, self.device)  # a head the group shares, read once
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                release_cached_memory(self.device)  # the plain prefill below splits the group if it must
        self._prefill = PrefillJob(
            group,
            pad_id=self.pad_id,
            device=self.device,
            chunk_tokens=self.prefill_chunk_tokens,
            hits=shared if shared is not None else hits,
        )
        for request, cached in zip(group, self._prefill.cached_tokens):
            if not request.generated:  # a preempted request's usage keeps what its first prefill found
                request.cached_tokens = 0 if shared is not None else min(cached, len(request.prompt_ids))
        self._note_prompt_read(self._prefill)

    def _prefill_step(self, out: StepOutput) -> None:
        """Prefill the next chunk of the admitted group; once it is all in, join the batch and sample first tokens."""
        job = self._prefill
        assert job is not None
        if all(r.handle.cancelled or past_deadline(r, time.perf_counter()) for r in job.rows):
            self._prefill = None  # every client went away, or ran out of time: stop reading their prompts
            for request in job.rows:
                request.finish_reason = "cancelled" if request.handle.cancelled else "timeout"
            out.finished.extend(job.rows)
            return
        try:
            logits = job.step(self.model)
            self._note_prompt_read(job)
            if logits is None:
                return
            for i, request in enumerate(job.rows):  # before the merge, which takes the group's cache apart
                self.prefix_cache.store(request.context_ids, job.row_kv(i), request.prefix_scope)
            fresh = job.batch()
            self._batch = fresh if self._batch is None else merge(self._batch, fresh)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            self._prefill_out_of_memory(job, exc, out)
            return
        self._prefill = None
        if self.metrics is not None:
            self.metrics.prompt_tokens.inc(sum(len(r.prompt_ids) for r in job.rows if not r.generated))
            self.metrics.prompt_tokens_cached.inc(sum(r.cached_tokens for r in job.rows if not r.generated))
        now = time.perf_counter()
        for request in job.rows:
            if past_deadline(request, now):
                request.finish_reason = "timeout"  # its deadline passed while its prompt was read: no first token
        first = len(self._running)
        self._running.extend(job.rows)
        self._advance(logits, out, first_row=first)

    @staticmethod
    def _note_prompt_read(job: PrefillJob) -> None:
        for i, request in enumerate(job.rows):
            request.prompt_read = max(request.prompt_read, min(len(request.prompt_ids), job.context_read(i)))

    def _decode_step(self, out: StepOutput) -> None:
        assert self._batch is not None
        if self.metrics is not None:
            self.metrics.batch_size.observe(len(self._running))
        try:
            logits, self._batch = decode(self.model, self._batch, self._running, self.device)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            truncate(self._batch)  # layers the failed step already grew get their old width back
            self._decode_out_of_memory(exc, out)
            return
        if self.budget.step_ok() and self.metrics is not None:
            self.metrics.kv_budget_tokens.set(self.budget.tokens)
        self._advance(logits, out)

    # -- out of memory: split, retry, shrink the budget ------------------------------------
    def _prefill_out_of_memory(self, job: PrefillJob, exc: BaseException, out: StepOutput) -> None:
        """Retry the first half of the group now and queue the rest; a lone request waits for room or fails."""
        self._prefill = None
        del job.cache
        self._out_of_memory("prefill", exc, self._cache_tokens() + len(job.rows) * job.width)
        if len(job.rows) > 1:
            half = len(job.rows) // 2
            out.requeue(job.rows[half:])
            self._prefill = PrefillJob(
                job.rows[:half], pad_id=self.pad_id, device=self.device, chunk_tokens=self.prefill_chunk_tokens
            )
        elif self._running:
            out.requeue(job.rows)  # admitted again once the running requests leave room under the smaller budget
        else:
            self._fail_alone(job.rows, out)

    def _decode_out_of_memory(self, exc: BaseException, out: StepOutput) -> None:
        """Make room for the running requests: first drop a group still being prefilled (it goes back to the queue),
        else keep the older half of the batch and send the newer half back (recomputed when readmitted)."""
        job = self._prefill
        self._out_of_memory(
            "decode", exc, self._cache_tokens() + len(self._running) + (0 if job is None else job.cache_tokens)
        )
        if job is not None:
            self._prefill = None
            out.requeue(job.rows)
            return
        if len(self._running) == 1:
            alone, self._running, self._batch = self._running, [], None
            self._fail_alone(alone, out)
            return
        assert self._batch is not None
        half = len(self._running) // 2
        preempted = self._running[half:]
        self._running = self._running[:half]
        self._batch = select(self._batch, list(range(half)))
        out.requeue(preempted)

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

    @staticmethod
    def _fail_alone(requests: list[RequestState], out: StepOutput) -> None:
        for request in requests:
            request.finish_reason = "error"
            request.error = InsufficientMemoryError(
                "this request does not fit in the model server's memory even alone; shorten the prompt or max_tokens"
            )
        out.finished.extend(requests)

    # -- after the forward pass: tokens, stops, deadlines ------------------------------------
    def _advance(self, logits: torch.Tensor, out: StepOutput, first_row: int = 0) -> None:
        """One step's bookkeeping: sample running[first_row:], end requests that are done, shrink the batch."""
        now = time.perf_counter()
        fresh = self._running[first_row:]
        live = [i for i, r in enumerate(fresh) if r.finish_reason is None]
        if live:
            out.deltas.extend(
                self._append_tokens(logits if len(live) == len(fresh) else logits[live], [fresh[i] for i in live], now)
            )
        sweep(self._running, now)
        finished = [r for r in self._running if r.finish_reason is not None]
        out.deltas.extend(flush_tails(finished))
        out.finished.extend(finished)
        if finished:
            self._drop_finished(finished, now)

    def _append_tokens(self, logits: torch.Tensor, requests: list[RequestState], now: float) -> list[Delta]:
        """Sample one token per request, detokenize it and collect the text each may stream now.

        A request whose own sampling or detokenization raises is finished with its error; the others go on."""
        sampled = sample(logits, requests, self._sampler)
        deltas: list[Delta] = []
        for i, (request, token) in enumerate(zip(requests, sampled.tokens)):
            if request.first_token_at is None:
                request.first_token_at = now
                if self.metrics is not None:
                    self.metrics.time_to_first_token.observe(now - request.submitted_at)
            failure = sampled.failures.get(i)
            if failure is None:
                try:
                    delta = append_token(request, token, self.tokenizer, self.eos_ids)
                except Exception as exc:
                    failure = exc
                else:
                    if delta:
                        deltas.append((request.handle, delta))
                    continue
            fail_request(request, failure, self.metrics)
        if self.metrics is not None:
            self.metrics.generated_tokens.inc(len(requests))
        return deltas

    def _drop_finished(self, finished: list[RequestState], now: float) -> None:
        keep = [i for i, r in enumerate(self._running) if r.finish_reason is None]
        self._running = [self._running[i] for i in keep]
        self._batch = select(self._batch, keep) if keep and self._batch is not None else None
        for request in finished:
            if self.metrics is not None and request.first_token_at is not None and len(request.generated) > 1:
                self.metrics.time_per_output_token.observe(
                    (now - request.first_token_at) / (len(request.generated) - 1)
                )


def fail_request(request: RequestState, exc: Exception, metrics: Metrics | None) -> None:
    """End one request on an error of its own; it is answered with RequestFailedError when the step delivers."""
    stage = getattr(exc, "stage", "detokenization")
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    request.error = RequestFailedError(f"this request's generation failed in its {stage}; the service is healthy")
    request.finish_reason = "error"
    log.error(
        "one request's step failed; it alone is answered with an error",
        extra={"stage": stage, "error_type": type(cause).__name__, "error": str(exc)[:MAX_FAILURE_CHARS]},
        exc_info=cause,
    )
    if metrics is not None:
        metrics.request_failures.labels(stage=stage).inc()


def sweep(running: list[RequestState], now: float) -> None:
    """Cancellation and deadlines apply to every running request, not only the ones just sampled."""
    for request in running:
        if request.finish_reason is None:
            if request.handle.cancelled:
                request.finish_reason = "cancelled"
            elif past_deadline(request, now):
                request.finish_reason = "timeout"


def past_deadline(request: RequestState, now: float) -> bool:
    return request.deadline is not None and now >= request.deadline


def flush_tails(finished: list[RequestState]) -> list[Delta]:
    """Text held back as a possible stop-string prefix goes out once the request is done (unless it was cancelled)."""
    tails = []
    for request in finished:
        tail = request.text[request.emitted :]
        if tail and request.finish_reason not in ("cancelled", "error"):
            tails.append((request.handle, tail))
            request.emitted = len(request.text)
    return tails


def demand_of(request: RequestState) -> Demand:
    generated = len(request.generated)
    return Demand(held=len(request.prompt_ids) + generated, remaining=max(0, request.max_new - generated))


def eos_ids_of(model: Any, tokenizer: Any) -> frozenset[int]:
    ids: set[int] = set()
    config = getattr(model, "generation_config", None)
    for source in (getattr(config, "eos_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, (list, tuple)):
            ids.update(int(i) for i in source)
    return frozenset(ids)


def pad_id_of(tokenizer: Any, eos_ids: frozenset[int]) -> int:
    pad = getattr(tokenizer, "pad_token_id", None)
    if isinstance(pad, int):
        return pad
    return min(eos_ids) if eos_ids else 0
