"""What every conversation store promises, run against both: SQLite (the embedded default) and a real PostgreSQL.

Durable once record() returns (even through kill -9), idempotent by request_id, exact text (NUL included), paged
newest first, exported oldest first across batches, purged by age, and never blocking the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from app.settings import Settings
from app.storage.conversations import ConversationStore, Exchange
from app.storage.stores import open_conversation_store
from tests.app.storage.conversation_writer import kill_and_drain, read_acknowledged, start_writer

KINDS = ["sqlite", "postgres"]


def _ex(i: int, key_id: str = "alice", at: float | None = None, answer: str | None = None) -> Exchange:
    return Exchange(
        request_id=f"req-{i:04d}",
        key_id=key_id,
        route="/api/chat",
        messages=[{"role": "user", "content": f"question {i} — é"}],
        answer=answer if answer is not None else f"answer {i}",
        usage={"prompt_tokens": 5, "completion_tokens": 2, "cached": False},
        latency_s=0.25,
        created_at=at if at is not None else time.time() + i * 0.001,
    )


@pytest.fixture(params=KINDS)
def store_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else None
    return Settings(data_dir=tmp_path / "data", conversation_database_url=url)


@pytest.fixture
def open_store(store_settings: Settings) -> Iterator[Callable[..., ConversationStore]]:
    """Opens stores on the test's database (as many as the test wants, like replicas); closes them afterwards."""
    opened: list[ConversationStore] = []

    def make(**overrides: Any) -> ConversationStore:
        store = open_conversation_store(store_settings.with_overrides(**overrides))
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


def _stored_ids(store: ConversationStore) -> list[str]:
    return [json.loads(line)["request_id"] for line in store.export_lines()]


def test_list_pages_newest_first_and_filters_by_key(open_store: Callable[..., ConversationStore]) -> None:
    store = open_store()

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
        assert got.to_json() == _ex(6, at=got.created_at).to_json()

    asyncio.run(run())
    assert store.count() == 7
    with pytest.raises(ValueError, match="page_size must be between 1 and 500, got 0"):
        store.list_sync(page=1, page_size=0)


def test_export_is_ndjson_oldest_first_across_batches(open_store: Callable[..., ConversationStore]) -> None:
    store = open_store()
    store.export_batch = 4
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
    assert [json.loads(line)["request_id"] for line in store.export_lines(key_id="nobody")] == []


def test_retention_purges_old_exchanges(open_store: Callable[..., ConversationStore]) -> None:
    store = open_store(retention_days=7)
    now = time.time()
    store.record_sync(_ex(1, at=now - 8 * 86400))
    store.record_sync(_ex(2, at=now - 6 * 86400))
    assert asyncio.run(store.purge(now)) == 1
    assert [e.request_id for e in store.list_sync().items] == ["req-0002"]
    assert store.purge_sync(now) == 0


def test_writing_a_request_id_again_keeps_one_row_with_the_last_write(
    open_store: Callable[..., ConversationStore],
) -> None:
    # A retried write (its acknowledgement lost) must not duplicate the exchange.
    store = open_store()
    store.record_sync(_ex(1, answer="first"))
    store.record_sync(_ex(1, answer="second"))
    assert store.count() == 1
    assert store.list_sync().items[0].answer == "second"


def test_text_comes_back_exactly_nul_and_all(open_store: Callable[..., ConversationStore]) -> None:
    # A client may send U+0000 and a model may echo it; PostgreSQL's text type cannot hold it, the store must.
    odd = "nul\x00 tab\t quote\" backslash\\ emoji 🦀 rtl \u202e cjk 漢字"
    store = open_store()
    store.record_sync(
        Exchange(
            "req-odd",
            "alice",
            "/v1/chat/completions",
            [{"role": "system", "content": odd}, {"role": "user", "content": ""}],
            odd,
            {"prompt_tokens": 3, "cached": True},
            0.5,
            time.time(),
        )
    )
    got = store.list_sync().items[0]
    assert got.messages == [{"role": "system", "content": odd}, {"role": "user", "content": ""}]
    assert got.answer == odd and got.usage == {"prompt_tokens": 3, "cached": True}
    assert json.loads(next(store.export_lines()))["answer"] == odd


def test_two_writers_at_once_lose_nothing_and_duplicate_nothing(open_store: Callable[..., ConversationStore]) -> None:
    # Two replicas on one store, each retrying some of the other's ids.
    a, b = open_store(), open_store()
    errors: list[BaseException] = []

    def write(store: ConversationStore, ids: range) -> None:
        try:
            for i in ids:
                store.record_sync(_ex(i))
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=write, args=(a, range(0, 120))),
        threading.Thread(target=write, args=(b, range(80, 200))),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    ids = _stored_ids(b)
    assert sorted(ids) == [f"req-{i:04d}" for i in range(200)] and a.count() == 200


@contextlib.contextmanager
def _write_lock_held(settings: Settings) -> Iterator[Callable[[], None]]:
    """Another session holding the write lock; yields the function that lets go (callable more than once)."""
    if settings.conversation_database_url:
        pg = psycopg.connect(settings.conversation_database_url.get_secret_value())
        pg.execute("LOCK TABLE exchanges IN EXCLUSIVE MODE")
        release: Callable[[], None] = pg.rollback
        closer: Callable[[], None] = pg.close
    else:
        db = sqlite3.connect(settings.data_dir / "conversations.sqlite3", isolation_level=None, check_same_thread=False)
        db.execute("BEGIN EXCLUSIVE")

        def release_sqlite() -> None:
            if db.in_transaction:
                db.execute("ROLLBACK")

        release, closer = release_sqlite, db.close
    lock = threading.Lock()

    def let_go() -> None:
        with lock:
            release()

    try:
        yield let_go
    finally:
        let_go()
        closer()


def test_a_waiting_write_never_blocks_the_event_loop(
    store_settings: Settings, open_store: Callable[..., ConversationStore]
) -> None:
    store = open_store()
    with _write_lock_held(store_settings) as let_go:
        watchdog = threading.Timer(60, let_go)  # only so a failing (blocking) store cannot hang the test
        watchdog.start()

        async def run() -> int:
            write = asyncio.create_task(store.record(_ex(1)))
            ticks = 0
            while ticks < 20 and not write.done():
                await asyncio.sleep(0.01)
                ticks += 1
            waiting = not write.done()
            let_go()
            await asyncio.wait_for(write, 60)
            assert waiting, "the write finished while another session held the lock"
            return ticks

        try:
            assert asyncio.run(run()) == 20  # the loop kept turning while the write waited for the lock
        finally:
            watchdog.cancel()
    assert store.count() == 1


def test_every_recorded_exchange_survives_kill_9(
    store_settings: Settings, open_store: Callable[..., ConversationStore]
) -> None:
    open_store()  # creates the schema first, so the writer starts writing at once
    proc = start_writer(store_settings)
    try:
        acknowledged = read_acknowledged(proc, 150)
        kill_and_drain(proc, acknowledged)  # mid-write, most likely: no chance to flush or close
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert len(acknowledged) >= 150, proc.stderr.read() if proc.stderr else ""
    stored = set(_stored_ids(open_store()))
    missing = [r for r in acknowledged if r not in stored]
    assert missing == [], f"{len(missing)} acknowledged exchanges lost after kill -9"
