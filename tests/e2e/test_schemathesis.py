"""schemathesis against the real server's /openapi.json: no 5xx, and every answer (the 200s, their SSE events, the 4xx
bodies in the error shape, the headers) matches the published schema.

The run is seeded, so a failure reproduces with the command it prints. The campaign-sized run
(thousands of examples) is the same command with a larger SCHEMATHESIS_EXAMPLES; docs/api/limits.md has its figures.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.server import Server, start_server

CHECKS = ",".join(
    (
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
    )
)
EXAMPLES = int(
    os.environ.get("SCHEMATHESIS_EXAMPLES", "12")
)  # per operation, in each of the coverage and fuzzing phases
SEED = 22
COVERAGE_MODE = os.environ.get("SCHEMATHESIS_COVERAGE_MODE", "negative")  # "all" in the campaign-sized run


# Output capped at a few tokens and compiles at a second, so the real model stays cheap; limits out of the way, so a
# 429 does not stand in for the route it refused (429s and their Retry-After are checked by the suite elsewhere).
SERVER_ENV = {
    "MAX_TOKENS": "4",
    "GRAMMAR_COMPILE_TIMEOUT_SECONDS": "1",
    "RATE_LIMIT_PER_KEY": "1000000",
    "RATE_LIMIT_PER_IP": "1000000",
    "RATE_LIMIT_TOKENS_PER_KEY": "1000000000",
    "AUTH_FAILURES_PER_MINUTE": "1000000",
}


@pytest.fixture(scope="module")
def capped_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(Path(tmp_path_factory.mktemp("schemathesis")), **SERVER_ENV)
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def write_config(server: Server, path: Path) -> Path:
    """schemathesis.toml: the API key on every route, and on the seed chat route (which takes no API key) a JWT."""
    with server.client() as c:
        r = c.post("/api/auth", json={"api_key": server.api_key})
        assert r.status_code == 200, r.text
    path.write_text(
        f'headers = {{ Authorization = "Bearer {server.api_key}" }}\n\n'
        # The coverage phase's boundary values, as bodies the schema refuses (cheap 4xx answers); the fuzzing phase
        # sends valid bodies too, which the model answers.
        f'[phases.coverage.generation]\nmode = "{COVERAGE_MODE}"\n\n'
        f'[[operations]]\ninclude-path = "/api/chat"\nheaders = {{ Authorization = "Bearer {r.json()["token"]}" }}\n'
    )
    return path


def schemathesis_command(server: Server, config: Path, examples: int, report_dir: Path) -> list[str]:
    return [
        sys.executable,
        "-c",
        "from schemathesis.cli import schemathesis; schemathesis()",
        "--config-file",
        str(config),
        "run",
        f"{server.url}/openapi.json",
        "--checks",
        CHECKS,
        "--max-examples",
        str(examples),
        "--seed",
        str(SEED),
        "--workers",
        "1",
        "--request-timeout",
        "120",
        "--generation-database",
        "none",
        "--no-color",
        "--report",
        "junit",
        "--report-dir",
        str(report_dir),
    ]


def test_schemathesis_finds_no_server_error_and_no_response_off_the_schema(
    capped_server: Server, tmp_path: Path
) -> None:
    command = schemathesis_command(
        capped_server, write_config(capped_server, tmp_path / "schemathesis.toml"), EXAMPLES, tmp_path / "report"
    )
    run = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=tmp_path)  # its cache stays there
    assert run.returncode == 0, f"{' '.join(command)}\n{run.stdout[-12000:]}\n{run.stderr[-4000:]}"
    assert capped_server.proc.poll() is None, capped_server.log()[-4000:]
    with capped_server.client() as c:
        assert c.get("/healthz").status_code == 200
