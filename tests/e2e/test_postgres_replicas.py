"""Two replicas on one PostgreSQL conversation store, as in production: real `python -m app` servers under load,
PostgreSQL crashing and restarting under them, and a replica killed with -9. Nothing answered is ever lost."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from bench.waiting import wait_until
from tests.e2e.load import Load
from tests.e2e.server import Server, start_server
from tests.postgres_server import PostgresServer

CLIENTS = 16
ANSWERS_BEFORE_KILL = 40  # as in test_crash.py
ANSWERS_SHARED = 20  # over both replicas
ANSWERS_AROUND_CRASH = 10  # before the database crashes, and again after it is back


@pytest.fixture(scope="module")
def database(postgres_server: PostgresServer) -> Iterator[str]:
    name = postgres_server.create_database()
    yield postgres_server.url(name)
    if postgres_server.proc is None:
        postgres_server.start()
    postgres_server.drop_database(name)


@pytest.fixture(scope="module")
def replicas(database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Server]]:
    """Two servers started together on an empty database: they migrate it once, under the lock, and share it."""
    servers = [
        # One torch thread each: two servers on a small machine, each spinning a thread per core, crawl.
        start_server(
            Path(tmp_path_factory.mktemp(f"replica-{i}")),
            CONVERSATION_DATABASE_URL=database,
            RATE_LIMIT_PER_KEY="100000",
            RATE_LIMIT_PER_IP="100000",
            TORCH_THREADS="1",
        )
        for i in range(2)
    ]
    try:
        for srv in servers:
            srv.wait_ready()
        yield servers
    finally:
        for srv in servers:
            srv.stop()


def stored_ids(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [row[0] for row in conn.execute("SELECT request_id FROM exchanges")]


def _chat(n: int, **extra: object) -> dict[str, object]:
    return {
        "messages": [{"role": "user", "content": f"Outage question {n}: name a fruit."}],
        "max_tokens": 4,
        "temperature": 0.8,
        "seed": n,
        **extra,
    }


def test_while_the_database_is_down_requests_get_a_clear_503_and_nothing_unrecorded_is_answered(
    postgres_server: PostgresServer, database: str, tmp_path: Path
) -> None:
    srv = start_server(
        tmp_path / "data", CONVERSATION_DATABASE_URL=database, CONVERSATION_DATABASE_WAIT_SECONDS="1", TORCH_THREADS="1"
    )
    try:
        srv.wait_ready()
        with srv.client(headers={"Authorization": f"Bearer {srv.api_key}"}) as client:
            postgres_server.stop()
            refused = client.post("/v1/chat/completions", json=_chat(1))
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["code"] == "conversation_store_unavailable"
            assert refused.headers["retry-after"] == "5"

            # Streaming: the text was sent as it came, but no finish_reason follows; an error event ends the stream.
            with client.stream("POST", "/v1/chat/completions", json=_chat(2, stream=True)) as stream:
                events = [line[len("data: ") :] for line in stream.iter_lines() if line.startswith("data: ")]
            assert events[-1] == "[DONE]"
            chunks = [json.loads(e) for e in events[:-1]]
            assert chunks[-1]["error"]["code"] == "conversation_store_unavailable"
            assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
            streamed_id = chunks[0]["id"]

            postgres_server.start()

            def past_503() -> httpx.Response | None:
                r = client.post("/v1/chat/completions", json=_chat(3))
                return None if r.status_code == 503 else r

            answered = wait_until("the pool to reconnect (no more 503s)", past_503, 60, poll_s=0.05)  # within seconds
            assert answered.status_code == 200, answered.text
    finally:
        srv.stop()
        if postgres_server.proc is None:
            postgres_server.start()
    stored = stored_ids(database)
    assert answered.json()["id"] in stored and streamed_id not in stored


def test_two_replicas_writing_at_once_lose_nothing_and_duplicate_nothing(replicas: list[Server], database: str) -> None:
    before = stored_ids(database)
    load = Load([srv.url for srv in replicas], replicas[0].api_key, CLIENTS).start()
    try:
        assert load.wait_for(ANSWERS_SHARED), f"only {len(load.answered)} answers:\n{replicas[0].log()[-3000:]}"
    finally:
        load.stop()
    assert load.refused == []
    assert all(load.answered_by[srv.url] > 0 for srv in replicas), load.answered_by
    added = set(stored_ids(database)) - set(before)
    assert sorted(added) == sorted(load.answered)  # every answer stored once, and nothing stored that was not answered
    assert not any((srv.data_dir / "conversations.sqlite3").exists() for srv in replicas)
    for srv in replicas:  # an admin on either replica sees what both wrote
        with srv.client(headers={"Authorization": f"Bearer {srv.api_key}"}) as admin:
            export = admin.get("/admin/conversations/export")
            listed = admin.get("/admin/conversations", params={"page_size": 1}).json()
        assert export.status_code == 200
        assert set(load.answered) <= {json.loads(line)["request_id"] for line in export.text.splitlines()}
        assert listed["total"] == len(before) + len(load.answered)


def test_postgres_crashing_under_load_loses_no_answered_exchange(
    replicas: list[Server], database: str, postgres_server: PostgresServer
) -> None:
    load = Load([srv.url for srv in replicas], replicas[0].api_key, CLIENTS).start()
    try:
        assert load.wait_for(ANSWERS_AROUND_CRASH)
        postgres_server.kill9()  # the database dies mid-write, with requests in flight on both replicas
        postgres_server.start()  # and comes back through crash recovery
        answered_before_recovery = len(load.answered)
        assert load.wait_for(answered_before_recovery + ANSWERS_AROUND_CRASH), "the replicas did not recover"
    finally:
        load.stop()
    # A request that could not be recorded during the outage was refused with a clear 503, never answered.
    for status, body in load.refused:
        assert status == 503 and json.loads(body)["error"]["code"] == "conversation_store_unavailable", body
    stored = set(stored_ids(database))
    missing = [rid for rid in load.answered if rid not in stored]
    assert missing == [], f"{len(missing)} of {len(load.answered)} answered exchanges lost to the database's crash"


def test_kill_9_of_a_replica_under_load_loses_no_answered_exchange(replicas: list[Server], database: str) -> None:
    victim = replicas[0]
    load = Load([victim.url], victim.api_key, CLIENTS).start()
    try:
        assert load.wait_for(ANSWERS_BEFORE_KILL), f"only {len(load.answered)} answers:\n{victim.log()[-3000:]}"
        victim.proc.send_signal(signal.SIGKILL)  # mid-load: other requests are still being generated and written
        victim.proc.wait(30)
    finally:
        load.stop()
    stored = set(stored_ids(database))
    missing = [rid for rid in load.answered if rid not in stored]
    assert missing == [], (
        f"{len(missing)} of {len(load.answered)} answered exchanges are not in PostgreSQL: {missing[:5]}"
    )
