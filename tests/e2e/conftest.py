"""One real server process shared by the end-to-end API tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.server import Server, running_server
from tests.postgres_server import postgres_server  # noqa: F401  (fixture: the replicas' database server)


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(Path(tmp_path_factory.mktemp("e2e-data"))) as srv:
        yield srv


@pytest.fixture(scope="session")
def token(server: Server) -> str:
    with server.client() as c:
        r = c.post("/api/auth", json={"api_key": server.api_key})
        assert r.status_code == 200, r.text
        return str(r.json()["token"])
