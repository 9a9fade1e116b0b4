"""The embedded conversation store: every answered exchange, durably in SQLite under DATA_DIR (one replica, local runs).

WAL mode with synchronous=FULL: a record() that has returned is on disk, so `kill -9` (or a
power cut) loses no exchange the client was answered for. Writes run in a worker thread so
the event loop never waits on fsync; one lock serializes them on one connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from app.storage.conversations import EXPORT_BATCH, Exchange, Page, check_page, check_retention

log = logging.getLogger("clawbot.conversations")

DB_NAME = "conversations.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS exchanges (
    request_id TEXT PRIMARY KEY,
    key_id     TEXT NOT NULL,
    route      TEXT NOT NULL,
    messages   TEXT NOT NULL,
    answer     TEXT NOT NULL,
    usage      TEXT NOT NULL,
    latency_s  REAL NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS exchanges_created ON exchanges (created_at);
CREATE INDEX IF NOT EXISTS exchanges_key_created ON exchanges (key_id, created_at);
"""


def _row_to_exchange(row: tuple[Any, ...]) -> Exchange:
    return Exchange(
        request_id=row[0],
        key_id=row[1],
        route=row[2],
        messages=json.loads(row[3]),
        answer=row[4],
        usage=json.loads(row[5]),
        latency_s=row[6],
        created_at=row[7],
    )


class SqliteConversationStore:
    export_batch = EXPORT_BATCH

    def __init__(self, data_dir: Path, *, retention_days: int, journal: str = "wal") -> None:
        check_retention(retention_days)
        if journal not in ("wal", "delete"):
            raise ValueError(f"CONVERSATION_JOURNAL must be 'wal' or 'delete', got {journal!r}")
        self.retention_days = retention_days
        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = data_dir / DB_NAME
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        mode = self._db.execute(f"PRAGMA journal_mode={journal.upper()}").fetchone()[0]
        if str(mode).lower() != journal:
            raise RuntimeError(
                f"{self.path}: SQLite refused journal mode {journal!r} (got {mode!r}); "
                "use CONVERSATION_JOURNAL=delete on a network filesystem"
            )
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    @property
    def location(self) -> str:
        return str(self.path)

    # -- writing -----------------------------------------------------------------------------
    def record_sync(self, ex: Exchange) -> None:
        row = (
            ex.request_id,
            ex.key_id,
            ex.route,
            json.dumps(ex.messages, ensure_ascii=False),
            ex.answer,
            json.dumps(ex.usage),
            float(ex.latency_s),
            float(ex.created_at),
        )
        with self._lock:
            # Autocommit (isolation_level=None): the INSERT is its own transaction, committed and fsynced here.
            self._db.execute("INSERT OR REPLACE INTO exchanges VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row)

    async def record(self, ex: Exchange) -> None:
        """Store `ex`; when this returns, the exchange survives a crash."""
        await asyncio.to_thread(self.record_sync, ex)

    def purge_sync(self, now: float | None = None) -> int:
        cutoff = (time.time() if now is None else now) - self.retention_days * 86400
        with self._lock:
            removed = self._db.execute("DELETE FROM exchanges WHERE created_at < ?", (cutoff,)).rowcount
        if removed:
            log.info("conversation retention purge", extra={"removed": removed, "retention_days": self.retention_days})
        return int(removed)

    async def purge(self, now: float | None = None) -> int:
        """Delete exchanges older than RETENTION_DAYS. Returns how many went."""
        return await asyncio.to_thread(self.purge_sync, now)

    # -- reading -----------------------------------------------------------------------------
    def _where(self, key_id: str | None) -> tuple[str, tuple[Any, ...]]:
        return ("WHERE key_id = ?", (key_id,)) if key_id else ("", ())

    def list_sync(self, *, page: int = 1, page_size: int = 50, key_id: str | None = None) -> Page:
        check_page(page, page_size)
        where, args = self._where(key_id)
        with self._lock:
            total = self._db.execute(f"SELECT COUNT(*) FROM exchanges {where}", args).fetchone()[0]
            rows = self._db.execute(
                f"SELECT * FROM exchanges {where} ORDER BY created_at DESC, request_id LIMIT ? OFFSET ?",
                (*args, page_size, (page - 1) * page_size),
            ).fetchall()
        return Page(items=[_row_to_exchange(r) for r in rows], total=int(total), page=page, page_size=page_size)

    async def list(self, *, page: int = 1, page_size: int = 50, key_id: str | None = None) -> Page:
        return await asyncio.to_thread(self.list_sync, page=page, page_size=page_size, key_id=key_id)

    def export_lines(self, *, key_id: str | None = None) -> Iterator[str]:
        """NDJSON, oldest first, read in batches so a large store is never held in memory at once."""
        where, args = self._where(key_id)
        after: tuple[float, str] = (-1.0, "")
        while True:
            cond = f"{where} {'AND' if where else 'WHERE'} (created_at, request_id) > (?, ?)"
            with self._lock:
                rows = self._db.execute(
                    f"SELECT * FROM exchanges {cond} ORDER BY created_at, request_id LIMIT ?",
                    (*args, *after, self.export_batch),
                ).fetchall()
            if not rows:
                return
            for r in rows:
                yield json.dumps(_row_to_exchange(r).to_json(), ensure_ascii=False) + "\n"
            after = (rows[-1][7], rows[-1][0])

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM exchanges").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
