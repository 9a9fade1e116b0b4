"""A head that a group's rows share is read once, as one row, and every row's greedy output is what model.generate
gives its prompt alone; rows of another scope, heads that are too short, and a disabled prefix cache share nothing."""

from __future__ import annotations

import asyncio

import torch
from transformers import LlamaForCausalLM

from app.inference.engine import Completion, Engine, SamplingParams
from app.inference.memory import is_out_of_memory
from app.inference.shared_head import MIN_SHARED_TOKENS, common_head
from tests.app.inference.toy import Spy, engine_for, reference, run, tok

SYSTEM = tok.encode("You are a careful assistant. ") * 2  # 58 tokens, as a chat template's system prompt
QUESTIONS = ["User: hi", "User: what is 2+2?", "User: name a colour", "User: bye now"]


def test_the_common_head_leaves_every_row_a_token() -> None:
    assert common_head([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 9]]) == 2
    assert common_head([[1, 2, 3], [1, 2, 3]]) == 2  # the same prompt twice: its last token is still read
    assert common_head([[1, 2], [3, 4]]) == 0


def answers(engine: Engine, prompts: list[tuple[list[int], str]], n: int) -> list[Completion]:
    async def go() -> list[Completion]:
        await engine.start()
        handles = [
            engine.submit(p, SamplingParams(max_tokens=n, ignore_eos=True), prefix_scope=scope) for p, scope in prompts
        ]
        out = list(await asyncio.gather(*(h.result() for h in handles)))
        await engine.shutdown()
        return out

    return run(go)


def test_a_group_reads_its_shared_head_once_and_answers_as_each_prompt_alone(tiny: LlamaForCausalLM) -> None:
    spy = Spy(tiny)
    prompts = [(SYSTEM + tok.encode(q), "k") for q in QUESTIONS]
    engine = engine_for(spy, max_batch_size=8, batch_wait_ms=200, prefix_cache_tokens=4096)
    n = 6
    results = answers(engine, prompts, n)
    for (prompt, _), answer in zip(prompts, results, strict=True):
        assert answer.text == tok.decode(reference(tiny, prompt, n))
        assert answer.cached_tokens == 0  # read for this group, not found in the cache
    head = common_head([p for p, _ in prompts])
    assert head >= len(SYSTEM)
    longest_rest = max(len(p) for p, _ in prompts) - head
    # One pass of one row over the head, then the group's pass over the rests only (no pass reads a whole prompt).
    assert spy.passes[0][:2] == (1, head)
    assert spy.passes[1][:2] == (len(prompts), longest_rest)
    assert all(columns == 1 for _, columns, _ in spy.passes[2:])


def test_scopes_short_heads_and_a_disabled_cache_share_nothing(tiny: LlamaForCausalLM) -> None:
    n = 4
    mixed = [(SYSTEM + tok.encode(QUESTIONS[0]), "k"), (SYSTEM + tok.encode(QUESTIONS[1]), "j")]
    short = [(tok.encode("Hi " + q), "k") for q in QUESTIONS[:2]]
    assert common_head([p for p, _ in short]) < MIN_SHARED_TOKENS
    for prompts, cache_tokens in ((mixed, 4096), (short, 4096), ([(p, "k") for p, _ in mixed], 0)):
        spy = Spy(tiny)
        results = answers(
            engine_for(spy, max_batch_size=8, batch_wait_ms=200, prefix_cache_tokens=cache_tokens), prompts, n
        )
        assert spy.passes[0][0] == len(prompts)  # the group's own prefill comes first: no head pass
        for (prompt, _), answer in zip(prompts, results, strict=True):
            assert answer.text == tok.decode(reference(tiny, prompt, n))


def test_a_head_pass_out_of_memory_falls_back_to_the_plain_prefill(tiny: LlamaForCausalLM) -> None:
    prompts = [(SYSTEM + tok.encode(q), "k") for q in QUESTIONS[:2]]
    head = common_head([p for p, _ in prompts])
    oom = torch.cuda.OutOfMemoryError("CUDA out of memory (injected by the test)")
    assert is_out_of_memory(oom)
    spy = Spy(tiny, fail=lambda rows, columns: oom if (rows, columns) == (1, head) else None)
    results = answers(engine_for(spy, max_batch_size=8, batch_wait_ms=200, prefix_cache_tokens=4096), prompts, 4)
    assert spy.failures == 1 and spy.passes[0][0] == len(prompts)
    for (prompt, _), answer in zip(prompts, results, strict=True):
        assert answer.text == tok.decode(reference(tiny, prompt, 4))
