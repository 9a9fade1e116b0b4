"""Grammar-constrained rows in the batching engine, on the embedded model: JSON valid against the schema, the end of
sequence only once the JSON is complete, and the rows beside them unchanged."""
from __future__ import annotations

import asyncio
import json
from typing import Any

import jsonschema
import pytest

from app.inference.constraints import GrammarError, Grammars
from app.inference.engine import Completion, Engine, SamplingParams

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 40}, "age": {"type": "integer"},
                   "languages": {"type": "array", "items": {"type": "string", "enum": ["en", "fr", "de"]}, "maxItems": 3}},
    "required": ["name", "age", "languages"],
}


@pytest.fixture(scope="module")
def grammars(embedded: Any) -> Grammars:
    return Grammars(embedded.tokenizer, embedded.model.config.vocab_size, {embedded.tokenizer.eos_token_id})


def prompt_ids(embedded: Any, question: str) -> list[int]:
    encoded = embedded.tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                                     tokenize=True, return_dict=True)
    return list(encoded["input_ids"])


def test_constrained_and_free_rows_share_a_batch(embedded: Any, grammars: Grammars) -> None:
    question = prompt_ids(embedded, "Describe a person.")
    france = prompt_ids(embedded, "What is the capital of France?")

    async def go() -> tuple[Completion, Completion, Completion]:
        engine = Engine(embedded.model, embedded.tokenizer, device=embedded.device, batch_wait_ms=50,
                        context_window=embedded.context_window)
        await engine.start()
        alone = await engine.submit(france, SamplingParams(max_tokens=12)).result()
        handles = [engine.submit(question, SamplingParams(max_tokens=80, constraint=grammars.constraint(PERSON))),
                   engine.submit(france, SamplingParams(max_tokens=12)),
                   engine.submit(question, SamplingParams(max_tokens=80, temperature=1.0, seed=3,
                                                          constraint=grammars.constraint(PERSON)))]
        greedy, free, sampled = [await h.result() for h in handles]
        await engine.shutdown()
        assert free.text == alone.text  # a constrained neighbour changes nothing for an unconstrained row
        return greedy, free, sampled

    greedy, free, sampled = asyncio.run(asyncio.wait_for(go(), timeout=300))
    assert "Paris" in free.text
    for done in (greedy, sampled):
        assert done.finish_reason == "stop", done  # EOS came, and only after the JSON closed
        jsonschema.validate(json.loads(done.text), PERSON)


def test_schemas_it_cannot_enforce_are_named(grammars: Grammars) -> None:
    with pytest.raises(GrammarError, match='Unsupported type "objectx"'):
        grammars.constraint({"type": "objectx"})
    with pytest.raises(GrammarError, match="defs"):
        grammars.constraint({"$ref": "#/defs/nope"})
