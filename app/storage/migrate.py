"""Versioned schema migrations of the PostgreSQL conversation store, and the CLI that shows or applies them.

A migration is a file migrations/postgres/NNNN_name.sql, applied once, in order, in its own transaction together
with its row in schema_migrations (version, name, checksum, applied_at). Every replica applies the pending ones
at startup under one advisory lock, so replicas that start together migrate once: the others wait for the lock
and then find nothing to do. A database whose schema is newer than this build knows, or whose applied migration
no longer matches its file, is refused: old code writing to a schema it does not know is how rows get lost.

    python -m app.storage.migrate status   # each migration, applied (when) or pending; exit 1 if refused
    python -m app.storage.migrate apply    # what the app does at startup

Both read the database URL from CONVERSATION_DATABASE_URL, as the app does.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg

from app.storage.postgres_link import MIGRATION_LOCK, connect, redact_url

log = logging.getLogger("clawbot.migrate")

MIGRATIONS_DIR = Path(__file__).parent / "migrations" / "postgres"
_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


class SchemaError(RuntimeError):
    """The database's schema is not one this build can run against; the message says why and what to do."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def label(self) -> str:
        return f"{self.version:04d}_{self.name}"

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


@dataclass(frozen=True)
class Applied:
    version: int
    name: str
    checksum: str
    applied_at: datetime


def known_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    found = []
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise SchemaError(f"{path}: a migration file must be named NNNN_name.sql (lower case, digits, _)")
        found.append(Migration(int(match[1]), match[2], path.read_text(encoding="utf-8")))
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise SchemaError(f"{directory}: migrations must be numbered 1, 2, 3... without gaps, got {versions}")
    return found


def applied_migrations(conn: psycopg.Connection[Any]) -> list[Applied]:
    if conn.execute("SELECT to_regclass('schema_migrations')").fetchone() == (None,):
        return []
    rows = conn.execute("SELECT version, name, checksum, applied_at FROM schema_migrations ORDER BY version").fetchall()
    return [Applied(*row) for row in rows]


def pending_migrations(applied: Sequence[Applied], known: Sequence[Migration]) -> list[Migration]:
    """What is left to apply; raises SchemaError when the database is ahead of this build or was migrated differently."""
    by_version = {m.version: m for m in known}
    for done in applied:
        mine = by_version.get(done.version)
        if mine is None:
            raise SchemaError(
                f"the conversation database's schema is at version {applied[-1].version} ({applied[-1].name}), newer than "
                f"this build knows (up to {len(known)}): run a build that has migration {applied[-1].version:04d}, "
                "or restore a backup taken before it was applied"
            )
        if mine.checksum != done.checksum:
            raise SchemaError(
                f"migration {mine.label} differs from the one applied on {done.applied_at:%Y-%m-%d}: a migration that "
                "has been applied must never change; put the change in a new migration"
            )
    applied_versions = {done.version for done in applied}
    return [m for m in known if m.version not in applied_versions]


def apply_migrations(conn: psycopg.Connection[Any], known: Sequence[Migration] | None = None) -> list[Migration]:
    """Apply what is pending on `conn` (autocommit) under the migration lock; returns what this call applied."""
    known = known_migrations() if known is None else known
    conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
    try:
        conn.execute(_TABLE)
        pending = pending_migrations(applied_migrations(conn), known)
        for migration in pending:
            with conn.transaction():
                conn.execute(migration.sql.encode())  # bytes: a script read from a file, not a literal query
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                    (migration.version, migration.name, migration.checksum),
                )
            log.info("conversation schema migrated", extra={"migration": migration.label})
        return pending
    finally:
        if not conn.broken:  # a dead session has released its lock already
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))


def _status(conn: psycopg.Connection[Any], known: Sequence[Migration]) -> int:
    applied = applied_migrations(conn)
    when = {done.version: done.applied_at for done in applied}
    for migration in known:
        state = f"applied {when[migration.version]:%Y-%m-%d %H:%M:%S %Z}" if migration.version in when else "pending"
        print(f"{migration.label:40} {state}")
    pending = pending_migrations(applied, known)
    print(f"schema at version {len(applied)} of {len(known)}; {len(pending)} pending")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.storage.migrate", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("status", "apply"), help="show the migrations, or apply the pending ones")
    args = parser.parse_args(argv)
    url = os.environ.get("CONVERSATION_DATABASE_URL")
    if not url:
        print("error: CONVERSATION_DATABASE_URL is not set (postgresql://USER:PASSWORD@HOST:5432/DB)", file=sys.stderr)
        return 2
    try:
        known = known_migrations()
        with connect(url) as conn:
            if args.command == "status":
                return _status(conn, known)
            for migration in apply_migrations(conn, known):
                print(f"applied {migration.label}")
            print(f"schema at version {len(known)}")
            return 0
    except SchemaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except psycopg.OperationalError as exc:
        print(f"error: cannot use the conversation database {redact_url(url)}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
