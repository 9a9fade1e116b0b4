"""The engine under faults and pressure: a dying worker, out-of-memory errors, a KV budget, long prompts, draining.

Every test drives the tiny random Llama; "the same greedy output" is always checked against
`model.generate` on the prompt alone.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import pytest
from transformers import LlamaForCausalLM

from app.inference.engine import (
    Completion,
    EngineClosedError,
    EngineFailedError,
    InsufficientMemoryError,
    SamplingParams,
)
from app.observability.metrics import build_metrics
from bench.waiting import wait_until_async
from tests.app.inference.toy import Spy, engine_for, oom_above, reference, run, tok

SECRET_PROMPT = tok.encode("my secret prompt text")
LONG_PROMPT = tok.encode("The lighthouse keeper counted the waves. " * 3)
PROMPTS = [tok.encode(p) for p in ("Hello there", "A", "The capital of France is", "xyz" * 7, "??", "one more prompt")]


def greedy(n: int) -> SamplingParams:
    return SamplingParams(max_tokens=n, ignore_eos=True)


def test_a_dead_worker_fails_every_waiter_says_why_and_refuses_new_work(
    tiny: LlamaForCausalLM, caplog: pytest.LogCaptureFixture
) -> None:
    calls = []

    def crash_on_third_pass(rows: int, columns: int) -> BaseException | None:
        calls.append(rows)
        return ValueError("index 9 is out of bounds for dimension 0") if len(calls) == 3 else None

    metrics = build_metrics()

    async def go() -> tuple[list[BaseException | Completion], BaseException, str | None]:
        engine = engine_for(Spy(tiny, fail=crash_on_third_pass), max_batch_size=1, metrics=metrics)
        await engine.start()
        handles = [engine.submit(SECRET_PROMPT, greedy(50)) for _ in range(3)]  # one running, two queued
        results = list(await asyncio.gather(*(h.result() for h in handles), return_exceptions=True))
        with pytest.raises(EngineFailedError) as refused:
            engine.submit(PROMPTS[0], greedy(1))
        failure = engine.failure
        await engine.shutdown(grace_s=1)
        return results, refused.value, failure

    with caplog.at_level(logging.ERROR, logger="clawbot.engine"):
        results, refused, failure = run(go)
    assert all(isinstance(r, EngineFailedError) for r in results), results
    assert failure == "ValueError: index 9 is out of bounds for dimension 0"
    assert "must restart" in str(refused)
    assert metrics.registry.get_sample_value("clawbot_engine_failures_total", {"reason": "ValueError"}) == 1
    assert metrics.registry.get_sample_value("clawbot_inflight_requests") == 0
    record = next(r for r in caplog.records if r.name == "clawbot.engine")
    assert record.error_type == "ValueError"  # type: ignore[attr-defined]
    assert "my secret prompt" not in caplog.text


def test_out_of_memory_in_prefill_splits_the_group_and_every_request_completes_unchanged(
    tiny: LlamaForCausalLM,
) -> None:
    lengths = [12, 3, 20, 7, 15, 9]
    expected = [tok.decode(reference(tiny, p, n)) for p, n in zip(PROMPTS, lengths)]
    spy = Spy(tiny, fail=oom_above(rows=2))
    metrics = build_metrics()

    async def go() -> tuple[list[Completion], int, int]:
        engine = engine_for(spy, max_batch_size=8, batch_wait_ms=200, metrics=metrics)
        await engine.start()
        handles = [engine.submit(p, greedy(n)) for p, n in zip(PROMPTS, lengths)]  # one burst: one group of 6
        results = [await h.result() for h in handles]
        assert engine.failure is None
        await engine.shutdown()
        return results, engine.budget.tokens, engine.budget.initial

    results, budget, initial = run(go)
    assert [r.text for r in results] == expected
    assert spy.failures >= 2  # 6 rows failed, then 3, then a single row ran
    assert max(spy.batch_sizes) <= 2
    assert budget < initial
    counted = sum(
        metrics.registry.get_sample_value("clawbot_engine_oom_total", {"phase": p}) or 0 for p in ("prefill", "decode")
    )
    assert counted == spy.failures
    assert metrics.registry.get_sample_value("clawbot_engine_oom_total", {"phase": "prefill"}) >= 2
    assert metrics.registry.get_sample_value("clawbot_kv_budget_tokens") == budget


def test_out_of_memory_in_decode_sends_newer_rows_back_and_they_resume_unchanged(tiny: LlamaForCausalLM) -> None:
    lengths = [30, 25, 28, 22]
    expected = [tok.decode(reference(tiny, p, n)) for p, n in zip(PROMPTS, lengths)]
    spy = Spy(tiny, fail=oom_above(rows=2, columns=1))  # decode steps (one input column) over 2 rows fail
    metrics = build_metrics()

    async def go() -> list[Completion]:
        engine = engine_for(spy, max_batch_size=8, metrics=metrics)
        await engine.start()
        handles = []
        for prompt, n in zip(PROMPTS, lengths):
            handles.append(engine.submit(prompt, greedy(n)))
            async for _ in handles[-1]:
                break  # it is decoding: the next one joins a running batch
        results = [await h.result() for h in handles]
        await engine.shutdown()
        return results

    results = run(go)
    assert [r.text for r in results] == expected
    assert [r.completion_tokens for r in results] == lengths
    assert metrics.registry.get_sample_value("clawbot_engine_oom_total", {"phase": "decode"}) >= 1
    assert max(rows for rows, columns, _ in spy.passes if columns == 1) <= 2


def test_a_request_too_big_to_fit_alone_fails_cleanly_and_the_engine_keeps_serving(tiny: LlamaForCausalLM) -> None:
    huge = tok.encode("x" * 200)
    spy = Spy(tiny, fail=lambda rows, columns: oom_above(0)(rows, columns) if columns >= 200 else None)

    async def go() -> tuple[BaseException, Completion]:
        engine = engine_for(spy)
        await engine.start()
        with pytest.raises(InsufficientMemoryError) as failed:
            await engine.submit(huge, greedy(4)).result()
        after = await engine.submit(PROMPTS[0], greedy(4)).result()
        assert engine.failure is None
        await engine.shutdown()
        return failed.value, after

    error, after = run(go)
    assert "shorten the prompt" in str(error)
    assert after.text == tok.decode(reference(tiny, PROMPTS[0], 4))


def test_rows_are_admitted_by_kv_budget_not_only_by_row_count(tiny: LlamaForCausalLM) -> None:
    prompts = [tok.encode("0123456789")] * 6  # 10 tokens + 10 new = 20 tokens each at the end
    spy = Spy(tiny)

    async def go() -> list[Completion]:
        engine = engine_for(spy, max_batch_size=8, kv_cache_tokens=60, batch_wait_ms=200)
        await engine.start()
        handles = [engine.submit(p, greedy(10)) for p in prompts]
        results = [await h.result() for h in handles]
        await engine.shutdown()
        return results

    results = run(go)
    assert all(r.text == tok.decode(reference(tiny, prompts[0], 10)) for r in results)
    assert max(spy.batch_sizes) == 3
    assert all(rows * width <= 60 for rows, _, width in spy.passes)  # the cache never held more than the budget


def short_then_long(spy: Spy, **engine_kwargs: Any) -> tuple[Completion, Completion]:
    """A short request starts decoding (40 tokens), then LONG_PROMPT (8 tokens) joins, read 16 columns at a time."""

    async def go() -> tuple[Completion, Completion]:
        engine = engine_for(spy, prefill_chunk_tokens=16, **engine_kwargs)
        await engine.start()
        short = engine.submit(PROMPTS[1], greedy(40))
        async for _ in short:
            break
        long = engine.submit(LONG_PROMPT, greedy(8))
        results = await short.result(), await long.result()
        await engine.shutdown()
        return results

    return run(go)


def test_a_long_prompt_is_prefilled_in_chunks_while_the_running_row_keeps_decoding(tiny: LlamaForCausalLM) -> None:
    spy = Spy(tiny)
    short, long = short_then_long(spy)
    assert long.text == tok.decode(reference(tiny, LONG_PROMPT, 8))
    assert short.text == tok.decode(reference(tiny, PROMPTS[1], 40))
    prefill_chunks = [columns for rows, columns, _ in spy.passes if columns > 1]
    assert len(prefill_chunks) >= len(LONG_PROMPT) // 16 and max(prefill_chunks) <= 16
    # Between the long prompt's first and last chunk the running row was still decoding.
    kinds = ["prefill" if columns > 1 else "decode" for _, columns, _ in spy.passes]
    first, last = kinds.index("prefill"), len(kinds) - 1 - kinds[::-1].index("prefill")
    assert "decode" in kinds[first:last]


def test_drain_finishes_what_fits_in_the_grace_period_and_fails_the_rest(tiny: LlamaForCausalLM) -> None:
    slow = Spy(tiny, delay_s=0.05)  # 400 tokens would take 20 s

    async def go() -> tuple[Completion, BaseException]:
        engine = engine_for(slow, max_batch_size=2)
        await engine.start()
        quick = engine.submit(PROMPTS[0], greedy(3))
        long = engine.submit(PROMPTS[1], greedy(400))
        async for _ in long:
            break
        engine.drain(grace_s=2.0)
        with pytest.raises(EngineClosedError):
            engine.submit(PROMPTS[0], greedy(1))
        done = await quick.result()
        with pytest.raises(EngineClosedError) as cut:
            await long.result()
        await engine.shutdown()
        return done, cut.value

    done, cut = run(go)
    assert done.finish_reason == "length"
    assert "could not finish this request within its shutdown grace period" in str(cut)


def test_the_drain_deadline_answers_even_while_the_worker_is_stuck_in_a_step(tiny: LlamaForCausalLM) -> None:
    gate = threading.Event()
    stuck = Spy(tiny, gate=gate)

    async def go() -> bool:
        engine = engine_for(stuck)
        await engine.start()
        handle = engine.submit(PROMPTS[0], greedy(5))
        await wait_until_async("the worker to enter its step", stuck.entered.is_set, 60, poll_s=0.01)
        engine.drain(grace_s=0.2)
        with pytest.raises(EngineClosedError):
            await handle.result()
        still_stuck = not gate.is_set()
        gate.set()
        await engine.shutdown()
        return still_stuck

    try:
        assert run(go)  # answered by the deadline while the worker was still inside its pass
    finally:
        gate.set()


def test_out_of_memory_in_decode_while_a_long_prompt_is_read_puts_the_prompt_back_first(tiny: LlamaForCausalLM) -> None:
    metrics = build_metrics()
    failed: list[bool] = []

    def once_mid_prefill(rows: int, columns: int) -> BaseException | None:
        previous = spy.passes[-1] if spy.passes else (0, 0, 0)
        if columns == 1 and previous[1] > 1 and previous[2] < len(LONG_PROMPT) and not failed:
            failed.append(True)  # a decode step right after a chunk of the long prompt, before its last chunk
            return oom_above(0)(rows, columns)
        return None

    spy = Spy(tiny, fail=once_mid_prefill)

    short, long = short_then_long(spy, metrics=metrics)
    assert failed
    assert short.text == tok.decode(reference(tiny, PROMPTS[1], 40))  # the running row never left the batch
    assert long.text == tok.decode(reference(tiny, LONG_PROMPT, 8))
    assert metrics.registry.get_sample_value("clawbot_engine_oom_total", {"phase": "decode"}) == 1
