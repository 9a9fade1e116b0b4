"""A process recording exchanges as fast as it can, for the kill -9 tests: it prints each request_id once record() returned."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from app.settings import Settings
from bench.waiting import WaitTimedOut, wait_until

ROOT = Path(__file__).resolve().parents[3]

WRITER = """
import asyncio, os, time
from pathlib import Path
from app.settings import Settings
from app.storage.conversations import Exchange, StoreUnavailable
from app.storage.stores import open_conversation_store

async def main():
    url = os.environ.get("CONVERSATION_DATABASE_URL") or None
    store = open_conversation_store(Settings(data_dir=Path(os.environ["DATA_DIR"]), conversation_database_url=url))
    i = 0
    while True:
        ex = Exchange(f"req-{i}", "alice", "/api/chat", [{"role": "user", "content": "q" * 200}], "a" * 500,
                      {"prompt_tokens": 1}, 0.1, time.time())
        i += 1
        try:
            await store.record(ex)
        except StoreUnavailable:
            continue  # the server would answer 503: not acknowledged
        print(ex.request_id, flush=True)  # only after record() returned: the client would now get its answer

asyncio.run(main())
"""


def start_writer(settings: Settings) -> subprocess.Popen[str]:
    """A process recording exchanges as fast as it can, printing each request_id once record() has returned."""
    env = {
        **os.environ,
        "DATA_DIR": str(settings.data_dir),
        "CONVERSATION_DATABASE_URL": url.get_secret_value() if (url := settings.conversation_database_url) else "",
    }
    return subprocess.Popen(
        [sys.executable, "-c", WRITER], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def read_acknowledged(proc: subprocess.Popen[str], count: int, timeout_s: float = 60) -> list[str]:
    """Up to `count` request_ids as the writer prints them: fewer when its output ends or `timeout_s` passes."""
    out = proc.stdout
    assert out is not None
    acknowledged: list[str] = []

    def read_one() -> bool:  # done: enough of them, or the output ended
        line = out.readline()
        if line:
            acknowledged.append(line.strip())
        return not line or len(acknowledged) >= count

    with contextlib.suppress(WaitTimedOut):  # the caller asserts how many it needs
        wait_until(f"{count} acknowledged writes", read_one, timeout_s, poll_s=0)
    return acknowledged


def kill_and_drain(proc: subprocess.Popen[str], acknowledged: list[str]) -> None:
    """kill -9, then collect what it printed before dying: those records had returned too."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert proc.stdout is not None
    acknowledged.extend(line.strip() for line in proc.stdout.read().splitlines() if line.strip())
