"""Hostile input against the real service (embedded model, real uvicorn, in this process): schema, regex and enum
bombs, schemas the grammar would not enforce, tool-history bombs and malformed Responses items each get a 400 in the
error shape, and /healthz keeps answering while schema compiles are in flight."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

import app.factory as factory
from app.inference.constraints import Grammars
from app.settings import Settings
from bench.waiting import wait_until
from tests.app.api.test_openapi import REFUSED_BODIES
from tests.app.inference.test_schema_limits import BOMBS, UNENFORCEABLE
from tests.e2e.server import MODEL_CACHE
from tests.live_server import calls_in_flight, live_server, wait_ready

KEY = "ck-test-" + "5eed" * 12
BEARER = {"Authorization": f"Bearer {KEY}"}
ASK = [{"role": "user", "content": "Describe a city."}]


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data_dir = tmp_path_factory.mktemp("hostile") / "data"
    data_dir.mkdir()
    MODEL_CACHE.mkdir(parents=True, exist_ok=True)
    (data_dir / "models").symlink_to(MODEL_CACHE, target_is_directory=True)
    settings = Settings(
        app_env="development",
        dev_api_key=KEY,
        data_dir=data_dir,
        warmup_prompts=("Hi",),
        max_tokens=16,
        grammar_compile_timeout_s=1.0,
        grammar_compile_workers=2,
    )
    with live_server(factory.create_app(settings)) as base:
        wait_ready(base)
        yield base


def post(url: str, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(url + path, json=body, headers=BEARER, timeout=120)


def refused(r: httpx.Response, code: str) -> str:
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == code and error["type"] == "invalid_request_error", error
    return str(error["message"])


def as_response_format(schema: Any) -> dict[str, Any]:
    return {
        "messages": ASK,
        "max_tokens": 8,
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
    }


def as_tool(schema: Any) -> dict[str, Any]:
    return {
        "model": "clawbot",
        "input": "Call it.",
        "max_output_tokens": 8,
        "tool_choice": "required",
        "tools": [{"type": "function", "name": "f", "parameters": schema}],
    }


@pytest.mark.parametrize("name", [n for n in BOMBS if n != "a 1 MB schema"])  # that one is over MAX_BODY_BYTES: a 413
def test_schema_regex_and_enum_bombs_get_a_400_naming_the_limit(url: str, name: str) -> None:
    schema, limit = BOMBS[name]
    assert limit in refused(post(url, "/v1/chat/completions", as_response_format(schema)), "schema_too_complex")
    assert limit in refused(post(url, "/v1/responses", as_tool(schema)), "schema_too_complex")


@pytest.mark.parametrize("name", list(UNENFORCEABLE))
def test_unenforceable_schemas_get_a_400_naming_the_keyword(url: str, name: str) -> None:
    schema, keyword = UNENFORCEABLE[name]
    message = refused(post(url, "/v1/chat/completions", as_response_format(schema)), "unsupported_schema")
    assert message.startswith("the response format's JSON schema is refused: ") and keyword in message, message


def assistant_call(name: str = "f", arguments: str = "{}", call_id: str = "call_1") -> list[dict[str, Any]]:
    return [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}],
        },
        {"role": "tool", "tool_call_id": call_id, "content": "ok"},
    ]


def nested_list(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
TOOL_HISTORY_BOMBS = {
    "a 10,000-character function name in a call": ({"messages": assistant_call(name="f" * 10_000)}, "at most 64"),
    "a 10,000-character function name in tools": (
        {"messages": ASK, "tools": [{"type": "function", "function": {"name": "f" * 10_000}}]},
        "tools.0.function.name",
    ),
    "arguments nested 1,000 deep": (
        {"messages": assistant_call(arguments="[" * 1000 + "]" * 1000)},
        "nest 1000 levels deep; at most 32",
    ),
    "arguments nested 40 deep as an object": (
        {
            "messages": [
                *ASK,
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"id": "c", "type": "function", "function": {"name": "f", "arguments": {"a": nested_list(40)}}}
                    ],
                },
            ]
        },
        "nest 41 levels deep",
    ),
    "300 tools": ({"messages": ASK, "tools": [TOOL] * 300}, "at most 128 items"),
    "200 calls in one message": (
        {
            "messages": [
                *ASK,
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"id": f"c{i}", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                        for i in range(200)
                    ],
                },
            ]
        },
        "at most 128 items",
    ),
    "a 10,000-character tool_call_id": ({"messages": assistant_call(call_id="c" * 10_000)}, "at most 256 characters"),
}


@pytest.mark.parametrize("name", list(TOOL_HISTORY_BOMBS))
def test_tool_history_bombs_get_a_400(url: str, name: str) -> None:
    body, needle = TOOL_HISTORY_BOMBS[name]
    message = refused(post(url, "/v1/chat/completions", body), "invalid_request")
    assert needle in message, message


RESPONSES_ITEMS = {
    "an unknown type": ([{"type": "item_reference", "id": "x"}], "invalid_input", "type 'item_reference'"),
    "a type that is not a string": ([{"type": ["message"], "role": "user", "content": "hi"}], "invalid_input", "type"),
    "a message without a role": ([{"type": "message", "content": "hi"}], "invalid_input", "role"),
    "a role that does not exist": ([{"role": "wizard", "content": "hi"}], "invalid_input", "role must be one of"),
    "content of the wrong shape": ([{"role": "user", "content": {"text": "hi"}}], "invalid_input", "content must be"),
    "a content part that is not an object": ([{"role": "user", "content": [5]}], "invalid_input", "input_text part"),
    "an image part": (
        [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}],
        "unsupported_content",
        "text-only",
    ),
    "a function_call without call_id": (
        [{"role": "user", "content": "hi"}, {"type": "function_call", "name": "f", "arguments": "{}"}],
        "invalid_input",
        "input",
    ),
    "a function_call without a name": (
        [{"role": "user", "content": "hi"}, {"type": "function_call", "call_id": "c", "arguments": "{}"}],
        "invalid_input",
        "input",
    ),
    "a function_call named 10,000 characters": (
        [{"role": "user", "content": "hi"}, {"type": "function_call", "call_id": "c", "name": "f" * 10_000}],
        "invalid_input",
        "at most 64",
    ),
    "a function_call_output whose output is an object": (
        [{"role": "user", "content": "hi"}, {"type": "function_call_output", "call_id": "c", "output": {"a": 1}}],
        "invalid_input",
        "content must be",
    ),
    "a function_call_output without call_id": (
        [{"role": "user", "content": "hi"}, {"type": "function_call_output", "output": "x"}],
        "invalid_input",
        "tool_call_id",
    ),
    "an item that is not an object": (["hello"], "invalid_request", "input"),
}


@pytest.mark.parametrize("name", list(RESPONSES_ITEMS))
def test_unknown_and_malformed_responses_items_get_a_400(url: str, name: str) -> None:
    items, code, needle = RESPONSES_ITEMS[name]
    message = refused(post(url, "/v1/responses", {"model": "clawbot", "input": items, "max_output_tokens": 4}), code)
    assert needle in message, message


@pytest.mark.parametrize("name", list(REFUSED_BODIES))
def test_bodies_the_published_schema_refuses_get_a_400(url: str, name: str) -> None:
    path, body = REFUSED_BODIES[name]
    r = post(url, path, body)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error", r.text


def test_healthz_answers_while_schema_compiles_are_in_flight(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    in_flight = calls_in_flight(monkeypatch, Grammars, "_compile")
    # Within every limit, and seconds of compile each: four at once keep both compile workers busy past the budget.
    slow = [
        {"type": "object", "properties": {"s": {"type": "string", "maxLength": 150 + i}}, "required": ["s"]}
        for i in range(4)
    ]
    probes: list[int] = []
    with ThreadPoolExecutor(4) as pool:
        answers = [pool.submit(post, url, "/v1/chat/completions", as_response_format(s)) for s in slow]
        wait_until("a compile to start", in_flight, 120, poll_s=0.005)
        with httpx.Client(base_url=url, timeout=30) as probe:
            while in_flight() > 0 or not all(a.done() for a in answers):
                probes.append(probe.get("/healthz").status_code)
        replies = [a.result() for a in answers]
    assert probes and set(probes) == {200}
    for r in replies:  # each either compiled within the budget and answered, or was refused naming the budget
        assert r.status_code == 200 or "GRAMMAR_COMPILE_TIMEOUT_SECONDS (1 s)" in refused(r, "schema_too_complex"), (
            r.text
        )
