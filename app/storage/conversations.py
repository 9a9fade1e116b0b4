"""What a conversation store is: the Exchange it keeps, the Page it lists, and the ConversationStore interface.

Two implementations: SQLite under DATA_DIR (sqlite_conversations.py, the embedded default for one replica and
local runs) and PostgreSQL (postgres_conversations.py, chosen when CONVERSATION_DATABASE_URL is set, for
several replicas). Both promise the same things, and tests/app/storage/test_conversations_contract.py holds
both to them: a record() that returned survives kill -9; writing the same request_id twice keeps one row; the
async calls never block the event loop.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any, Protocol

MAX_PAGE_SIZE = 500
EXPORT_BATCH = 500


@dataclass(frozen=True)
class Exchange:
    request_id: str
    key_id: str
    route: str
    messages: list[dict[str, str]]
    answer: str
    usage: dict[str, Any]
    latency_s: float
    created_at: float

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["created_at"] = (
            time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(self.created_at))
            + f".{int(self.created_at % 1 * 1000):03d}Z"
        )
        doc["latency_s"] = round(self.latency_s, 4)
        return doc


@dataclass(frozen=True)
class Page:
    items: list[Exchange]
    total: int
    page: int
    page_size: int


class StoreUnavailable(RuntimeError):
    """The store could not be reached in time; the exchange was not recorded, so the client must not get its answer."""


def check_page(page: int, page_size: int) -> None:
    if page < 1:
        raise ValueError(f"page must be 1 or more, got {page}")
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise ValueError(f"page_size must be between 1 and {MAX_PAGE_SIZE}, got {page_size}")


def check_retention(retention_days: int) -> None:
    if retention_days < 1:
        raise ValueError(f"RETENTION_DAYS must be at least 1, got {retention_days}")


class ConversationStore(Protocol):
    retention_days: int
    # Rows per query when exporting; small in tests to cross batch boundaries.
    export_batch: int

    @property
    def location(self) -> str:
        """Where the rows live, safe to log: a file path, or a database URL without its password."""

    def record_sync(self, ex: Exchange) -> None:
        """Store `ex` (replacing a row with the same request_id); when this returns, it survives a crash."""

    async def record(self, ex: Exchange) -> None:
        """record_sync off the event loop."""

    def list_sync(self, *, page: int = 1, page_size: int = 50, key_id: str | None = None) -> Page:
        """Newest first; `total` counts every row matching `key_id`."""

    async def list(self, *, page: int = 1, page_size: int = 50, key_id: str | None = None) -> Page:
        """list_sync off the event loop."""

    def export_lines(self, *, key_id: str | None = None) -> Iterator[str]:
        """NDJSON, oldest first, read in batches of export_batch rows (a sync iterator: callers run it in a thread)."""

    def purge_sync(self, now: float | None = None) -> int:
        """Delete exchanges older than retention_days; returns how many went."""

    async def purge(self, now: float | None = None) -> int:
        """purge_sync off the event loop."""

    def count(self) -> int:
        """Every stored exchange."""

    def close(self) -> None:
        """Release connections and files; the store is unusable afterwards."""
