"""Process lifecycle under load: SIGTERM lets accepted requests finish, or answers them with a clean 503 when the
grace period is too short; a bad model path exits non-zero with a clear log."""

from __future__ import annotations

import concurrent.futures as cf
import json
import signal
from pathlib import Path

import httpx

from bench.waiting import wait_until
from tests.e2e.server import Server, start_server

PROMPT = [{"role": "user", "content": "Tell me a long story about a lighthouse keeper."}]


def _chat(url: str, key: str, max_tokens: int) -> httpx.Response:
    return httpx.post(
        url + "/v1/chat/completions",
        json={"messages": PROMPT, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True},
        headers={"Authorization": f"Bearer {key}"},
        timeout=660,
    )


def _stream(url: str, key: str, max_tokens: int) -> tuple[int, list[str]]:
    body = {"messages": PROMPT, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True, "stream": True}
    with httpx.stream(
        "POST", url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=300
    ) as r:
        return r.status_code, [line.removeprefix("data: ") for line in r.iter_lines() if line.startswith("data: ")]


def _wait_inflight(srv: Server, n: int, timeout_s: float = 180) -> None:
    """Until the engine holds n requests (queued or generating): a gauge warm-up leaves at 0, unlike a counter."""
    wait_until(
        f"{n} requests in flight",
        lambda: f"clawbot_inflight_requests {float(n)}" in srv.metrics(),
        timeout_s,
        poll_s=0.05,
        detail=lambda: srv.log()[-3000:],
    )


def test_sigterm_under_load_finishes_every_accepted_request(tmp_path: Path) -> None:
    # Generous grace and generation timeouts: the point is that accepted work finishes however loaded the
    # machine is (a crowded 2-core box can take seconds per decode step); the process exits as soon as it has.
    srv = start_server(tmp_path / "data", SHUTDOWN_GRACE_SECONDS="600", GENERATION_TIMEOUT_SECONDS="600")
    try:
        srv.wait_ready()
        with cf.ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(_chat, srv.url, srv.api_key, 16) for _ in range(8)]
            _wait_inflight(srv, 8)
            srv.proc.send_signal(signal.SIGTERM)
            replies = [f.result(timeout=660) for f in futures]
        assert [r.status_code for r in replies] == [200] * 8, [r.text for r in replies if r.status_code != 200]
        assert all(r.json()["usage"]["completion_tokens"] == 16 for r in replies)
        assert srv.proc.wait(120) == 0
    finally:
        srv.stop(signal.SIGKILL)


def test_sigterm_with_too_short_a_grace_answers_503_or_an_error_event_never_500(tmp_path: Path) -> None:
    # 256 tokens for four requests take far longer than the 2 s grace; the engine's deadline (1 s)
    # comes before uvicorn's (2 s), so every handler still answers.
    srv = start_server(tmp_path / "data", SHUTDOWN_GRACE_SECONDS="2")
    try:
        srv.wait_ready()
        with cf.ThreadPoolExecutor(4) as pool:
            plain = [pool.submit(_chat, srv.url, srv.api_key, 256) for _ in range(2)]
            streams = [pool.submit(_stream, srv.url, srv.api_key, 256) for _ in range(2)]
            _wait_inflight(srv, 4)
            srv.proc.send_signal(signal.SIGTERM)
            replies = [f.result(timeout=120) for f in plain]
            streamed = [f.result(timeout=120) for f in streams]
        for r in replies:
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "shutting_down"
            assert "grace period" in r.json()["error"]["message"]
            assert int(r.headers["retry-after"]) >= 1
        for status, events in streamed:
            assert status == 200
            assert events[-1] == "[DONE]", events[-3:]
            assert json.loads(events[-2])["error"]["code"] == "shutting_down", events[-3:]
        assert srv.proc.wait(60) == 0
        assert "Cancel" not in srv.log()  # uvicorn never had to cancel a handler past its graceful timeout
    finally:
        srv.stop(signal.SIGKILL)


def test_unloadable_model_exits_non_zero_and_says_why(tmp_path: Path) -> None:
    srv = start_server(tmp_path / "data", MODEL_PATH=str(tmp_path / "no-such-model"))
    try:
        code = srv.proc.wait(120)
    finally:
        srv.stop(signal.SIGKILL)
    assert code == 1, srv.log()[-2000:]
    assert "exiting: model failed to load" in srv.log()
    assert "no-such-model" in srv.log()
    assert "Traceback" not in srv.log()
