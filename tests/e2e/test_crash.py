"""`kill -9` under load: every exchange the server answered with 200 is in the conversation store afterwards."""

from __future__ import annotations

import signal
import sqlite3
from pathlib import Path

from tests.e2e.load import Load
from tests.e2e.server import start_server

CLIENTS = 16
ANSWERS_BEFORE_KILL = 40


def test_kill_9_under_load_loses_no_answered_exchange(tmp_path: Path) -> None:
    srv = start_server(tmp_path / "data", RATE_LIMIT_PER_KEY="100000", RATE_LIMIT_PER_IP="100000")
    load = Load([srv.url], srv.api_key, CLIENTS)
    try:
        srv.wait_ready()
        load.start()
        assert load.wait_for(ANSWERS_BEFORE_KILL), f"only {len(load.answered)} answers in 240 s:\n{srv.log()[-3000:]}"
        srv.proc.send_signal(signal.SIGKILL)  # mid-load: other requests are still being generated and written
        srv.proc.wait(30)
    finally:
        load.stop()
        srv.stop(signal.SIGKILL)
    seen = list(load.answered)
    db = sqlite3.connect(srv.data_dir / "conversations.sqlite3")
    try:
        stored = {row[0] for row in db.execute("SELECT request_id FROM exchanges")}
    finally:
        db.close()
    missing = [rid for rid in seen if rid not in stored]
    assert not missing, f"{len(missing)} of {len(seen)} answered exchanges are not in the store: {missing[:5]}"
    assert len(stored) >= len(seen)
