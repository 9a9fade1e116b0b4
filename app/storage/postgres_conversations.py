"""The conversation store in PostgreSQL, for several replicas (CONVERSATION_DATABASE_URL).

Durable: every write is its own transaction with synchronous_commit=on, committed before record() returns, so an
exchange a client was answered for survives kill -9 of the app and PostgreSQL's crash recovery. Idempotent: a
write keyed by request_id replaces the row (ON CONFLICT DO UPDATE, as SQLite's INSERT OR REPLACE), so retrying
after a lost acknowledgement never duplicates. Resilient: a bounded pool checks each connection before handing it
out, so the pool reconnects after the server restarts; an operation that meets a dead connection or an absent
server is retried for CONVERSATION_DATABASE_WAIT_SECONDS, then fails with StoreUnavailable (the API answers 503).

One synchronous pool serves both the async calls (run on an executor with one thread per connection, so the event
loop never waits on the network and never more threads wait than there are connections) and the sync ones (the
NDJSON export, which Starlette iterates in a worker thread).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, TypeVar

import psycopg
from psycopg_pool import ConnectionPool

from app.storage.conversations import EXPORT_BATCH, Exchange, Page, StoreUnavailable, check_page, check_retention
from app.storage.migrate import apply_migrations
from app.storage.postgres_link import (
    CONNECT_TIMEOUT_S,
    PURGE_LOCK,
    configure_session,
    connect,
    connection_kwargs,
    redact_url,
)

log = logging.getLogger("clawbot.conversations")

T = TypeVar("T")

# The pool retries a lost connection with backoff (1 s, 2 s, 4 s...); giving an attempt up after this long lets the
# next request start a fresh one, so after an outage the pool is back within seconds of the server, however long
# the server was away.
RECONNECT_TIMEOUT_S = 5.0
# How long one try waits for a pooled connection. Each new try asks the pool again, and asking is what makes a pool
# that gave up reconnecting start over; a single long wait would sit in the queue until the window closed.
POOL_WAIT_S = 2.0
PURGE_BATCH = 1000

_COLUMNS = (
    "request_id, key_id, route, messages, answer, usage, latency_s, extract(epoch FROM created_at)::float8, created_at"
)

_UPSERT = """
INSERT INTO exchanges (request_id, key_id, route, messages, answer, usage, latency_s, created_at)
VALUES (%s, %s, %s, %s::json, %s::json, %s::jsonb, %s, to_timestamp(%s))
ON CONFLICT (request_id) DO UPDATE SET
    key_id = EXCLUDED.key_id, route = EXCLUDED.route, messages = EXCLUDED.messages, answer = EXCLUDED.answer,
    usage = EXCLUDED.usage, latency_s = EXCLUDED.latency_s, created_at = EXCLUDED.created_at
"""

# One bounded batch per transaction, so no purge holds row locks on more than PURGE_BATCH rows at once; SKIP LOCKED
# leaves a row that a writer holds for the next run instead of waiting for it.
_PURGE_BATCH = """
DELETE FROM exchanges WHERE request_id IN (
    SELECT request_id FROM exchanges WHERE created_at < to_timestamp(%s)
    ORDER BY created_at LIMIT %s FOR UPDATE SKIP LOCKED
)
"""


def _row_to_exchange(row: tuple[Any, ...]) -> Exchange:
    # json columns arrive parsed: messages a list, answer a str, usage a dict.
    return Exchange(
        request_id=row[0],
        key_id=row[1],
        route=row[2],
        messages=row[3],
        answer=row[4],
        usage=row[5],
        latency_s=row[6],
        created_at=row[7],
    )


class PostgresConversationStore:
    export_batch = EXPORT_BATCH
    purge_batch = PURGE_BATCH

    def __init__(self, url: str, *, retention_days: int, pool_size: int = 8, retry_window_s: float = 15.0) -> None:
        """Connect, apply pending migrations (under the migration lock) and open the pool; raises StoreUnavailable
        when the database cannot be reached, SchemaError when its schema is not one this build can use."""
        check_retention(retention_days)
        self.retention_days = retention_days
        self.retry_window_s = retry_window_s
        self._location = redact_url(url)
        try:
            with connect(url) as conn:
                apply_migrations(conn)
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(f"conversation database {self._location}: cannot connect: {exc}") from exc
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            kwargs=connection_kwargs(),
            configure=configure_session,
            # A connection the server dropped (restart, failover) is noticed and replaced before it is handed out.
            check=ConnectionPool.check_connection,
            name="conversations",
            reconnect_timeout=RECONNECT_TIMEOUT_S,
            open=False,
        )
        try:
            self._pool.open(wait=True, timeout=CONNECT_TIMEOUT_S * 2)
        except psycopg.OperationalError as exc:
            self._pool.close()
            raise StoreUnavailable(f"conversation database {self._location}: cannot connect: {exc}") from exc
        self._executor = ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix="conversations-pg")

    @property
    def location(self) -> str:
        return self._location

    def _run(self, operation: str, work: Callable[[psycopg.Connection[Any]], T]) -> T:
        """`work` in one transaction (committed when it returns), retried while the server is unreachable.

        Retrying is safe: every write is idempotent by request_id, and a purge batch repeats harmlessly.
        """
        deadline = time.monotonic() + self.retry_window_s
        delay = 0.05
        while True:
            try:
                with self._pool.connection(timeout=max(0.1, min(POOL_WAIT_S, deadline - time.monotonic()))) as conn:
                    return work(conn)
            except psycopg.OperationalError as exc:  # connection lost, server starting up, no connection free in time
                if time.monotonic() + delay >= deadline:
                    log.error(
                        "conversation database unreachable",
                        extra={"operation": operation, "error_type": type(exc).__name__},
                    )
                    raise StoreUnavailable(
                        f"conversation database {self._location} unreachable for {self.retry_window_s:g} s ({operation})"
                    ) from exc
                log.warning(
                    "conversation database unreachable or busy, retrying",
                    extra={"operation": operation, "error_type": type(exc).__name__},
                )
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    def _fetch_all(self, operation: str, query: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        return self._run(operation, lambda conn: conn.execute(query, params).fetchall())

    async def _off_loop(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    # -- writing -----------------------------------------------------------------------------
    def record_sync(self, ex: Exchange) -> None:
        row = (
            ex.request_id,
            ex.key_id,
            ex.route,
            json.dumps(ex.messages, ensure_ascii=False),
            json.dumps(ex.answer, ensure_ascii=False),
            json.dumps(ex.usage),
            float(ex.latency_s),
            float(ex.created_at),
        )
        self._run("record", lambda conn: conn.execute(_UPSERT, row))

    async def record(self, ex: Exchange) -> None:
        await self._off_loop(self.record_sync, ex)

    def purge_sync(self, now: float | None = None) -> int:
        """Delete in batches while holding the purge lock; another replica purging at the same time skips (returns 0)."""
        cutoff = (time.time() if now is None else now) - self.retention_days * 86400

        def purge(conn: psycopg.Connection[Any]) -> int:
            got_lock = conn.execute("SELECT pg_try_advisory_lock(%s)", (PURGE_LOCK,)).fetchone() == (True,)
            conn.commit()
            if not got_lock:
                log.info("conversation retention purge skipped: another replica is purging")
                return 0
            removed = 0
            try:
                while True:
                    batch = conn.execute(_PURGE_BATCH, (cutoff, self.purge_batch)).rowcount
                    conn.commit()
                    removed += batch
                    if batch < self.purge_batch:
                        return removed
            finally:
                if not conn.broken:
                    conn.rollback()
                    conn.execute("SELECT pg_advisory_unlock(%s)", (PURGE_LOCK,))

        removed = self._run("purge", purge)
        if removed:
            log.info("conversation retention purge", extra={"removed": removed, "retention_days": self.retention_days})
        return removed

    async def purge(self, now: float | None = None) -> int:
        return await self._off_loop(self.purge_sync, now)

    # -- reading -----------------------------------------------------------------------------
    def list_sync(self, *, page: int = 1, page_size: int = 50, key_id: str | None = None) -> Page:
        check_page(page, page_size)
        where, args = ("WHERE key_id = %s", (key_id,)) if key_id else ("", ())

        def read(conn: psycopg.Connection[Any]) -> Page:
            total = conn.execute(f"SELECT count(*) FROM exchanges {where}", args).fetchone()
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM exchanges {where} ORDER BY created_at DESC, request_id LIMIT %s OFFSET %s",
                (*args, page_size, (page - 1) * page_size),
            ).fetchall()
            return Page(
                items=[_row_to_exchange(r) for r in rows],
                total=int(total[0]) if total else 0,
                page=page,
                page_size=page_size,
            )

        return self._run("list", read)

    async def list(self, *, page: int = 1, page_size: int = 50, key_id: str | None = None) -> Page:
        return await self._off_loop(self.list_sync, page=page, page_size=page_size, key_id=key_id)

    def export_lines(self, *, key_id: str | None = None) -> Iterator[str]:
        """NDJSON, oldest first, a batch per query, resuming after the last (created_at, request_id) seen."""
        where = "WHERE key_id = %s" if key_id else "WHERE true"
        args: tuple[Any, ...] = (key_id,) if key_id else ()
        after: tuple[datetime, str] | None = None
        while True:
            cond, params = (
                (f"{where} AND (created_at, request_id) > (%s, %s)", (*args, *after)) if after else (where, args)
            )
            rows = self._fetch_all(
                "export",
                f"SELECT {_COLUMNS} FROM exchanges {cond} ORDER BY created_at, request_id LIMIT %s",
                (*params, self.export_batch),
            )
            if not rows:
                return
            for r in rows:
                yield json.dumps(_row_to_exchange(r).to_json(), ensure_ascii=False) + "\n"
            after = (rows[-1][8], rows[-1][0])

    def count(self) -> int:
        row = self._run("count", lambda conn: conn.execute("SELECT count(*) FROM exchanges").fetchone())
        return int(row[0]) if row else 0

    def close(self) -> None:
        self._executor.shutdown(wait=True)  # writes already accepted finish before the connections go
        self._pool.close()
