"""Hostile sampling parameters against the real server: none of them kills the engine. Each is served (a temperature
too small to divide by is greedy) or refused with a 400 that names the field; a healthy request beside them is
answered, /healthz stays 200 and the engine's failure counter stays at zero."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from tests.e2e.server import Server
from tests.e2e.test_api import FRANCE, assert_error

CHAT = "/v1/chat/completions"
SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}},
    "required": ["ok"],
    "additionalProperties": False,
}
SERVED = [
    (CHAT, {"messages": FRANCE, "max_tokens": 8, "temperature": 1e-300}),
    (CHAT, {"messages": FRANCE, "max_tokens": 8, "temperature": 5e-324, "seed": 7}),
    (CHAT, {"messages": FRANCE, "max_tokens": 8, "temperature": 5e-324, "stream": True}),
    (CHAT, {"messages": FRANCE, "max_tokens": 8, "temperature": 0.7, "repetition_penalty": 0.01}),
    (CHAT, {"messages": FRANCE, "max_tokens": 8, "temperature": 2, "top_p": 1e-300}),
    ("/v1/responses", {"input": "What is the capital of France?", "max_output_tokens": 8, "temperature": 1e-300}),
    # ignore_eos with a grammar: the row ends where the grammar ends instead of asking it for one more mask.
    (
        CHAT,
        {
            "messages": FRANCE,
            "max_tokens": 48,
            "ignore_eos": True,
            "response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": SCHEMA}},
        },
    ),
    (
        CHAT,
        {
            "messages": FRANCE,
            "max_tokens": 48,
            "ignore_eos": True,
            "tools": [{"type": "function", "function": {"name": "answer", "parameters": SCHEMA}}],
            "tool_choice": {"type": "function", "function": {"name": "answer"}},
        },
    ),
]
REFUSED = [
    ({"repetition_penalty": 1e-300, "temperature": 0.7}, "repetition_penalty"),
    ({"repetition_penalty": 0}, "repetition_penalty"),
    ({"temperature": -5e-324}, "temperature"),
    ({"temperature": 1e308}, "temperature"),
    ({"top_p": 0}, "top_p"),
]


def _post(server: Server, path: str, body: dict[str, Any], headers: dict[str, str]) -> httpx.Response:
    with server.client() as c:
        return c.post(path, json=body, headers=headers)


def test_hostile_parameters_beside_a_healthy_request(server: Server, token: str) -> None:
    auth = {"Authorization": f"Bearer {server.api_key}"}
    healthy = {"messages": FRANCE, "max_tokens": 24, "temperature": 0}
    with ThreadPoolExecutor(max_workers=len(SERVED) + 1) as pool:
        answer = pool.submit(_post, server, CHAT, healthy, auth)
        served = [pool.submit(_post, server, path, body, auth) for path, body in SERVED]
        seed = pool.submit(
            _post,
            server,
            "/api/chat",
            {"messages": FRANCE, "max_tokens": 8, "temperature": 1e-300},
            {"Authorization": f"Bearer {token}"},
        )
        results = [f.result() for f in served]
        r = answer.result()
    assert r.status_code == 200 and "Paris" in r.json()["choices"][0]["message"]["content"], r.text
    assert seed.result().status_code == 200, seed.result().text
    for (_path, body), r in zip(SERVED, results):
        assert r.status_code == 200, (body, r.text)
        if body.get("stream"):
            assert r.text.rstrip().endswith("data: [DONE]") and '"error"' not in r.text, r.text
    grammar_bound = [r.json()["choices"][0] for (_, body), r in zip(SERVED, results) if body.get("ignore_eos")]
    assert grammar_bound[0]["finish_reason"] == "stop" and grammar_bound[0]["message"]["content"].startswith("{")
    assert grammar_bound[1]["finish_reason"] == "tool_calls", grammar_bound[1]
    for fields, name in REFUSED:
        error = assert_error(_post(server, CHAT, {"messages": FRANCE, "max_tokens": 4, **fields}, auth), 400)
        assert name in error["message"], error
    with server.client() as c:
        assert c.get("/healthz").status_code == 200
    metrics = server.metrics()
    assert "clawbot_engine_failures_total{" not in metrics, [
        line for line in metrics.splitlines() if "engine_failures" in line
    ]
