"""Grammar-constrained rows in the batching engine, on the embedded model: JSON valid against the schema, the end of
sequence only once the JSON is complete, and the rows beside them unchanged. And the compile itself: off the event
loop, under a budget that kills an overrunning compile without leaking its process, cached in bytes."""

from __future__ import annotations

import asyncio
import json
import multiprocessing.forkserver
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from app.inference.constraints import GrammarError, Grammars, SchemaRefused
from app.inference.engine import Completion, Engine, SamplingParams
from app.inference.grammar_sandbox import NICENESS, WARM_UP_SCHEMA
from app.inference.schema_limits import SchemaLimits, SchemaTooComplex
from bench.waiting import wait_until

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer"},
        "languages": {"type": "array", "items": {"type": "string", "enum": ["en", "fr", "de"]}, "maxItems": 3},
    },
    "required": ["name", "age", "languages"],
}


@pytest.fixture(scope="module")
def grammars(embedded: Any) -> Iterator[Grammars]:
    grammars = Grammars(embedded.tokenizer, embedded.model.config.vocab_size, {embedded.tokenizer.eos_token_id})
    yield grammars
    grammars.close()


def constraint(grammars: Grammars, schema: Any) -> Any:
    return asyncio.run(grammars.constraint(schema))


def prompt_ids(embedded: Any, question: str) -> list[int]:
    encoded = embedded.tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=True, return_dict=True
    )
    return list(encoded["input_ids"])


def test_constrained_and_free_rows_share_a_batch(embedded: Any, grammars: Grammars) -> None:
    question = prompt_ids(embedded, "Describe a person.")
    france = prompt_ids(embedded, "What is the capital of France?")

    async def go() -> tuple[Completion, Completion, Completion]:
        engine = Engine(
            embedded.model,
            embedded.tokenizer,
            device=embedded.device,
            batch_wait_ms=50,
            context_window=embedded.context_window,
        )
        await engine.start()
        alone = await engine.submit(france, SamplingParams(max_tokens=12)).result()
        handles = [
            engine.submit(question, SamplingParams(max_tokens=80, constraint=await grammars.constraint(PERSON))),
            engine.submit(france, SamplingParams(max_tokens=12)),
            engine.submit(
                question,
                SamplingParams(max_tokens=80, temperature=1.0, seed=3, constraint=await grammars.constraint(PERSON)),
            ),
        ]
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
        constraint(grammars, {"type": "objectx"})
    with pytest.raises(GrammarError, match="defs"):
        constraint(grammars, {"$ref": "#/defs/nope"})
    with pytest.raises(SchemaRefused, match="'not' at #/not"):
        constraint(grammars, {"not": {}})


def test_a_pydantic_models_schema_compiles(grammars: Grammars) -> None:
    from tests.app.inference.test_schema_limits import Person  # what a Python client's SDK sends for a model

    assert constraint(grammars, Person.model_json_schema()) is not None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_ended(pid: int, which: str = "the compile process") -> None:
    wait_until(f"{which} {pid} to end", lambda: not alive(pid), 60, poll_s=0.02)


def test_a_compile_over_budget_is_killed_and_its_process_replaced(embedded: Any) -> None:
    # Without the pattern limit, `a{1,10000}` takes xgrammar about a minute; the budget allows a fifth of a second.
    grammars = Grammars(
        embedded.tokenizer,
        embedded.model.config.vocab_size,
        {embedded.tokenizer.eos_token_id},
        compile_timeout_s=0.2,
        workers=1,
        limits=SchemaLimits(max_repetition=10**6),
    )
    try:
        constraint(grammars, {"type": "string"})  # the child is up
        (child,) = grammars._sandbox._children
        pid = child.process.pid
        with pytest.raises(SchemaTooComplex, match=r"did not compile within GRAMMAR_COMPILE_TIMEOUT_SECONDS \(0.2 s\)"):
            constraint(grammars, {"type": "string", "pattern": "a{1,10000}"})
        wait_ended(pid, "the overrunning compile process")
        assert constraint(grammars, {"type": "integer"}) is not None  # a new process compiles the next schema
        assert child.process.pid != pid
        # Sent again, the bomb is refused from memory: no process is spent on it a second time.
        with pytest.raises(SchemaTooComplex, match="GRAMMAR_COMPILE_TIMEOUT_SECONDS"):
            constraint(grammars, {"type": "string", "pattern": "a{1,10000}"})
        replaced = child.process.pid
        assert replaced != pid and alive(replaced)
    finally:
        grammars.close()
    wait_ended(replaced)  # closing stops the children


def test_the_event_loop_runs_while_a_schema_compiles(embedded: Any) -> None:
    grammars = Grammars(
        embedded.tokenizer,
        embedded.model.config.vocab_size,
        {embedded.tokenizer.eos_token_id},
        compile_timeout_s=120,
        workers=1,
    )
    slow = {"type": "string", "maxLength": 100}  # a second or more of compile, twice (in the child, then in the server)

    async def go() -> int:
        ticks = 0
        compile_ = asyncio.create_task(grammars.constraint(slow))
        while not compile_.done():
            await asyncio.sleep(0.01)
            ticks += 1
        await compile_
        return ticks

    try:
        assert asyncio.run(go()) > 0  # a compile on the loop would hold it until the end: not one tick
    finally:
        grammars.close()


def test_compiled_grammars_are_cached_in_bytes_and_shared(embedded: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    grammars = Grammars(
        embedded.tokenizer,
        embedded.model.config.vocab_size,
        {embedded.tokenizer.eos_token_id},
        workers=2,
        cache_bytes=2_000_000,
    )
    trials: list[str] = []
    trial = grammars._sandbox.trial

    def counted(text: str) -> float:
        if text != WARM_UP_SCHEMA:
            trials.append(text)
        return trial(text)

    monkeypatch.setattr(grammars._sandbox, "trial", counted)

    def enum(i: int) -> dict[str, Any]:
        return {"enum": [f"option {i}-{j}" for j in range(800)]}  # about 150 KB compiled

    async def same_schema_at_once() -> None:
        await asyncio.gather(*(grammars.constraint(PERSON) for _ in range(4)))

    try:
        asyncio.run(same_schema_at_once())
        assert len(trials) == 1  # four requests, one compile
        constraint(grammars, PERSON)
        assert len(trials) == 1  # and the fifth came from the cache
        for i in range(24):
            constraint(grammars, enum(i))
        assert grammars.cache.bytes <= 2_000_000
        assert 1 < len(grammars.cache) < 25  # the oldest went out
        constraint(grammars, enum(23))
        assert len(trials) == 25  # the newest is still in
    finally:
        grammars.close()


def test_a_compile_process_that_dies_fails_that_schema_alone(embedded: Any) -> None:
    # As a compiler crash would: the process is gone when the schema reaches it.
    grammars = Grammars(
        embedded.tokenizer, embedded.model.config.vocab_size, {embedded.tokenizer.eos_token_id}, workers=1
    )
    try:
        constraint(grammars, {"type": "string"})
        (child,) = grammars._sandbox._children
        pid = child.process.pid
        os.kill(pid, signal.SIGKILL)
        wait_ended(pid)
        with pytest.raises(
            GrammarError, match=r"the grammar compiler failed on this schema \(its process exited with -9\)"
        ):
            constraint(grammars, {"type": "boolean"})
        assert (
            constraint(grammars, {"type": "boolean"}) is not None
        )  # not remembered as refused: a new process compiles it
    finally:
        grammars.close()


def test_a_key_with_slow_schemas_holds_one_compile_worker_and_other_keys_get_the_rest(
    embedded: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    grammars = Grammars(
        embedded.tokenizer, embedded.model.config.vocab_size, {embedded.tokenizer.eos_token_id}, workers=2
    )
    release = threading.Event()
    trial = grammars._sandbox.trial

    def held(text: str) -> float:
        if "slow" in text:  # the hostile key's schemas: each holds its worker until released
            release.wait(120)
        return trial(text)

    monkeypatch.setattr(grammars._sandbox, "trial", held)

    async def go() -> None:
        hostile = [
            asyncio.create_task(grammars.constraint({"type": "string", "description": f"slow {i}"}, "hostile"))
            for i in range(3)
        ]
        other = asyncio.create_task(grammars.constraint({"type": "integer"}, "victim"))
        done, _ = await asyncio.wait({other, *hostile}, timeout=120, return_when=asyncio.FIRST_COMPLETED)
        assert done == {other}  # served by the second worker while the first is held by the hostile key
        release.set()
        await asyncio.gather(*hostile)

    try:
        asyncio.run(go())
    finally:
        release.set()
        grammars.close()


def _nice(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads priorities from Linux's /proc")
def test_the_fork_server_and_compile_processes_run_below_the_engine(grammars: Grammars) -> None:
    """The fork server's start imports xgrammar and torch, seconds of CPU: started from the sandbox's warm-up thread
    at its lowered priority, it and the compile processes forked from it yield the cores to the engine."""
    constraint(grammars, {"type": "string"})  # the warm-up is over and a child has compiled
    server = multiprocessing.forkserver._forkserver._forkserver_pid
    assert server is not None and _nice(server) == NICENESS
    for child in grammars._sandbox._children:
        if child.process is not None:
            assert _nice(child.process.pid) == NICENESS
