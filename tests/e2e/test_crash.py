"""`kill -9` under load: every exchange the server answered with 200 is in the conversation store afterwards."""
from __future__ import annotations

import signal
import sqlite3
import threading
import time
from pathlib import Path

import httpx

from tests.e2e.server import start_server

CLIENTS = 16
ANSWERS_BEFORE_KILL = 40


def _client_loop(url: str, key: str, worker: int, answered: list[str], stop: threading.Event) -> None:
    with httpx.Client(base_url=url, timeout=120, headers={"Authorization": f"Bearer {key}"}) as client:
        n = 0
        while not stop.is_set():
            n += 1
            body = {
                # Distinct prompts and sampling, so no answer comes from the response cache.
                "messages": [{"role": "user", "content": f"Client {worker} asks question {n}: name a colour."}],
                "max_tokens": 6,
                "temperature": 0.8,
                "seed": worker * 1000 + n,
            }
            try:
                r = client.post("/v1/chat/completions", json=body)
            except httpx.HTTPError:
                return  # the server died mid-request: this one was never answered
            if r.status_code == 200:
                answered.append(r.json()["id"])


def test_kill_9_under_load_loses_no_answered_exchange(tmp_path: Path) -> None:
    srv = start_server(tmp_path / "data", RATE_LIMIT_PER_KEY="100000", RATE_LIMIT_PER_IP="100000")
    answered: list[str] = []
    stop = threading.Event()
    threads = [
        threading.Thread(target=_client_loop, args=(srv.url, srv.api_key, i, answered, stop), daemon=True)
        for i in range(CLIENTS)
    ]
    try:
        srv.wait_ready()
        for t in threads:
            t.start()
        deadline = time.time() + 240
        while len(answered) < ANSWERS_BEFORE_KILL and time.time() < deadline:
            time.sleep(0.05)
        assert len(answered) >= ANSWERS_BEFORE_KILL, f"only {len(answered)} answers in 240 s:\n{srv.log()[-3000:]}"
        srv.proc.send_signal(signal.SIGKILL)  # mid-load: other requests are still being generated and written
        srv.proc.wait(30)
    finally:
        stop.set()
        srv.stop(signal.SIGKILL)
        for t in threads:
            t.join(30)
    seen = list(answered)
    db = sqlite3.connect(srv.data_dir / "conversations.sqlite3")
    try:
        stored = {row[0] for row in db.execute("SELECT request_id FROM exchanges")}
    finally:
        db.close()
    missing = [rid for rid in seen if rid not in stored]
    assert not missing, f"{len(missing)} of {len(seen)} answered exchanges are not in the store: {missing[:5]}"
    assert len(stored) >= len(seen)
