"""The HTTP API through a real uvicorn process with the embedded model: answers, shapes and errors."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.e2e.server import Server

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


def assert_error(r: httpx.Response, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"type", "message", "code"}, body
    assert "Traceback" not in r.text
    if code:
        assert body["error"]["code"] == code, body
    return body["error"]


def test_probes_and_docs(server: Server) -> None:
    with server.client() as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        assert c.get("/readyz").status_code == 200
        assert "/v1/chat/completions" in c.get("/openapi.json").json()["paths"]
        assert c.get("/docs").status_code == 200


def test_seed_api_answers_paris(server: Server, token: str) -> None:
    with server.client() as c:
        r = c.post(
            "/api/chat", json={"messages": FRANCE, "max_tokens": 24}, headers={"Authorization": f"Bearer {token}"}
        )
    assert r.status_code == 200, r.text
    body = r.json()
    assert "Paris" in body["message"]["content"]
    assert body["message"]["role"] == "assistant"
    assert body["usage"]["completion_tokens"] > 0
    assert r.headers["x-request-id"]


def test_openai_api_answers_paris_with_usage(server: Server) -> None:
    with server.client() as c:
        r = c.post(
            "/v1/chat/completions",
            json={"model": "clawbot", "messages": FRANCE, "max_tokens": 24, "temperature": 0},
            headers={"Authorization": f"Bearer {server.api_key}"},
        )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion"
    assert "Paris" in body["choices"][0]["message"]["content"]
    assert body["choices"][0]["finish_reason"] in ("stop", "length")
    u = body["usage"]
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"] and u["prompt_tokens"] > 5


def test_openai_stream_is_sse_ending_in_done_with_usage(server: Server) -> None:
    payload = {
        "messages": FRANCE,
        "max_tokens": 24,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with (
        server.client() as c,
        c.stream(
            "POST", "/v1/chat/completions", json=payload, headers={"Authorization": f"Bearer {server.api_key}"}
        ) as r,
    ):
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line[len("data: ") :] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(ch["choices"][0]["delta"].get("content", "") for ch in chunks if ch["choices"])
    assert "Paris" in text
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    finishes = [
        ch["choices"][0]["finish_reason"] for ch in chunks if ch["choices"] and ch["choices"][0]["finish_reason"]
    ]
    assert finishes in (["stop"], ["length"])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0


def test_models_lists_the_served_model(server: Server) -> None:
    with server.client() as c:
        r = c.get("/v1/models", headers={"Authorization": f"Bearer {server.api_key}"})
    assert r.status_code == 200
    assert [m["id"] for m in r.json()["data"]] == ["clawbot"]
    # MAX_TOKENS is not set: the embedded model's own output cap applies, and the card says so.
    assert r.json()["data"][0]["max_output_tokens"] == 256


def test_the_seeds_own_request_is_answered(server: Server, token: str) -> None:
    """The seeds' test request, in a language the English-only embedded model was not trained on: an answer within
    the model's output cap, not a generation that runs into its deadline."""
    with server.client() as c:
        r = c.post(
            "/api/chat",
            json={"messages": [{"role": "user", "content": "你好,介绍一下这个机器人"}]},
            headers={"Authorization": f"Bearer {token}"},
        )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["finish_reason"] in ("stop", "length") and body["message"]["content"]
    assert 0 < body["usage"]["completion_tokens"] <= body["usage"]["max_completion_tokens"] == 256


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        ({"messages": []}, "at least 1 item"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "role"),
        ({"messages": [{"role": "user"}]}, "content"),
        ({"messages": "hello"}, "messages"),
        ({"messages": FRANCE, "max_tokens": 0}, "max_tokens"),
        ({"messages": FRANCE, "temperature": 7}, "temperature"),
        ({"messages": FRANCE, "n": 3}, "n"),
        ({"messages": [{"role": "system", "content": "only a system prompt"}]}, "role 'user'"),
    ],
)
def test_bad_chat_input_is_a_400_that_says_why(server: Server, payload: dict, needle: str) -> None:
    with server.client() as c:
        r = c.post("/v1/chat/completions", json=payload, headers={"Authorization": f"Bearer {server.api_key}"})
    err = assert_error(r, 400)
    assert needle in err["message"], err


def test_prompt_longer_than_the_context_window_is_refused(server: Server) -> None:
    # Together far over the model's 8192-token window (the size limit is the window, counted in tokens).
    huge = [
        {"role": "user", "content": "Paris is lovely. " * 1800},
        {"role": "assistant", "content": "Yes."},
        {"role": "user", "content": "Paris is lovely. " * 1800},
    ]
    with server.client() as c:
        r = c.post(
            "/v1/chat/completions", json={"messages": huge}, headers={"Authorization": f"Bearer {server.api_key}"}
        )
    err = assert_error(r, 400, "context_length_exceeded")
    assert "context window" in err["message"]


def test_wrong_content_type_and_malformed_json(server: Server) -> None:
    auth = {"Authorization": f"Bearer {server.api_key}"}
    with server.client() as c:
        assert_error(
            c.post("/v1/chat/completions", content="messages=hi", headers={**auth, "Content-Type": "text/plain"}), 415
        )
        err = assert_error(
            c.post("/v1/chat/completions", content=b"{not json", headers={**auth, "Content-Type": "application/json"}),
            400,
        )
        assert "JSON" in err["message"] or "json" in err["message"]


def test_auth_failures_use_the_error_shape(server: Server) -> None:
    with server.client() as c:
        assert_error(c.post("/api/chat", json={"messages": FRANCE}), 401)
        assert_error(c.post("/api/chat", json={"messages": FRANCE}, headers={"Authorization": "Bearer nope"}), 401)
        assert_error(c.post("/api/auth", json={"api_key": "ck-wrong"}), 401)
        assert_error(c.get("/no/such/path"), 404)


def test_metrics_count_requests_tokens_and_batches(server: Server, token: str) -> None:
    with server.client() as c:
        c.post("/api/chat", json={"messages": FRANCE, "max_tokens": 8}, headers={"Authorization": f"Bearer {token}"})
        text = server.metrics()
        assert c.get("/metrics").status_code == 404  # only on METRICS_PORT, which the LoadBalancer does not expose
    for name in (
        'clawbot_requests_total{route="/api/chat",status="200"}',
        "clawbot_request_duration_seconds_bucket",
        "clawbot_time_to_first_token_seconds_count",
        "clawbot_prompt_tokens_total",
        "clawbot_generated_tokens_total",
        "clawbot_queue_depth",
        "clawbot_inflight_requests",
        "clawbot_batch_size_bucket",
        "clawbot_model_memory_bytes",
    ):
        assert name in text, name
    assert server.api_key not in text and token not in text


def test_request_log_is_json_without_prompt_text(server: Server, token: str) -> None:
    secret_prompt = "my-private-question-7d1f"
    with server.client() as c:
        r = c.post(
            "/api/chat",
            json={"messages": [{"role": "user", "content": secret_prompt}], "max_tokens": 4},
            headers={"Authorization": f"Bearer {token}", "X-Request-ID": "trace-42"},
        )
    assert r.status_code == 200
    log = server.log()
    assert secret_prompt not in log and server.api_key not in log and token not in log
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    mine = [d for d in lines if d.get("request_id") == "trace-42"]
    assert mine and mine[-1]["route"] == "/api/chat" and mine[-1]["status"] == 200
    assert mine[-1]["completion_tokens"] > 0 and mine[-1]["latency_ms"] > 0
    # The audit trail has the successful use too (refusals are covered in tests/app/access/test_audit.py).
    audit = [d["audit"] for d in lines if d.get("logger") == "clawbot.audit"]
    assert {"event": "key_usage", "key_id": "dev", "via": "jwt", "route": "/api/chat", "status": 200} in [
        {k: a[k] for k in ("event", "key_id", "via", "route", "status")} for a in audit
    ], audit[-3:]


def test_a_system_prompt_sent_again_is_reported_as_cached_tokens_in_both_apis(server: Server) -> None:
    system = "You are the travel desk of a small airline. Answer briefly and politely. " * 8  # ~130 tokens
    auth = {"Authorization": f"Bearer {server.api_key}"}

    def chat(question: str, **extra: object) -> httpx.Response:
        body = {
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}],
            "max_tokens": 4,
            **extra,
        }
        return c.post("/v1/chat/completions", json=body, headers=auth)

    with server.client() as c:
        first = chat("Where do you fly?")
        assert first.status_code == 200, first.text
        assert first.json()["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
        again = chat("How much luggage may I take?").json()["usage"]  # another question: not the response cache
        assert 64 <= again["prompt_tokens_details"]["cached_tokens"] < again["prompt_tokens"], again
        with c.stream(
            "POST",
            "/v1/chat/completions",
            headers=auth,
            json={
                "messages": [{"role": "system", "content": system}, {"role": "user", "content": "Do you serve food?"}],
                "max_tokens": 4,
                "stream": True,
                "stream_options": {"include_usage": True},
            },
        ) as r:
            chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
        assert chunks[-1]["usage"]["prompt_tokens_details"]["cached_tokens"] >= 64, chunks[-1]
        r = c.post(
            "/v1/responses",
            headers=auth,
            json={"instructions": system, "input": "Can I bring a dog?", "max_output_tokens": 4},
        )
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["input_tokens_details"]["cached_tokens"] >= 64, r.json()["usage"]


def test_each_200_body_is_what_openapi_json_documents(server: Server, token: str) -> None:
    """Answers checked against the served /openapi.json (OpenAPI 3.1: its schemas are JSON Schema 2020-12), each
    `data:` of a chat completion stream against ChatCompletionChunk."""
    from jsonschema import Draft202012Validator

    with server.client() as c:
        schema = c.get("/openapi.json").json()

        def check(path: str, method: str, body: dict, ref: str | None = None) -> None:
            documented = schema["paths"][path][method]["responses"]["200"]["content"]["application/json"]["schema"]
            root = {"$ref": ref or documented["$ref"], "components": schema["components"]}
            errors = [
                f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
                for e in Draft202012Validator(root).iter_errors(body)
            ]
            assert errors == [], (path, errors, body)

        key = {"Authorization": f"Bearer {server.api_key}"}
        for path in ("/healthz", "/readyz"):
            check(path, "get", c.get(path).json())
        check("/v1/models", "get", c.get("/v1/models", headers=key).json())
        check(
            "/api/chat",
            "post",
            c.post(
                "/api/chat", json={"messages": FRANCE, "max_tokens": 8}, headers={"Authorization": f"Bearer {token}"}
            ).json(),
        )
        check(
            "/v1/chat/completions",
            "post",
            c.post("/v1/chat/completions", headers=key, json={"messages": FRANCE, "max_tokens": 8}).json(),
        )
        check(
            "/v1/responses",
            "post",
            c.post(
                "/v1/responses", headers=key, json={"input": "What is the capital of France?", "max_output_tokens": 8}
            ).json(),
        )
        payload = {"messages": FRANCE, "max_tokens": 8, "stream": True, "stream_options": {"include_usage": True}}
        with c.stream("POST", "/v1/chat/completions", json=payload, headers=key) as r:
            events = [line[len("data: ") :] for line in r.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]" and len(events) > 2
        for event in events[:-1]:
            check("/v1/chat/completions", "post", json.loads(event), "#/components/schemas/ChatCompletionChunk")
