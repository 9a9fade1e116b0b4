"""The batching engine: ordering, batch limits, cancellation, caps, stop strings, sampling, the queue bound, shutdown.

Most tests drive a tiny random Llama (2 layers, hidden 64) with a byte-level toy tokenizer,
so they run in seconds; one test checks batched == unbatched greedy output on the real
embedded model through app.inference.loader.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import torch
from transformers import LlamaForCausalLM

from app.inference.engine import Completion, Engine, EngineClosedError, QueueFullError, SamplingParams
from app.inference.requests import Progress
from app.observability.metrics import build_metrics
from tests.app.inference.toy import Spy, collect, engine_for, reference, run, text_script, tok

PROMPTS = [tok.encode(p) for p in ("Hello there", "A", "The capital of France is", "xyz" * 7, "??")]


def test_greedy_batched_output_equals_generate_alone_while_requests_join_and_leave(tiny: LlamaForCausalLM) -> None:
    lengths = [12, 3, 20, 7, 15]
    expected = [reference(tiny, p, n) for p, n in zip(PROMPTS, lengths)]

    async def go() -> list[Completion]:
        engine = engine_for(tiny, max_batch_size=4)
        await engine.start()
        handles = []
        for i, (prompt, n) in enumerate(zip(PROMPTS, lengths)):
            handles.append(engine.submit(prompt, SamplingParams(max_tokens=n, ignore_eos=True)))
            if i in (1, 3):
                await asyncio.sleep(0.05)  # later requests join a batch that is already decoding
        results = [await h.result() for h in handles]
        await engine.shutdown()
        return results

    results = run(go)
    for got, want, n in zip(results, expected, lengths):
        assert got.completion_tokens == n
        assert got.finish_reason == "length"
        assert got.text == tok.decode(want)


def test_admission_is_fifo(tiny: LlamaForCausalLM) -> None:
    async def go() -> list[int]:
        engine = engine_for(tiny, max_batch_size=1)
        await engine.start()
        order: list[int] = []
        handles = [engine.submit(PROMPTS[0], SamplingParams(max_tokens=3, ignore_eos=True)) for _ in range(5)]
        for i, h in enumerate(handles):
            h._result.add_done_callback(lambda _, n=i: order.append(n))  # type: ignore[misc]
        await asyncio.gather(*(h.result() for h in handles))
        await engine.shutdown()
        return order

    assert run(go) == [0, 1, 2, 3, 4]


def test_batch_never_exceeds_max_batch_size_and_metrics_see_it(tiny: LlamaForCausalLM) -> None:
    spy = Spy(tiny)
    metrics = build_metrics()

    async def go() -> list[Completion]:
        engine = engine_for(spy, max_batch_size=3, metrics=metrics, batch_wait_ms=50)
        await engine.start()
        handles = [
            engine.submit(p, SamplingParams(max_tokens=4 + i, ignore_eos=True)) for i, p in enumerate(PROMPTS * 2)
        ]
        results = await asyncio.gather(*(h.result() for h in handles))
        await engine.shutdown()
        return list(results)

    results = run(go)
    assert all(r.finish_reason == "length" for r in results)
    assert max(spy.batch_sizes) == 3
    registry = metrics.registry
    small_steps = registry.get_sample_value("clawbot_batch_size_bucket", {"le": "2.0"})
    assert small_steps is not None and small_steps < (registry.get_sample_value("clawbot_batch_size_count") or 0)
    assert registry.get_sample_value("clawbot_generated_tokens_total") == sum(r.completion_tokens for r in results)
    assert registry.get_sample_value("clawbot_prompt_tokens_total") == sum(len(p) for p in PROMPTS * 2)
    assert registry.get_sample_value("clawbot_time_to_first_token_seconds_count") == len(results)
    # every reply here has 4+ tokens, so each gives one per-token latency observation
    assert registry.get_sample_value("clawbot_time_per_output_token_seconds_count") == len(results)
    assert registry.get_sample_value("clawbot_inflight_requests") == 0
    assert registry.get_sample_value("clawbot_queue_depth") == 0


def test_cancelling_a_running_request_frees_its_slot_for_a_queued_one(tiny: LlamaForCausalLM) -> None:
    async def go() -> tuple[Completion, Completion, int]:
        engine = engine_for(tiny, max_batch_size=1)
        await engine.start()
        long = engine.submit(PROMPTS[0], SamplingParams(max_tokens=400, ignore_eos=True))
        waiting = engine.submit(PROMPTS[1], SamplingParams(max_tokens=5, ignore_eos=True))
        async for _ in long:
            break  # it is running now
        assert engine.queue_depth == 1
        long.cancel()
        done = await waiting.result()
        cancelled = await long.result()
        await engine.shutdown()
        return cancelled, done, engine.active

    cancelled, done, active = run(go)
    assert cancelled.finish_reason == "cancelled"
    assert cancelled.completion_tokens < 400
    assert done.finish_reason == "length" and done.completion_tokens == 5
    assert active == 0


def test_a_handle_reports_what_its_generation_used_up_to_its_cancellation(tiny: LlamaForCausalLM) -> None:
    """What a client that hangs up is charged: the prompt tokens read and the tokens generated, frozen at the hang-up."""
    slow = Spy(tiny, delay_s=0.01)
    long_prompt = tok.encode("The lighthouse keeper counted the waves. " * 2)

    async def go() -> tuple[Any, Any, Any, Any, Completion]:
        engine = engine_for(slow, max_batch_size=1, prefill_chunk_tokens=16)
        await engine.start()
        running = engine.submit(PROMPTS[0], SamplingParams(max_tokens=400, ignore_eos=True))
        waiting = engine.submit(long_prompt, SamplingParams(max_tokens=5, ignore_eos=True))
        seen = 0
        async for _ in running:
            seen += 1
            if seen == 3:
                break
        assert waiting.progress() == Progress(0, 0)  # queued: nothing read yet
        stopped = running.stop()
        after_a_while = (await running.result(), running.progress())
        await waiting.result()
        read = waiting.progress()
        await engine.shutdown()
        return stopped, after_a_while[1], read, waiting.stop(), after_a_while[0]

    stopped, later, read, again, completion = run(go)
    assert stopped.prompt_tokens == len(PROMPTS[0]) and 3 <= stopped.completion_tokens < 400
    assert later == stopped  # tokens the engine made before it dropped the row are not the client's
    assert completion.completion_tokens >= stopped.completion_tokens
    assert read == again == Progress(len(long_prompt), 5)  # read in chunks; finished, stop() changes nothing


def test_full_queue_raises_without_growing_and_a_cancelled_queued_request_frees_its_place(
    tiny: LlamaForCausalLM,
) -> None:
    async def go() -> None:
        engine = engine_for(tiny, max_batch_size=1, max_queue=2)
        await engine.start()
        running = engine.submit(PROMPTS[0], SamplingParams(max_tokens=300, ignore_eos=True))
        async for _ in running:
            break
        queued = [engine.submit(PROMPTS[1], SamplingParams(max_tokens=2)) for _ in range(2)]
        for _ in range(3):
            with pytest.raises(QueueFullError) as info:
                engine.submit(PROMPTS[1], SamplingParams(max_tokens=2))
            assert info.value.retry_after_s >= 1
            assert "queue is full (2 waiting)" in str(info.value)
        assert engine.queue_depth == 2
        queued[0].cancel()
        assert (await queued[0].result()).finish_reason == "cancelled"
        assert engine.queue_depth == 1
        again = engine.submit(PROMPTS[1], SamplingParams(max_tokens=2))
        running.cancel()
        assert (await again.result()).completion_tokens >= 1
        await engine.shutdown()

    run(go)


def test_max_tokens_is_capped_by_the_engine_and_the_context_window(tiny: LlamaForCausalLM) -> None:
    async def go() -> tuple[Completion, Completion]:
        engine = engine_for(tiny, max_tokens=6, context_window=30)
        await engine.start()
        capped = await engine.submit(PROMPTS[0], SamplingParams(max_tokens=50, ignore_eos=True)).result()
        prompt = tok.encode("x" * 27)
        window = await engine.submit(prompt, SamplingParams(max_tokens=6, ignore_eos=True)).result()
        with pytest.raises(ValueError, match="the prompt is 30 tokens; the context window is 30 tokens"):
            engine.submit(tok.encode("x" * 30), SamplingParams(max_tokens=1))
        with pytest.raises(ValueError, match="max_tokens must be at least 1, got 0"):
            engine.submit(prompt, SamplingParams(max_tokens=0))
        with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\], got 1.5"):
            engine.submit(prompt, SamplingParams(max_tokens=1, top_p=1.5))
        await engine.shutdown()
        return capped, window

    capped, window = run(go)
    assert (capped.completion_tokens, capped.finish_reason) == (6, "length")
    assert (window.completion_tokens, window.finish_reason, window.prompt_tokens) == (3, "length", 27)


def test_stop_string_truncates_output_and_is_never_streamed(tiny: LlamaForCausalLM) -> None:
    prompt = tok.encode("Q:")
    spy = Spy(tiny, text_script("Paris is nice. END of the answer"), prompt_len=len(prompt))

    async def go() -> tuple[list[str], Completion]:
        engine = engine_for(spy)
        await engine.start()
        got = await collect(engine.submit(prompt, SamplingParams(max_tokens=100, stop=("ENDS", "END"))))
        await engine.shutdown()
        return got

    deltas, result = run(go)
    assert result.text == "Paris is nice. "
    assert result.finish_reason == "stop"
    assert "".join(deltas) == "Paris is nice. "
    assert not any("E" in d for d in deltas)  # "E" could have started "END": it was held back, then dropped


def test_eos_ends_a_row_unless_ignore_eos(tiny: LlamaForCausalLM) -> None:
    prompt = tok.encode("Q:")
    spy = Spy(tiny, text_script("Hi"), prompt_len=len(prompt))

    async def go() -> tuple[Completion, Completion]:
        engine = engine_for(spy)
        await engine.start()
        stopped = await engine.submit(prompt, SamplingParams(max_tokens=10)).result()
        forced = await engine.submit(prompt, SamplingParams(max_tokens=10, ignore_eos=True)).result()
        await engine.shutdown()
        return stopped, forced

    stopped, forced = run(go)
    assert (stopped.text, stopped.finish_reason, stopped.completion_tokens) == ("Hi", "stop", 3)
    assert (forced.text, forced.finish_reason, forced.completion_tokens) == ("Hi", "length", 10)


def test_streamed_deltas_never_split_a_utf8_character(tiny: LlamaForCausalLM) -> None:
    prompt = tok.encode("Q:")
    text = "Café 🙂 – 東京"
    spy = Spy(tiny, text_script(text), prompt_len=len(prompt))

    async def go() -> tuple[list[str], Completion]:
        engine = engine_for(spy)
        await engine.start()
        got = await collect(engine.submit(prompt, SamplingParams(max_tokens=100)))
        await engine.shutdown()
        return got

    deltas, result = run(go)
    assert result.text == text
    assert "".join(deltas) == text
    assert not any("\ufffd" in d for d in deltas)
    assert "🙂" in deltas  # four byte-tokens came out as one whole character


def test_seeded_sampling_is_reproducible_alone_or_in_a_batch(tiny: LlamaForCausalLM) -> None:
    sampled = SamplingParams(max_tokens=24, temperature=1.0, top_p=0.9, seed=1234, ignore_eos=True)

    async def go() -> tuple[str, str, str, list[str]]:
        engine = engine_for(tiny, max_batch_size=8)
        await engine.start()
        alone = (await engine.submit(PROMPTS[2], sampled).result()).text
        others = [engine.submit(p, SamplingParams(max_tokens=10, temperature=0.8, ignore_eos=True)) for p in PROMPTS]
        batched = (await engine.submit(PROMPTS[2], sampled).result()).text
        other_seed = (await engine.submit(PROMPTS[2], SamplingParams(**{**sampled.__dict__, "seed": 99})).result()).text
        rest = [(await h.result()).text for h in others]
        await engine.shutdown()
        return alone, batched, other_seed, rest

    alone, batched, other_seed, rest = run(go)
    assert alone == batched
    assert other_seed != alone
    assert len(set(rest)) > 1  # unseeded rows really sample


def test_timeout_ends_running_and_queued_generations(tiny: LlamaForCausalLM) -> None:
    slow = Spy(tiny, delay_s=0.02)  # a model that cannot finish 400 tokens within the 0.3 s deadline

    async def go() -> tuple[Completion, Completion]:
        engine = engine_for(slow, max_batch_size=1)
        await engine.start()
        running = engine.submit(PROMPTS[0], SamplingParams(max_tokens=400, ignore_eos=True, timeout_s=0.3))
        queued = engine.submit(PROMPTS[1], SamplingParams(max_tokens=5, timeout_s=0.1))
        results = await running.result(), await queued.result()
        await engine.shutdown()
        return results

    running, queued = run(go)
    assert running.finish_reason == "timeout"
    assert 1 <= running.completion_tokens < 400
    assert running.text  # the text so far is kept
    assert (queued.finish_reason, queued.completion_tokens, queued.time_to_first_token_s) == ("timeout", 0, None)


def test_a_deadline_that_passes_while_the_prompt_is_read_ends_it_before_a_first_token(tiny: LlamaForCausalLM) -> None:
    slow = Spy(tiny, delay_s=0.05)  # 100 prompt tokens read 8 at a time: 13 passes, far over the 0.2 s deadline

    async def go() -> tuple[Completion, int]:
        engine = engine_for(slow, prefill_chunk_tokens=8)
        await engine.start()
        late = await engine.submit(tok.encode("x" * 100), SamplingParams(max_tokens=5, timeout_s=0.2)).result()
        passes = len(slow.passes)
        after = await engine.submit(PROMPTS[0], SamplingParams(max_tokens=2, ignore_eos=True)).result()
        assert after.completion_tokens == 2  # the engine goes on
        await engine.shutdown()
        return late, passes

    late, passes = run(go)
    assert (late.finish_reason, late.completion_tokens, late.text) == ("timeout", 0, "")
    assert passes < 13  # the rest of the prompt was not read


def test_shutdown_drains_in_flight_work_and_refuses_new_requests(tiny: LlamaForCausalLM) -> None:
    async def go() -> list[Completion]:
        engine = engine_for(tiny, max_batch_size=2)
        await engine.start()
        handles = [engine.submit(p, SamplingParams(max_tokens=8, ignore_eos=True)) for p in PROMPTS]
        closing = asyncio.create_task(engine.shutdown(grace_s=60))
        await asyncio.sleep(0)
        with pytest.raises(EngineClosedError):
            engine.submit(PROMPTS[0], SamplingParams(max_tokens=1))
        await closing
        return [await h.result() for h in handles]

    results = run(go)
    assert [r.finish_reason for r in results] == ["length"] * len(PROMPTS)
    assert all(r.completion_tokens == 8 for r in results)


def test_shutdown_fails_what_the_grace_period_does_not_cover(tiny: LlamaForCausalLM) -> None:
    async def go() -> list[BaseException | Completion]:
        engine = engine_for(tiny, max_batch_size=1)
        await engine.start()
        handles = [engine.submit(PROMPTS[0], SamplingParams(max_tokens=480, ignore_eos=True)) for _ in range(3)]
        async for _ in handles[0]:
            break
        await engine.shutdown(grace_s=0)
        return list(await asyncio.gather(*(h.result() for h in handles), return_exceptions=True))

    results = run(go)
    # Not a "cancelled" completion: the API would turn that into a 200 with half an answer.
    assert all(isinstance(r, EngineClosedError) for r in results), results
    assert all("shutdown grace period" in str(r) for r in results)


def test_embedded_model_greedy_output_is_the_same_batched_as_alone(embedded: Any) -> None:
    questions = ["What is the capital of France?", "Name three colours.", "hi", "Write a haiku about the sea, please."]
    tokenizer = embedded.tokenizer
    prompts = [
        list(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": q}], add_generation_prompt=True, tokenize=True, return_dict=True
            )["input_ids"]
        )
        for q in questions
    ]
    n = 16
    expected = []
    for prompt in prompts:
        with torch.inference_mode():
            out = embedded.model.generate(
                torch.tensor([prompt]),
                attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                do_sample=False,
                max_new_tokens=n,
                pad_token_id=tokenizer.pad_token_id,
            )
        ids = out[0, len(prompt) :].tolist()
        expected.append(tokenizer.decode(ids, skip_special_tokens=True))

    async def go() -> list[Completion]:
        engine = Engine(
            embedded.model,
            tokenizer,
            device=embedded.device,
            max_batch_size=3,
            batch_wait_ms=0,
            context_window=embedded.context_window,
        )
        await engine.start()
        handles = [
            engine.submit(prompts[0], SamplingParams(max_tokens=n)),
            engine.submit(prompts[1], SamplingParams(max_tokens=n)),
        ]
        async for _ in handles[0]:
            break  # the next two join a batch that is already decoding; the 4th waits for a free row
        handles += [engine.submit(p, SamplingParams(max_tokens=n)) for p in prompts[2:]]
        results = [await h.result() for h in handles]
        await engine.shutdown()
        return results

    results = run(go)
    assert [r.text for r in results] == expected
    assert "Paris" in results[0].text
