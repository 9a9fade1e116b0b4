"""A real, throwaway PostgreSQL server from Debian's packages for tests: one per session, a fresh database per test.

The server listens on a loopback port only (no Unix socket), with password authentication, fsync and
synchronous_commit as in production, so durability tests mean something. `kill9()` kills the postmaster and every
backend at once (SIGKILL to each): the next `start()` runs crash recovery, as after a real crash.

`scripts/setup dev` installs it (`apt-get install postgresql`); a test that needs it fails, rather than skips, when
it is absent. initdb and postgres refuse to run as root, so under root they run as the `postgres` user, with a data
directory that user owns (outside pytest's tmp directories, which only root may enter).

A conftest.py imports the fixtures (`from tests.postgres_server import postgres_server, postgres_url`); every
directory that does shares one server (the singleton below), started on first use, stopped at the session's end.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from bench.waiting import WaitTimedOut, exited, wait_until

START_TIMEOUT_S = 60.0
SUPERUSER = "postgres"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bin_dir() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    if found:
        return found[-1].parent
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    pytest.fail(
        "PostgreSQL is not installed; the test command installs it (scripts/setup runs "
        "`apt-get install postgresql`). Install it and run the tests again."
    )


def _children_of(parent: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state_and_ppid = stat.read_text().rsplit(")", 1)[1].split()[:2]
        except (OSError, IndexError):
            continue  # gone meanwhile
        if int(state_and_ppid[1]) == parent:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    """Running or stopped; a zombie has let go of everything, shared memory included."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


class PostgresServer:
    def __init__(self) -> None:
        self.bin_dir = _bin_dir()
        self.password = secrets.token_hex(12)
        self.port = _free_port()
        # As root, the server runs as `postgres`; as anyone else, as that user.
        self._as_user = "postgres" if os.geteuid() == 0 else None
        self.workdir = Path(tempfile.mkdtemp(prefix="clawbot-pg-"))
        self.data_dir = self.workdir / "data"
        self.log_path = self.workdir / "postgres.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._databases = 0
        if self._as_user:
            owner = pwd.getpwnam(self._as_user)
            os.chown(self.workdir, owner.pw_uid, owner.pw_gid)
        pwfile = self.workdir / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self._as_user:
            os.chown(pwfile, owner.pw_uid, owner.pw_gid)
        self._run_as(
            [
                str(self.bin_dir / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                SUPERUSER,
                f"--pwfile={pwfile}",
                "--auth=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        )
        pwfile.unlink()

    def _run_as(self, argv: list[str]) -> None:
        done = subprocess.run(argv, user=self._as_user, cwd=self.workdir, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            pytest.fail(f"{argv[0]} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def connect(self, database: str = "postgres", **kwargs: Any) -> psycopg.Connection[Any]:
        return psycopg.connect(self.url(database), autocommit=True, connect_timeout=5, **kwargs)

    def _answers(self) -> bool:
        try:
            with self.connect() as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.OperationalError:
            return False

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                str(self.bin_dir / "postgres"),
                "-D",
                str(self.data_dir),
                "-p",
                str(self.port),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "unix_socket_directories=",
                "-c",
                "max_connections=200",
                "-c",
                "fsync=on",
                "-c",
                "synchronous_commit=on",
            ],
            user=self._as_user,
            cwd=self.workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        proc = self.proc
        try:
            wait_until(
                f"postgres to accept connections on port {self.port}",
                self._answers,
                START_TIMEOUT_S,
                poll_s=0.1,
                give_up=exited(proc, "postgres"),
                detail=lambda: self.log()[-3000:],
            )
        except WaitTimedOut:
            if proc.poll() is None:
                self.kill9()
            raise

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        """A fast shutdown (SIGINT): open sessions are ended, everything committed is checkpointed."""
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.kill9()
        self.proc = None

    def kill9(self) -> None:
        """SIGKILL to the postmaster and every backend at once: nothing is flushed that was not already.

        Backends call setsid(), so they are not in the postmaster's process group: they are found by parent pid,
        with the postmaster stopped first so that it forks no new one meanwhile.
        """
        if self.proc is None:
            return
        os.kill(self.proc.pid, signal.SIGSTOP)
        victims = [self.proc.pid, *_children_of(self.proc.pid)]
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        # The next start refuses while any of them still holds the shared memory.
        wait_until(
            "the killed postgres processes to let go", lambda: not any(_alive(pid) for pid in victims), 30, poll_s=0.05
        )
        self.proc = None

    def create_database(self) -> str:
        self._databases += 1
        name = f"clawbot_test_{self._databases}"
        with self.connect() as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return name

    def drop_database(self, name: str) -> None:
        with self.connect() as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


_shared: PostgresServer | None = None


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """The session's server, started once however many modules import this fixture."""
    global _shared
    if _shared is None:
        _shared = PostgresServer()
        _shared.start()
    elif _shared.proc is None:  # a test stopped it and failed before starting it again
        _shared.start()
    yield _shared
    if _shared is not None:
        _shared.close()
        _shared = None


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A URL to a new, empty database on the session's server, dropped after the test."""
    if postgres_server.proc is None:
        postgres_server.start()
    name = postgres_server.create_database()
    yield postgres_server.url(name)
    if postgres_server.proc is None:
        postgres_server.start()
    postgres_server.drop_database(name)
