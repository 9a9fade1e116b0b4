"""Hostile sampling parameters and failing per-request work beside a healthy request: the healthy one completes
unchanged, the engine stays up, and each hostile request is refused at submit or fails alone with its own error."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest
import torch
from transformers import LlamaForCausalLM

from app.inference.engine import Completion, RequestFailedError, SamplingParams
from app.observability.metrics import build_metrics
from tests.app.inference.toy import engine_for, reference, run, tok

PROMPT = tok.encode("The capital of France is")
HEALTHY_TOKENS = 24


class Forces:
    """A grammar that allows one token, and after `ends_after` tokens reports that it has ended."""

    def __init__(self, token: int, ends_after: int = 10**9, fail_mask: bool = False) -> None:
        self.token, self.ends_after, self.fail_mask, self.seen = token, ends_after, fail_mask, 0

    def mask(self, logits: torch.Tensor) -> None:
        if self.fail_mask or self.finished:  # xgrammar raises when asked for a mask after its end
            raise RuntimeError("GrammarMatcher: the matcher has terminated")
        keep = logits[self.token].clone()
        logits.fill_(float("-inf"))
        logits[self.token] = keep

    def advance(self, token_id: int) -> None:
        self.seen += 1

    @property
    def finished(self) -> bool:
        return self.seen >= self.ends_after


class Forbids(Forces):
    def mask(self, logits: torch.Tensor) -> None:
        logits.fill_(float("-inf"))


class FailsOn:
    """The byte tokenizer, failing to decode one token id (a row forced onto it fails in its detokenization)."""

    def __init__(self, bad: int) -> None:
        self.bad = bad
        self.pad_token_id, self.eos_token_id = tok.pad_token_id, tok.eos_token_id

    def encode(self, text: str) -> list[int]:
        return tok.encode(text)

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        if self.bad in ids:
            raise ValueError("token id out of the vocabulary's range")
        return tok.decode(ids, skip_special_tokens)


BAD_TOKEN = tok.encode("~")[0]
# Each family the campaign found, as the engine receives it once the API has validated it.
ACCEPTED_HOSTILE = {
    "temperature 1e-300 (greedy)": SamplingParams(max_tokens=8, temperature=1e-300, ignore_eos=True),
    "temperature 5e-324, seeded": SamplingParams(max_tokens=8, temperature=5e-324, seed=1, ignore_eos=True),
    "least penalty, sampled": SamplingParams(max_tokens=8, temperature=0.7, repetition_penalty=0.01, ignore_eos=True),
    "top_p 1e-300, temperature 2": SamplingParams(max_tokens=8, temperature=2.0, top_p=1e-300, ignore_eos=True),
}
FAILING = {
    "grammar mask raises": (SamplingParams(max_tokens=8, constraint=Forces(BAD_TOKEN, fail_mask=True)), "grammar mask"),
    "grammar forbids every token": (SamplingParams(max_tokens=8, temperature=0.5, constraint=Forbids(5)), "sampling"),
    "detokenization raises": (SamplingParams(max_tokens=8, constraint=Forces(BAD_TOKEN)), "detokenization"),
}
REFUSED = {
    "temperature NaN": dict(temperature=math.nan),
    "temperature inf": dict(temperature=math.inf),
    "temperature 3": dict(temperature=3.0),
    "temperature -1e-300": dict(temperature=-1e-300),
    "penalty 1e-300": dict(repetition_penalty=1e-300, temperature=0.7),
    "penalty 0": dict(repetition_penalty=0.0),
    "penalty NaN": dict(repetition_penalty=math.nan),
    "penalty 1e30": dict(repetition_penalty=1e30),
    "top_p 0": dict(top_p=0.0),
    "top_p NaN": dict(top_p=math.nan),
}


def test_every_family_of_bad_parameters_beside_a_healthy_request(tiny: LlamaForCausalLM) -> None:
    expected = tok.decode(reference(tiny, PROMPT, HEALTHY_TOKENS))
    metrics = build_metrics()

    async def go() -> dict[str, Any]:
        engine = engine_for(tiny, tokenizer=FailsOn(BAD_TOKEN), max_batch_size=16, batch_wait_ms=200, metrics=metrics)
        await engine.start()
        refused = {}
        for name, fields in REFUSED.items():
            with pytest.raises(ValueError) as err:
                engine.submit(PROMPT, SamplingParams(max_tokens=8, **fields))
            refused[name] = str(err.value)
        healthy = engine.submit(PROMPT, SamplingParams(max_tokens=HEALTHY_TOKENS, ignore_eos=True))
        accepted = {name: engine.submit(PROMPT, p) for name, p in ACCEPTED_HOSTILE.items()}
        failing = {name: engine.submit(PROMPT, p) for name, (p, _) in FAILING.items()}
        results = {
            "healthy": await healthy.result(),
            "accepted": {n: await h.result() for n, h in accepted.items()},
            "failing": dict(
                zip(failing, await asyncio.gather(*(h.result() for h in failing.values()), return_exceptions=True))
            ),
            "refused": refused,
        }
        after = engine.submit(PROMPT, SamplingParams(max_tokens=4, ignore_eos=True))
        results["after"] = await after.result()
        results["failure"] = engine.failure
        await engine.shutdown(grace_s=5)
        return results

    results = run(go)
    assert results["failure"] is None
    healthy: Completion = results["healthy"]
    assert healthy.text == expected and healthy.finish_reason == "length"
    greedy8 = tok.decode(reference(tiny, PROMPT, 8))
    for name, completion in results["accepted"].items():
        assert completion.completion_tokens == 8, name
        if "greedy" in name or "5e-324" in name:
            assert completion.text == greedy8, name
    for name, outcome in results["failing"].items():
        assert isinstance(outcome, RequestFailedError), (name, outcome)
        stage = FAILING[name][1]
        assert stage in str(outcome), (name, str(outcome))
        assert metrics.registry.get_sample_value("clawbot_request_failures_total", {"stage": stage}) >= 1
    for name, message in results["refused"].items():
        assert "must be" in message, (name, message)
    assert results["after"].completion_tokens == 4
    assert metrics.registry.get_sample_value("clawbot_engine_failures_total", {"reason": "RuntimeError"}) is None
    assert metrics.registry.get_sample_value("clawbot_inflight_requests") == 0


def test_a_grammar_that_ends_stops_its_row_even_with_ignore_eos(tiny: LlamaForCausalLM) -> None:
    """A benchmark key's ignore_eos with response_format: the grammar ends, so the row ends, instead of asking the
    finished grammar for a mask."""
    forced = tok.encode("x")[0]

    async def go() -> tuple[Completion, Completion, str | None]:
        engine = engine_for(tiny, max_batch_size=4)
        await engine.start()
        bound = engine.submit(
            PROMPT, SamplingParams(max_tokens=20, ignore_eos=True, constraint=Forces(forced, ends_after=3))
        )
        free = engine.submit(PROMPT, SamplingParams(max_tokens=20, ignore_eos=True))
        out = await bound.result(), await free.result(), engine.failure
        await engine.shutdown(grace_s=5)
        return out

    bound, free, failure = run(go)
    assert failure is None
    assert (bound.text, bound.finish_reason, bound.completion_tokens) == ("xxx", "stop", 3)
    assert free.completion_tokens == 20
