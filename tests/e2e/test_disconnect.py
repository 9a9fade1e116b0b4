"""A client that hangs up mid-generation: logged and counted as 499 (never 5xx), and its batch slot is freed."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Callable

import pytest

from bench.waiting import wait_until
from tests.e2e.server import Server

MAX_TOKENS = 256  # the embedded model's output cap, which the server in tests/e2e/server.py keeps
ROUTE = "/v1/chat/completions"


def metric(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = re.escape(name + (f"{{{wanted}}}" if labels else "")) + r" ([0-9.e+-]+)$"
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def wait_for(srv: Server, what: str, check: Callable[[str], bool], timeout_s: float = 120) -> str:
    def metrics_if_so() -> str | None:
        text = srv.metrics()
        return text if check(text) else None

    return wait_until(what, metrics_if_so, timeout_s, poll_s=0.05, detail=lambda: srv.log()[-3000:])


def open_request(srv: Server, stream: bool) -> socket.socket:
    body = json.dumps(
        {
            "messages": [{"role": "user", "content": "Tell me a long story about a lighthouse keeper."}],
            "max_tokens": MAX_TOKENS,
            "ignore_eos": True,
            "temperature": 0,
            "stream": stream,
        }
    ).encode()
    head = (
        f"POST {ROUTE} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {srv.api_key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=120)
    sock.sendall(head + body)
    return sock


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_a_client_that_hangs_up_is_a_499_and_its_generation_stops(server: Server, stream: bool) -> None:
    before = server.metrics()
    generated_before = metric(before, "clawbot_generated_tokens_total")
    gone_before = metric(before, "clawbot_requests_total", route=ROUTE, status="499")
    sock = open_request(server, stream)
    try:
        if stream:
            received = b""
            while b'"content": "' not in received.split(b'"role"', 1)[-1]:  # a real token after the role chunk
                chunk = sock.recv(4096)
                assert chunk, "the server closed the stream"
                received += chunk
        else:
            wait_for(
                server,
                "the generation to start",
                lambda t: metric(t, "clawbot_generated_tokens_total") > generated_before,
            )
    finally:
        sock.close()
    after = wait_for(server, "the slot to be freed", lambda t: metric(t, "clawbot_inflight_requests") == 0)
    assert metric(after, "clawbot_generated_tokens_total") - generated_before < MAX_TOKENS  # cancelled, not run out
    after = wait_for(
        server,
        "the request to be counted",
        lambda t: metric(t, "clawbot_requests_total", route=ROUTE, status="499") == gone_before + 1,
    )
    assert not re.search(rf'clawbot_requests_total{{route="{ROUTE}",status="5\d\d"}}', after)
    lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    logged = [
        rec for rec in lines if rec.get("msg") == "request" and rec.get("route") == ROUTE and rec.get("status") == 499
    ]
    assert len(logged) >= gone_before + 1
