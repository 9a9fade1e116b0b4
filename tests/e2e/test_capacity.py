"""A flood against a small queue: the overflow gets 429 + Retry-After at once, the admitted requests are answered."""

from __future__ import annotations

import concurrent.futures as cf
import signal
from pathlib import Path

import httpx

from tests.e2e.server import start_server

FLOOD = 12


def test_full_queue_answers_429_with_retry_after(tmp_path: Path) -> None:
    srv = start_server(tmp_path / "data", MAX_QUEUE="2", MAX_BATCH_SIZE="1")
    try:
        srv.wait_ready()

        def ask(i: int) -> httpx.Response:
            return httpx.post(
                srv.url + "/v1/chat/completions",
                json={
                    "messages": [{"role": "user", "content": f"Count to ten, take {i}."}],
                    "max_tokens": 24,
                    "temperature": 0.5,
                    "seed": i,
                    "ignore_eos": True,
                },
                headers={"Authorization": f"Bearer {srv.api_key}"},
                timeout=120,
            )

        with cf.ThreadPoolExecutor(FLOOD) as pool:
            replies = list(pool.map(ask, range(FLOOD)))
        statuses = sorted(r.status_code for r in replies)
        assert set(statuses) <= {200, 429}, statuses
        refused = [r for r in replies if r.status_code == 429]
        assert refused, f"a queue of 2 took {FLOOD} concurrent requests: {statuses}"
        assert 200 in statuses
        for r in refused:
            assert r.json()["error"]["code"] == "queue_full"
            assert int(r.headers["retry-after"]) >= 1
        metrics = srv.metrics()
        assert f'clawbot_rate_limited_total{{scope="queue"}} {float(len(refused))}' in metrics
    finally:
        srv.stop(signal.SIGKILL)
