"""How the app reaches PostgreSQL: connection parameters, per-session settings, advisory lock ids, a URL safe to log."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg

CONNECT_TIMEOUT_S = 5

# Advisory lock ids, one per job that must run on one replica at a time; any bigint works as long as every
# replica uses the same one. They show in pg_locks as objid 0x636c6177 ("claw") with these classids.
MIGRATION_LOCK = (0x636C6177 << 32) | 1
PURGE_LOCK = (0x636C6177 << 32) | 2


def connection_kwargs() -> dict[str, Any]:
    """libpq options for every connection: bounded connect, and a dead server noticed within seconds, not minutes."""
    return {
        "connect_timeout": CONNECT_TIMEOUT_S,
        "application_name": "clawbot",
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 5,
        "keepalives_count": 3,
        "tcp_user_timeout": 15_000,
    }


def configure_session(conn: psycopg.Connection[Any]) -> None:
    """Per-session settings of a pooled connection, set explicitly because a managed database may default otherwise.

    synchronous_commit=on: COMMIT returns only once the WAL record is flushed, so a record() that returned
    survives kill -9 of PostgreSQL (crash recovery replays it) as well as of the app.
    """
    conn.execute("SET synchronous_commit = on")
    # A query running longer is cancelled (then retried, or the request gets a 503) instead of holding a connection;
    # every query the store sends is small: one row, one page, one batch.
    conn.execute("SET statement_timeout = '30s'")
    conn.commit()


def connect(url: str) -> psycopg.Connection[Any]:
    """One autocommit connection outside the pool, for a job that holds a session lock (migrations) or the CLI.

    No statement timeout here: a migration may legitimately take long, and so may waiting for another replica's.
    """
    return psycopg.connect(url, autocommit=True, **connection_kwargs())


def redact_url(url: str) -> str:
    """The URL with its password (in the userinfo or a `password=` parameter) replaced by ***, for logs and errors."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, hostinfo = netloc.rsplit("@", 1)
        if ":" in userinfo:
            userinfo = userinfo.split(":", 1)[0] + ":***"
        netloc = f"{userinfo}@{hostinfo}"
    query = urlencode([(k, "***" if k == "password" else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)])
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
