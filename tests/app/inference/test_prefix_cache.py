"""The prefix cache: longest block-aligned head, per-scope keys, LRU under a token bound; and through the engine,
greedy outputs that are the same with and without it while later prompts skip the head they share."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import torch
from transformers import LlamaForCausalLM

from app.inference.engine import Completion, Engine, SamplingParams
from app.inference.prefix_cache import PrefixCache
from app.observability.metrics import build_metrics
from tests.app.inference.toy import Spy, engine_for, reference, run, tok

BLOCK = 64


def kv(n: int, layers: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Keys/values whose column j holds j, so a slice shows which columns it kept."""
    column = torch.arange(n, dtype=torch.float32).view(1, 1, n, 1).expand(1, 2, n, 4).clone()
    return [(column.clone(), -column.clone()) for _ in range(layers)]


def ids(n: int, start: int = 0) -> list[int]:
    return list(range(start, start + n))


def test_the_longest_cached_block_aligned_head_is_found_and_one_token_is_always_left() -> None:
    cache = PrefixCache(4096, block=BLOCK)
    assert cache.store(ids(200), kv(200))
    assert cache.tokens == 192
    hit = cache.lookup(ids(200))
    assert hit is not None and hit.tokens == 192
    assert hit.layers[0][0][0, 0, :, 0].tolist() == list(range(192))
    assert cache.lookup(ids(192)).tokens == 128  # type: ignore[union-attr]  # the last token is read, not looked up
    assert cache.lookup(ids(130) + [9999] * 100).tokens == 128  # type: ignore[union-attr]
    assert cache.lookup([9999] + ids(300)[1:]) is None  # another first token: nothing in common
    assert cache.lookup(ids(64)) is None  # a head must leave a token to read


def test_a_head_is_only_found_under_the_scope_that_stored_it() -> None:
    cache = PrefixCache(4096, block=BLOCK)
    cache.store(ids(200), kv(200), scope="key-a")
    assert cache.lookup(ids(200), scope="key-b") is None
    assert cache.lookup(ids(200)) is None
    assert cache.lookup(ids(200), scope="key-a") is not None


def test_least_recently_used_heads_go_first_and_the_bound_holds() -> None:
    cache = PrefixCache(256, block=BLOCK)
    a, b, c = ids(129, 0), ids(129, 1000), ids(129, 2000)
    cache.store(a, kv(129))
    cache.store(b, kv(129))
    assert cache.lookup(a) is not None  # a is now the most recently used
    cache.store(c, kv(129))
    assert cache.tokens <= 256 and len(cache) == 2
    assert cache.lookup(b) is None and cache.lookup(a) is not None and cache.lookup(c) is not None


def test_a_longer_prompt_replaces_the_head_it_extends_and_copies_are_kept() -> None:
    cache = PrefixCache(4096, block=BLOCK)
    first = kv(130)
    cache.store(ids(130), first)
    first[0][0].fill_(-1.0)  # the engine's batch tensors change after a store: the cache kept its own copy
    cache.store(ids(260), kv(260))
    assert len(cache) == 1 and cache.tokens == 256
    hit = cache.lookup(ids(130))
    assert hit is not None and hit.tokens == 128 and hit.layers[0][0][0, 0, :, 0].tolist() == list(range(128))
    assert not cache.store(ids(200), kv(200))  # its head is cached already


def test_a_zero_bound_turns_it_off_and_bad_bounds_are_refused() -> None:
    cache = PrefixCache(0, block=BLOCK)
    assert not cache.store(ids(200), kv(200)) and cache.lookup(ids(200)) is None
    with pytest.raises(ValueError, match="at least 0 tokens"):
        PrefixCache(-1)


# -- through the engine, on the tiny model: outputs equal model.generate alone --------------------------------
SYSTEM = tok.encode("You are a careful assistant. " * 6)  # 174 tokens: two whole blocks and change


def drive(engine: Engine, waves: list[list[tuple[list[int], str]]], n: int) -> list[list[Completion]]:
    """Run each wave's prompts (prompt, scope) together, one wave after another; the i-th of a wave gets n + i
    tokens, so rows leave the batch one by one (and the batch is compacted around the rest)."""

    async def go() -> list[list[Completion]]:
        await engine.start()
        out = []
        for wave in waves:
            handles = [
                engine.submit(p, SamplingParams(max_tokens=n + i, ignore_eos=True), prefix_scope=s)
                for i, (p, s) in enumerate(wave)
            ]
            out.append(list(await asyncio.gather(*(h.result() for h in handles))))
        await engine.shutdown()
        return out

    return run(go)


def test_greedy_outputs_are_the_same_with_the_cache_and_later_turns_skip_the_shared_head(
    tiny: LlamaForCausalLM,
) -> None:
    spy = Spy(tiny)
    metrics = build_metrics()
    turn1 = SYSTEM + tok.encode("User: hi")
    turn2 = turn1 + tok.encode(" Assistant: hello. User: and now?")
    other = tok.encode("Something else entirely, " * 6)
    waves = [
        [(turn1, "k")],
        [(turn2, "k")],
        # One group: two rows with a cached head of different lengths, one without, one under another key.
        [(turn2 + tok.encode(" more"), "k"), (SYSTEM + tok.encode("User: bye"), "k"), (other, "k"), (turn1, "j")],
    ]
    n = 8
    engine = engine_for(spy, max_batch_size=8, batch_wait_ms=200, prefix_cache_tokens=4096, metrics=metrics)
    results = drive(engine, waves, n)
    for wave, answers in zip(waves, results):
        for i, ((prompt, _), answer) in enumerate(zip(wave, answers)):
            assert answer.text == tok.decode(reference(tiny, prompt, n + i)), len(prompt)
    cached = [[a.cached_tokens for a in answers] for answers in results]
    # Turn 1 stored its first two blocks; turn 2 found them and stored three; the mixed group used both.
    assert cached == [[0], [128], [192, 128, 0, 0]]
    second_prefill = [columns for rows, columns, _ in spy.passes if rows == 1 and columns > 1][1]
    assert second_prefill == len(turn2) - 128  # only what follows the cached head was read
    assert metrics.registry.get_sample_value("clawbot_prompt_tokens_cached_total") == 128 + 192 + 128


def test_without_the_cache_nothing_is_reported_cached(tiny: LlamaForCausalLM) -> None:
    prompt = SYSTEM + tok.encode("User: hi")
    engine = engine_for(tiny, prefix_cache_tokens=0)
    results = drive(engine, [[(prompt, "k")], [(prompt, "k")]], 4)
    assert [r[0].cached_tokens for r in results] == [0, 0]
    assert results[0][0].text == results[1][0].text


def test_embedded_model_answers_the_same_with_and_without_the_cache(embedded: Any) -> None:
    tokenizer = embedded.tokenizer
    system = {"role": "system", "content": "You are a geography tutor. Answer in one short sentence. " * 12}
    first = [system, {"role": "user", "content": "What is the capital of France?"}]
    second = [*first, {"role": "assistant", "content": "Paris."}, {"role": "user", "content": "And of Italy?"}]
    prompts = [
        tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=True, return_dict=False)
        for m in (first, second, first)
    ]

    def answers(prefix_cache_tokens: int) -> list[Completion]:
        engine = Engine(
            embedded.model,
            tokenizer,
            device=embedded.device,
            batch_wait_ms=0,
            context_window=embedded.context_window,
            prefix_cache_tokens=prefix_cache_tokens,
        )
        return [wave[0] for wave in drive(engine, [[(p, "k")] for p in prompts], 12)]

    plain, cached = answers(0), answers(8192)
    assert [a.text for a in cached] == [a.text for a in plain]
    assert cached[0].cached_tokens == 0 and cached[1].cached_tokens >= len(prompts[0]) - BLOCK
    assert cached[2].cached_tokens == (len(prompts[0]) - 1) // BLOCK * BLOCK
