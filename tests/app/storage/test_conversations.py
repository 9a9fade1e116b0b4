"""The conversation store: durable once record() returns (even through kill -9), paged, filtered, exported, purged."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.storage.conversations import DB_NAME, ConversationStore, Exchange

ROOT = Path(__file__).resolve().parents[3]


def _ex(i: int, key_id: str = "alice", at: float | None = None) -> Exchange:
    return Exchange(
        request_id=f"req-{i:04d}",
        key_id=key_id,
        route="/api/chat",
        messages=[{"role": "user", "content": f"question {i} — é"}],
        answer=f"answer {i}",
        usage={"prompt_tokens": 5, "completion_tokens": 2, "cached": False},
        latency_s=0.25,
        created_at=at if at is not None else time.time() + i * 0.001,
    )


def test_store_is_wal_with_full_sync(tmp_path: Path) -> None:
    store = ConversationStore(tmp_path, retention_days=30)
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # noqa: SLF001
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL  # noqa: SLF001
    store.close()


def test_shared_volume_mode_uses_the_rollback_journal_and_sees_every_writer(tmp_path: Path) -> None:
    # Two pods on one ReadWriteMany volume: two connections, each writing; each sees the other's rows.
    a = ConversationStore(tmp_path, retention_days=30, journal="delete")
    b = ConversationStore(tmp_path, retention_days=30, journal="delete")
    assert a._db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # noqa: SLF001
    for i in range(6):
        (a if i % 2 else b).record_sync(_ex(i))
    assert a.count() == b.count() == 6
    assert not (tmp_path / "conversations.sqlite3-wal").exists()
    a.close()
    b.close()
    with pytest.raises(ValueError, match="CONVERSATION_JOURNAL must be 'wal' or 'delete', got 'memory'"):
        ConversationStore(tmp_path, retention_days=30, journal="memory")


def test_list_pages_newest_first_and_filters_by_key(tmp_path: Path) -> None:
    store = ConversationStore(tmp_path, retention_days=30)

    async def run() -> None:
        for i in range(7):
            await store.record(_ex(i, key_id="alice" if i % 2 == 0 else "bob"))
        first = await store.list(page=1, page_size=3)
        assert first.total == 7 and [e.request_id for e in first.items] == ["req-0006", "req-0005", "req-0004"]
        last = await store.list(page=3, page_size=3)
        assert [e.request_id for e in last.items] == ["req-0000"]
        bob = await store.list(page=1, page_size=10, key_id="bob")
        assert bob.total == 3 and {e.key_id for e in bob.items} == {"bob"}
        assert (await store.list(page=1, page_size=10, key_id="nobody")).total == 0
        got = first.items[0]
        assert got.messages == [{"role": "user", "content": "question 6 — é"}] and got.usage["completion_tokens"] == 2

    asyncio.run(run())
    with pytest.raises(ValueError, match="page_size must be between 1 and 500, got 0"):
        store.list_sync(page=1, page_size=0)
    store.close()


def test_export_is_ndjson_oldest_first_across_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from app.storage import conversations

    monkeypatch.setattr(conversations, "EXPORT_BATCH", 4)
    store = ConversationStore(tmp_path, retention_days=30)
    same_time = time.time()
    for i in range(10):
        store.record_sync(_ex(i, at=same_time if i in (3, 4, 5) else None))  # ties must not be skipped or repeated
    lines = list(store.export_lines())
    docs = [json.loads(line) for line in lines]
    assert all(line.endswith("\n") and line.count("\n") == 1 for line in lines)
    assert sorted(d["request_id"] for d in docs) == [f"req-{i:04d}" for i in range(10)]
    assert [d["created_at"] for d in docs] == sorted(d["created_at"] for d in docs)
    assert set(docs[0]) == {"request_id", "key_id", "route", "messages", "answer", "usage", "latency_s", "created_at"}
    assert docs[0]["created_at"].endswith("Z")
    store.close()


def test_retention_purges_old_exchanges(tmp_path: Path) -> None:
    store = ConversationStore(tmp_path, retention_days=7)
    now = time.time()
    store.record_sync(_ex(1, at=now - 8 * 86400))
    store.record_sync(_ex(2, at=now - 6 * 86400))
    assert asyncio.run(store.purge(now)) == 1
    assert [e.request_id for e in store.list_sync().items] == ["req-0002"]
    store.close()


WRITER = """
import asyncio, sys, time
sys.path.insert(0, {root!r})
from app.storage.conversations import ConversationStore, Exchange

async def main():
    store = ConversationStore(__import__("pathlib").Path({data!r}), retention_days=30)
    i = 0
    while True:
        ex = Exchange(f"req-{{i}}", "alice", "/api/chat", [{{"role": "user", "content": "q" * 200}}], "a" * 500,
                      {{"prompt_tokens": 1}}, 0.1, time.time())
        await store.record(ex)
        print(ex.request_id, flush=True)  # only after record() returned: the client would now get its answer
        i += 1

asyncio.run(main())
"""


def test_every_recorded_exchange_survives_kill_9(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER.format(root=str(ROOT), data=str(tmp_path))],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    acknowledged: list[str] = []
    assert proc.stdout is not None
    try:
        deadline = time.monotonic() + 60
        while len(acknowledged) < 150 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            acknowledged.append(line.strip())
        os.kill(proc.pid, signal.SIGKILL)  # mid-write, most likely: no chance to flush or close
        proc.wait(timeout=10)
        acknowledged.extend(line.strip() for line in proc.stdout.read().splitlines() if line.strip())
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert len(acknowledged) >= 150, proc.stderr.read() if proc.stderr else ""
    db = sqlite3.connect(tmp_path / DB_NAME)
    stored = {row[0] for row in db.execute("SELECT request_id FROM exchanges")}
    db.close()
    missing = [r for r in acknowledged if r not in stored]
    assert missing == [], f"{len(missing)} acknowledged exchanges lost after kill -9"
