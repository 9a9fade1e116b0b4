"""The SQLite conversation store's own choices: WAL with full sync on a local disk, the rollback journal on a shared volume.

What every store promises (durability through kill -9, paging, export, purge) is in test_conversations_contract.py.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from app.storage.conversations import Exchange
from app.storage.sqlite_conversations import SqliteConversationStore


def _ex(i: int) -> Exchange:
    return Exchange(
        f"req-{i:04d}", "alice", "/api/chat", [{"role": "user", "content": f"q{i}"}], f"a{i}", {}, 0.1, time.time()
    )


def test_store_is_wal_with_full_sync(tmp_path: Path) -> None:
    store = SqliteConversationStore(tmp_path, retention_days=30)
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    store.close()


def test_shared_volume_mode_uses_the_rollback_journal_and_sees_every_writer(tmp_path: Path) -> None:
    # Two pods on one ReadWriteMany volume: two connections, each writing; each sees the other's rows.
    a = SqliteConversationStore(tmp_path, retention_days=30, journal="delete")
    b = SqliteConversationStore(tmp_path, retention_days=30, journal="delete")
    assert a._db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    for i in range(6):
        (a if i % 2 else b).record_sync(_ex(i))
    assert a.count() == b.count() == 6
    assert not (tmp_path / "conversations.sqlite3-wal").exists()
    a.close()
    b.close()
    with pytest.raises(ValueError, match="CONVERSATION_JOURNAL must be 'wal' or 'delete', got 'memory'"):
        SqliteConversationStore(tmp_path, retention_days=30, journal="memory")
