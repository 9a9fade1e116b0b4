"""The PostgreSQL conversation store against a real server: migrations, crashes and restarts, the retention job,
backups, and the database URL's password kept out of every log and error."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from app.observability.metrics import build_metrics
from app.settings import Settings, SettingsError, load_settings
from app.storage.conversations import Exchange, StoreUnavailable
from app.storage.migrate import MIGRATIONS_DIR, Migration, SchemaError, apply_migrations, known_migrations
from app.storage.postgres_conversations import PostgresConversationStore
from app.storage.postgres_link import MIGRATION_LOCK, PURGE_LOCK, redact_url
from app.storage.stores import Storage
from bench.waiting import wait_until, wait_until_async
from tests.app.storage.conversation_writer import ROOT, kill_and_drain, read_acknowledged, start_writer
from tests.postgres_server import PostgresServer


def _ex(i: int, at: float | None = None) -> Exchange:
    return Exchange(
        f"req-{i:04d}",
        "alice",
        "/api/chat",
        [{"role": "user", "content": f"q{i}"}],
        f"a{i}",
        {},
        0.1,
        time.time() if at is None else at,
    )


@pytest.fixture
def store(postgres_url: str) -> Iterator[PostgresConversationStore]:
    opened = PostgresConversationStore(postgres_url, retention_days=7)
    yield opened
    opened.close()


def _cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "CONVERSATION_DATABASE_URL": url}
    return subprocess.run(
        [sys.executable, "-m", "app.storage.migrate", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _waiting_for_lock(url: str, lock: int) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
            "AND ((classid::bigint << 32) | objid::bigint) = %s",
            (lock,),
        ).fetchone()
    return int(row[0]) if row else 0


# -- migrations ------------------------------------------------------------------------------------------------
def test_a_fresh_database_is_migrated_and_a_second_run_changes_nothing(postgres_url: str) -> None:
    assert [m.label for m in known_migrations()] == ["0001_initial"]
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        assert [m.label for m in apply_migrations(conn)] == ["0001_initial"]
        assert apply_migrations(conn) == []
        rows = conn.execute("SELECT version, name, checksum FROM schema_migrations").fetchall()
        assert rows == [(1, "initial", known_migrations()[0].checksum)]
        columns: dict[str, str] = dict(
            conn.execute(
                "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'exchanges'"
            ).fetchall()
        )
    assert columns["messages"] == "json" and columns["created_at"] == "timestamp with time zone"

    shown = _cli(postgres_url, "status")
    assert shown.returncode == 0, shown.stderr
    assert "0001_initial" in shown.stdout and "applied" in shown.stdout
    assert "schema at version 1 of 1; 0 pending" in shown.stdout
    again = _cli(postgres_url, "apply")
    assert again.returncode == 0 and "applied 0001" not in again.stdout and "schema at version 1" in again.stdout


def test_the_cli_applies_pending_migrations_and_names_what_it_did(postgres_url: str) -> None:
    before = _cli(postgres_url, "status")
    assert "pending" in before.stdout and "schema at version 0 of 1; 1 pending" in before.stdout
    done = _cli(postgres_url, "apply")
    assert done.returncode == 0 and "applied 0001_initial" in done.stdout, done.stderr
    unset = subprocess.run(
        [sys.executable, "-m", "app.storage.migrate", "status"],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert unset.returncode == 2 and "CONVERSATION_DATABASE_URL is not set" in unset.stderr


def test_replicas_starting_together_migrate_once(postgres_url: str) -> None:
    # Hold the migration lock, start two stores (two replicas' startups), let go once both wait for it.
    holder = psycopg.connect(postgres_url, autocommit=True)
    holder.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
    opened: list[PostgresConversationStore] = []
    errors: list[BaseException] = []

    def start_replica() -> None:
        try:
            opened.append(PostgresConversationStore(postgres_url, retention_days=7))
        except BaseException as exc:
            errors.append(exc)

    replicas = [threading.Thread(target=start_replica) for _ in range(2)]
    try:
        for t in replicas:
            t.start()
        wait_until(
            "the replicas to wait for the migration lock",
            lambda: _waiting_for_lock(postgres_url, MIGRATION_LOCK) >= 2,
            60,
            poll_s=0.05,
        )
        assert _waiting_for_lock(postgres_url, MIGRATION_LOCK) == 2, "the replicas did not wait for the migration lock"
    finally:
        holder.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
        holder.close()
        for t in replicas:
            t.join(60)
    try:
        assert not errors, errors
        assert len(opened) == 2
        opened[0].record_sync(_ex(1))
        assert opened[1].count() == 1
        with psycopg.connect(postgres_url) as conn:
            assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone() == (1,)
    finally:
        for s in opened:
            s.close()


def test_a_database_with_a_newer_schema_is_refused(
    postgres_server: PostgresServer, postgres_url: str, tmp_path: Path
) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        apply_migrations(conn)
        conn.execute("INSERT INTO schema_migrations (version, name, checksum) VALUES (2, 'from_the_future', 'x')")
    with pytest.raises(
        SchemaError, match=r"schema is at version 2 \(from_the_future\), newer than this build knows \(up to 1\)"
    ):
        PostgresConversationStore(postgres_url, retention_days=7)
    shown = _cli(postgres_url, "status")
    assert shown.returncode == 1 and "newer than this build knows" in shown.stderr

    # The service itself refuses to start, with the reason in its log, before it loads a model.
    from tests.e2e.server import start_server

    srv = start_server(tmp_path / "data", CONVERSATION_DATABASE_URL=postgres_url)
    try:
        srv.proc.wait(120)
    finally:
        srv.stop()
    assert srv.proc.returncode != 0
    assert "newer than this build knows (up to 1)" in srv.log()
    assert postgres_server.password not in srv.log()


def test_a_changed_migration_is_refused(postgres_url: str) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        apply_migrations(conn)
        edited = [Migration(1, "initial", known_migrations()[0].sql + "\n-- edited after release\n")]
        with pytest.raises(SchemaError, match="migration 0001_initial differs from the one applied on"):
            apply_migrations(conn, edited)


def test_migration_files_are_numbered_without_gaps(tmp_path: Path) -> None:
    assert sorted(p.name for p in MIGRATIONS_DIR.glob("*.sql")) == ["0001_initial.sql"]
    (tmp_path / "0001_a.sql").write_text("SELECT 1;")
    (tmp_path / "0003_c.sql").write_text("SELECT 1;")
    with pytest.raises(SchemaError, match=r"numbered 1, 2, 3\.\.\. without gaps, got \[1, 3\]"):
        known_migrations(tmp_path)
    (tmp_path / "0003_c.sql").rename(tmp_path / "2-c.sql")
    with pytest.raises(SchemaError, match="must be named NNNN_name.sql"):
        known_migrations(tmp_path)


# -- crashes and restarts --------------------------------------------------------------------------------------
def test_acknowledged_writes_survive_kill_9_of_postgres_and_the_writer_reconnects(
    postgres_server: PostgresServer, postgres_url: str, tmp_path: Path
) -> None:
    PostgresConversationStore(postgres_url, retention_days=7).close()  # the schema, before the writer starts
    proc = start_writer(Settings(data_dir=tmp_path, conversation_database_url=postgres_url))
    try:
        acknowledged = read_acknowledged(proc, 100)
        assert len(acknowledged) == 100, proc.stderr.read() if proc.stderr else ""
        postgres_server.kill9()  # every backend at once: what was not flushed is gone
        postgres_server.start()  # crash recovery replays the WAL
        after_restart = read_acknowledged(proc, 50)  # the same process: its pool replaced the dead connections
        acknowledged += after_restart
        kill_and_drain(proc, acknowledged)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert len(after_restart) == 50, proc.stderr.read() if proc.stderr else ""
    assert "redo done" in postgres_server.log() or "database system was interrupted" in postgres_server.log()
    with psycopg.connect(postgres_url) as conn:
        stored = {row[0] for row in conn.execute("SELECT request_id FROM exchanges")}
    missing = [r for r in acknowledged if r not in stored]
    assert missing == [], f"{len(missing)} of {len(acknowledged)} acknowledged exchanges lost to kill -9 of PostgreSQL"


def test_an_outage_past_the_retry_window_is_store_unavailable_then_the_store_recovers(
    postgres_server: PostgresServer, postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = PostgresConversationStore(postgres_url, retention_days=7, retry_window_s=1.0)
    try:
        store.record_sync(_ex(1))
        postgres_server.stop()
        with caplog.at_level(logging.WARNING), pytest.raises(StoreUnavailable) as failed:
            store.record_sync(_ex(2))
        assert f"conversation database {redact_url(postgres_url)} unreachable for 1 s (record)" == str(failed.value)
        postgres_server.start()
        store.retry_window_s = 30.0  # room for the pool's reconnect backoff on a busy machine
        store.record_sync(_ex(3))  # the same store: its pool reconnects
        assert sorted(e.request_id for e in store.list_sync().items) == ["req-0001", "req-0003"]
    finally:
        store.close()
    assert postgres_server.password not in caplog.text and postgres_server.password not in str(failed.value)
    assert "***" in str(failed.value)


# -- retention ------------------------------------------------------------------------------------------------
def test_purge_deletes_in_bounded_batches_one_replica_at_a_time(
    store: PostgresConversationStore, postgres_url: str
) -> None:
    now = time.time()
    for i in range(30):
        store.record_sync(_ex(i, at=now - 9 * 86400))
    for i in range(30, 35):
        store.record_sync(_ex(i))
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        # Every DELETE statement notes its transaction and how many rows it removed.
        conn.execute("CREATE TABLE purge_audit (xid bigint, removed bigint)")
        conn.execute(
            "CREATE FUNCTION note_purge() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "INSERT INTO purge_audit SELECT txid_current(), count(*) FROM gone; RETURN NULL; END $$"
        )
        conn.execute(
            "CREATE TRIGGER note_purge AFTER DELETE ON exchanges REFERENCING OLD TABLE AS gone "
            "FOR EACH STATEMENT EXECUTE FUNCTION note_purge()"
        )
        other_replica = psycopg.connect(postgres_url, autocommit=True)
        other_replica.execute("SELECT pg_advisory_lock(%s)", (PURGE_LOCK,))
        try:
            assert store.purge_sync(now) == 0  # another replica is purging: this one skips
        finally:
            other_replica.execute("SELECT pg_advisory_unlock(%s)", (PURGE_LOCK,))  # done (closing lets go later)
            other_replica.close()
        store.purge_batch = 7
        assert store.purge_sync(now) == 30
        batches = conn.execute("SELECT xid, removed FROM purge_audit WHERE removed > 0 ORDER BY xid").fetchall()
    assert [removed for _, removed in batches] == [7, 7, 7, 7, 2]
    assert len({xid for xid, _ in batches}) == 5  # each batch its own transaction
    assert store.count() == 5


def test_purge_skips_a_row_a_writer_holds_instead_of_waiting(
    store: PostgresConversationStore, postgres_url: str
) -> None:
    now = time.time()
    for i in range(5):
        store.record_sync(_ex(i, at=now - 9 * 86400))
    with psycopg.connect(postgres_url) as writer:
        writer.execute("SELECT 1 FROM exchanges WHERE request_id = 'req-0000' FOR UPDATE")
        assert store.purge_sync(now) == 4
    assert store.purge_sync(now) == 1  # the next run takes it


# -- wiring ---------------------------------------------------------------------------------------------------
def test_storage_opens_postgres_when_the_url_is_set_and_runs_the_retention_job(
    postgres_server: PostgresServer,
    store: PostgresConversationStore,
    postgres_url: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    store.record_sync(_ex(1, at=time.time() - 8 * 86400))
    store.record_sync(_ex(2))

    async def run() -> list[str]:
        storage = await Storage.open(
            Settings(data_dir=tmp_path, conversation_database_url=postgres_url, retention_days=7), build_metrics()
        )
        try:
            assert isinstance(storage.conversations, PostgresConversationStore)
            await wait_until_async(
                "the retention job, which runs at start, to delete the old exchange",
                lambda: storage.conversations.count() <= 1,
                60,
            )
            return [e.request_id for e in (await storage.conversations.list()).items]
        finally:
            await storage.close()

    with caplog.at_level(logging.INFO):
        assert asyncio.run(run()) == ["req-0002"]
    assert not (tmp_path / "conversations.sqlite3").exists()
    ready = next(r for r in caplog.records if r.getMessage() == "storage ready")
    assert ready.conversations == redact_url(postgres_url)  # type: ignore[attr-defined]
    assert postgres_server.password not in str([vars(r) for r in caplog.records])


def test_the_database_url_is_validated_without_ever_echoing_it() -> None:
    secret = "hunter2-not-for-logs"
    env = {"APP_ENV": "development", "CONVERSATION_DATABASE_URL": f"mysql://app:{secret}@db:3306/chat"}
    with pytest.raises(SettingsError, match="CONVERSATION_DATABASE_URL must be a postgresql:// URL") as bad:
        load_settings(env)
    assert secret not in str(bad.value) and "'mysql'" in str(bad.value)
    good = load_settings({**env, "CONVERSATION_DATABASE_URL": f"postgresql://app:{secret}@db:5432/chat"})
    assert good.conversation_database_url and secret not in repr(good)
    assert redact_url(f"postgresql://app:{secret}@db/chat?sslmode=require&password={secret}") == (
        "postgresql://app:***@db/chat?sslmode=require&password=%2A%2A%2A"
    )
    with pytest.raises(SettingsError, match="CONVERSATION_DATABASE_POOL_SIZE must be between 1 and 100, got 0"):
        load_settings({**env, "CONVERSATION_DATABASE_URL": "", "CONVERSATION_DATABASE_POOL_SIZE": "0"})


# -- backups --------------------------------------------------------------------------------------------------
def test_a_pg_dump_backup_restores_into_an_empty_database(
    postgres_server: PostgresServer, store: PostgresConversationStore, postgres_url: str, tmp_path: Path
) -> None:
    # The documented commands (docs/operations/backups.md), run for real: a consistent custom-format dump,
    # restored into a new database.
    for i in range(20):
        store.record_sync(_ex(i))
    dump = tmp_path / "conversations.dump"
    bin_dir = postgres_server.bin_dir
    subprocess.run(
        [
            str(bin_dir / "pg_dump"),
            "--format=custom",
            "--no-owner",
            "--no-acl",
            f"--file={dump}",
            f"--dbname={postgres_url}",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    restored_db = postgres_server.create_database()
    restored = postgres_server.url(restored_db)
    try:
        subprocess.run(
            [
                str(bin_dir / "pg_restore"),
                "--no-owner",
                "--no-acl",
                "--exit-on-error",
                "--single-transaction",
                f"--dbname={restored}",
                str(dump),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        back = PostgresConversationStore(restored, retention_days=7)  # already at the current schema: nothing to apply
        try:
            assert back.count() == 20
            assert list(back.export_lines()) == list(store.export_lines())
        finally:
            back.close()
        assert _cli(restored, "status").stdout.rstrip().endswith("schema at version 1 of 1; 0 pending")
    finally:
        postgres_server.drop_database(restored_db)
