"""schemathesis against the real server's /openapi.json: no 5xx, and every answer (the 200s, their SSE events, the 4xx
bodies in the error shape, the headers) matches the published schema.

The run is seeded, so a failure reproduces with the command it prints; the server caps output at a few tokens
(MAX_TOKENS), so the real model stays cheap however large a max_tokens schemathesis sends. The campaign-sized run
(thousands of examples) is the same command with a larger SCHEMATHESIS_EXAMPLES; docs/api/limits.md has its figures.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from tests.e2e.server import Server, start_server

CHECKS = ",".join((
    "not_a_server_error", "status_code_conformance", "content_type_conformance", "response_headers_conformance",
    "response_schema_conformance",
))
EXAMPLES = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "12"))  # per operation, in each of the coverage and fuzzing phases
SEED = 22


@pytest.fixture(scope="module")
def capped_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(Path(tmp_path_factory.mktemp("schemathesis")), MAX_TOKENS="4")
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def schemathesis_command(server: Server, examples: int, report_dir: Path) -> list[str]:
    return [
        sys.executable, "-c", "from schemathesis.cli import schemathesis; schemathesis()", "run",
        f"{server.url}/openapi.json", "--header", f"Authorization: Bearer {server.api_key}",
        "--checks", CHECKS, "--max-examples", str(examples), "--seed", str(SEED),
        "--workers", "1", "--request-timeout", "120", "--generation-database", "none", "--no-color",
        "--report", "junit", "--report-dir", str(report_dir),
    ]


def test_schemathesis_finds_no_server_error_and_no_response_off_the_schema(capped_server: Server, tmp_path: Path) -> None:
    command = schemathesis_command(capped_server, EXAMPLES, tmp_path)
    run = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, f"{' '.join(command)}\n{run.stdout[-12000:]}\n{run.stderr[-4000:]}"
    assert capped_server.proc.poll() is None, capped_server.log()[-4000:]
    with capped_server.client() as c:
        assert c.get("/healthz").status_code == 200
