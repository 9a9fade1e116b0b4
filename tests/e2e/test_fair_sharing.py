"""Fair sharing and abuse through a real `python -m app` in production mode with several keys, the embedded model and a
real redis-server holding the limits: the per-key concurrency cap and token budget (hang-ups included), scopes
(ignore_eos, admin-only keys), a cache that is per key and exact, and text that cannot be encoded."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
import redis

from bench.server_process import write_key_files
from bench.waiting import wait_until
from tests.e2e.server import Server, running_server
from tests.e2e.test_disconnect import metric, wait_for
from tests.redis_server import RedisServer

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
KEYS = {
    "alice": ("chat",),
    "bob": ("chat",),
    "carol": ("chat",),
    "ops": ("admin",),
    "bench": ("chat", "benchmark"),
    "dave": ("chat", "benchmark"),
    "erin": ("chat", "benchmark"),
}
# Tokens a key may use a minute: below one long prompt, above what the other tests spend per key.
TOKEN_BUDGET = 400
WAIT_S = 120.0


@pytest.fixture(scope="module")
def limits(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """The redis-server the replica keeps its rate limits, token budgets and concurrency slots in."""
    server = RedisServer(Path(tmp_path_factory.mktemp("fair-redis")))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def fair(tmp_path_factory: pytest.TempPathFactory, limits: RedisServer) -> Iterator[tuple[Server, dict[str, str]]]:
    root = Path(tmp_path_factory.mktemp("fair-sharing"))
    env, raw = write_key_files(root / "secrets", KEYS)
    with running_server(
        root / "data",
        **env,
        MAX_CONCURRENT_PER_KEY="2",
        RATE_LIMIT_TOKENS_PER_KEY=str(TOKEN_BUDGET),
        REDIS_URL=limits.url,
    ) as srv:
        yield srv, raw


def bearer(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


def test_a_key_at_its_concurrency_cap_gets_429_while_other_keys_are_served(fair: tuple[Server, dict[str, str]]) -> None:
    srv, keys = fair
    long_stream = {
        "messages": [{"role": "user", "content": "Count from one to one hundred."}],
        "max_tokens": 60,
        "ignore_eos": True,
        "temperature": 0.7,
        "stream": True,
    }
    short = {"messages": FRANCE, "max_tokens": 1, "ignore_eos": True}
    with ExitStack() as held:
        streams = [
            held.enter_context(
                held.enter_context(srv.client()).stream(
                    "POST", "/v1/chat/completions", json=long_stream, headers=bearer(keys["bench"])
                )
            )
            for _ in range(2)
        ]
        assert [s.status_code for s in streams] == [200, 200]  # headers sent: both hold one of bench's 2 slots
        with srv.client() as c:
            refused = c.post("/v1/chat/completions", json=short, headers=bearer(keys["bench"]))
            assert refused.status_code == 429 and refused.json()["error"]["code"] == "key_concurrency_limit", (
                refused.text
            )
            assert int(refused.headers["retry-after"]) >= 1
            other = c.post(
                "/v1/chat/completions", json={"messages": FRANCE, "max_tokens": 4}, headers=bearer(keys["alice"])
            )
            assert other.status_code == 200, other.text
    # The two streams were dropped mid-generation: their slots come back.
    with srv.client() as c:

        def served() -> bool:
            r = c.post("/v1/chat/completions", json=short, headers=bearer(keys["bench"]))
            assert r.status_code == 200 or r.json()["error"]["code"] == "key_concurrency_limit", r.text
            return r.status_code == 200

        wait_until("the slots of disconnected streams to come back", served, WAIT_S)
    assert 'clawbot_rate_limited_total{scope="key_concurrency"}' in srv.metrics()


def test_ignore_eos_and_chat_need_their_scopes(fair: tuple[Server, dict[str, str]]) -> None:
    srv, keys = fair
    with srv.client() as c:
        r = c.post(
            "/v1/chat/completions",
            json={"messages": FRANCE, "max_tokens": 2, "ignore_eos": True},
            headers=bearer(keys["alice"]),
        )
        assert r.status_code == 403 and "ignore_eos" in r.json()["error"]["message"], r.text
        for url, body in (("/v1/chat/completions", {"messages": FRANCE, "max_tokens": 2}), ("/v1/models", None)):
            r = c.request("POST" if body else "GET", url, json=body, headers=bearer(keys["ops"]))
            assert r.status_code == 403 and r.json()["error"]["code"] == "insufficient_scope", (url, r.text)


def test_a_key_past_its_token_budget_gets_429_while_other_keys_are_served(fair: tuple[Server, dict[str, str]]) -> None:
    srv, keys = fair
    long_prompt = {
        "messages": [{"role": "user", "content": "Paris is lovely. " * 200}],
        "max_tokens": 1,
        "temperature": 0.7,
    }
    with srv.client() as c:
        first = c.post("/v1/chat/completions", json=long_prompt, headers=bearer(keys["carol"]))
        assert first.status_code == 200, first.text  # admitted while the budget is positive, charged what it used
        assert first.json()["usage"]["total_tokens"] > 2 * TOKEN_BUDGET  # a minute of refill would not cover the debt
        refused = c.post("/v1/chat/completions", json=long_prompt, headers=bearer(keys["carol"]))
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "token_budget_exceeded", refused.text
        assert int(refused.headers["retry-after"]) >= 1
        assert (
            c.post(
                "/v1/chat/completions", json={"messages": FRANCE, "max_tokens": 2}, headers=bearer(keys["bob"])
            ).status_code
            == 200
        )


def test_the_cache_is_per_key_and_exact(fair: tuple[Server, dict[str, str]]) -> None:
    srv, keys = fair
    with srv.client() as c:
        tokens = {k: c.post("/api/auth", json={"api_key": keys[k]}).json()["token"] for k in ("alice", "bob")}

        def cached(key_id: str, question: str) -> bool:
            r = c.post(
                "/api/chat",
                json={"messages": [{"role": "user", "content": question}], "max_tokens": 8},
                headers=bearer(tokens[key_id]),
            )
            assert r.status_code == 200, r.text
            return bool(r.json()["cached"])

        question = "Name one river in France."
        assert [cached("alice", question), cached("alice", question)] == [False, True]
        assert cached("bob", question) is False  # bob learns nothing about what alice asked
        assert cached("alice", question.replace(" ", "  ")) is False  # other spacing is other tokens: another question


@pytest.mark.parametrize(
    ("url", "body"),
    [
        ("/v1/chat/completions", b'{"messages":[{"role":"user","content":"hi \\ud800 there"}]}'),
        ("/v1/chat/completions", b'{"messages":[{"role":"user","content":[{"type":"text","text":"\\udfff"}]}]}'),
        ("/v1/chat/completions", b'{"messages":[{"role":"user","content":"hi"}],"stop":"\\ud83d"}'),
        ("/api/chat", b'{"messages":[{"role":"user","content":"\\ud800"}]}'),
        ("/api/auth", b'{"api_key":"ck-\\ud800"}'),
    ],
)
def test_text_that_cannot_be_encoded_is_a_400(fair: tuple[Server, dict[str, str]], url: str, body: bytes) -> None:
    srv, keys = fair
    with srv.client() as c:
        credential = c.post("/api/auth", json={"api_key": keys["alice"]}).json()["token"]
        r = c.post(url, content=body, headers={**bearer(credential), "Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert "surrogate" in error["message"] or "unicode" in error["message"].lower(), error


# About 280 tokens with the chat template: two hang-ups spend more than the key's minute of tokens.
HANG_UP_PROMPT = "Tell me a long story about a lighthouse keeper and the ships he guided home. " * 14


def hang_up(srv: Server, key: str, *, stream: bool) -> int | None:
    """Send a long generation and hang up once it is under way (a stream: after its first token). Returns the status
    when the request is refused instead (nothing was generated), else None once the server has counted the 499."""
    gone = metric(srv.metrics(), "clawbot_requests_total", route="/v1/chat/completions", status="499")
    # A first token, not any token: a generation cancelled just before may still add one.
    started = metric(srv.metrics(), "clawbot_time_to_first_token_seconds_count")
    body = json.dumps(
        {
            "messages": [{"role": "user", "content": HANG_UP_PROMPT}],
            "max_tokens": 256,
            "ignore_eos": True,
            "stream": stream,
        }
    ).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", srv.port), timeout=WAIT_S) as sock:
        sock.sendall(head + body)
        if stream:
            received = b""
            while not re.search(rb'"content": "[^"]', received):  # a real token (the role chunk's content is "")
                chunk = sock.recv(4096)
                assert chunk, f"the server closed the connection: {received[:300]!r}"
                received += chunk
                if received.startswith(b"HTTP/1.1 4"):
                    return int(received.split()[1])
        else:
            sock.settimeout(0.05)  # the recv below is the poll's pause
            refused: list[int] = []

            def started_or_refused() -> bool:
                if metric(srv.metrics(), "clawbot_time_to_first_token_seconds_count") > started:
                    return True
                try:
                    answer = sock.recv(4096)
                except TimeoutError:
                    return False
                if answer:
                    refused.append(int(answer.split()[1]))  # refused before any token
                return bool(answer)

            wait_until("the generation to start", started_or_refused, WAIT_S, poll_s=0)
            if refused:
                return refused[0]
    wait_for(
        srv,
        "the hang-up to be counted",
        lambda t: metric(t, "clawbot_requests_total", route="/v1/chat/completions", status="499") == gone + 1,
        WAIT_S,
    )
    return None


@pytest.mark.parametrize("key_id, stream", [("dave", True), ("erin", False)], ids=["streams", "json"])
def test_a_key_that_hangs_up_is_charged_what_it_used_and_meets_its_budget(
    fair: tuple[Server, dict[str, str]], limits: RedisServer, key_id: str, stream: bool
) -> None:
    srv, keys = fair
    started = time.monotonic()
    hang_ups, refused = 0, None
    while refused is None:
        assert hang_ups < 8, "a key that hangs up every time was never held to its budget"
        refused = hang_up(srv, keys[key_id], stream=stream)
        hang_ups += refused is None
    assert refused == 429 and hang_ups >= 2  # admitted while its budget lasted, then refused like any other key
    with srv.client() as c:
        again = c.post("/v1/chat/completions", json={"messages": FRANCE, "max_tokens": 2}, headers=bearer(keys[key_id]))
        assert again.status_code == 429 and again.json()["error"]["code"] == "token_budget_exceeded", again.text
        assert (
            c.post(
                "/v1/chat/completions", json={"messages": FRANCE, "max_tokens": 2}, headers=bearer(keys["bob"])
            ).status_code
            == 200
        )

    # Each hang-up stayed a 499 and was charged the prompt it had read and the tokens generated before it.
    lines = [json.loads(line) for line in srv.log().splitlines() if line.startswith("{")]
    gone = [d for d in lines if d.get("msg") == "request" and d.get("key_id") == key_id and d.get("status") == 499]
    assert len(gone) == hang_ups
    prompt = gone[0]["prompt_tokens"]
    assert prompt > 250 and all(d["prompt_tokens"] == prompt and 1 <= d["completion_tokens"] < 256 for d in gone), gone
    charged = sum(d["prompt_tokens"] + d["completion_tokens"] for d in gone)
    # The charges are in Redis, where every replica reads the key's budget: what is left is the budget, less them,
    # plus at most what refilled meanwhile.
    bucket = float(redis.Redis.from_url(limits.url).hget(f"clawbot:rl:tokens:{key_id}", "t") or TOKEN_BUDGET)
    refill = TOKEN_BUDGET / 60 * (time.monotonic() - started)
    assert TOKEN_BUDGET - charged <= bucket <= TOKEN_BUDGET - charged + refill + 1
    assert not [d for d in lines if d.get("msg") == "request" and d.get("key_id") == key_id and d["status"] >= 500]
