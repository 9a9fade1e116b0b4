"""The audit trail: one JSON line per decision with key id, route, status and client address, and nothing else."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from app.access.audit import AUDIT_LOGGER, AuditLog
from app.access.control import Principal
from app.observability.logs import JsonFormatter
from app.settings import Settings
from tests.app.conftest import KeyFiles, build_security_app


def test_a_line_is_json_with_exactly_the_audit_fields(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger=AUDIT_LOGGER):
        AuditLog().log(Principal("alice", frozenset({"chat"}), "jwt"), "/api/chat", 200, "10.0.0.7")
    (record,) = caplog.records
    doc = json.loads(record.getMessage())
    assert doc == {
        "event": "key_usage",
        "ts": doc["ts"],
        "key_id": "alice",
        "via": "jwt",
        "route": "/api/chat",
        "status": 200,
        "client": "10.0.0.7",
    }
    formatted = json.loads(JsonFormatter().format(record))  # the service's log format keeps it one parseable line
    assert formatted["audit"]["key_id"] == "alice"


def test_crafted_fields_cannot_forge_a_second_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger=AUDIT_LOGGER):
        AuditLog().log(None, "/x\n{\"event\": \"key_usage\", \"key_id\": \"root\"}", 401, "1.2.3.4\r\n")
    message = caplog.records[0].getMessage()
    assert "\n" not in message and json.loads(message)["key_id"] is None


def test_refusals_are_audited_without_the_credential(
    make_settings: Callable[..., Settings], keyfiles: KeyFiles, caplog: pytest.LogCaptureFixture
) -> None:
    presented = keyfiles.raw["alice"][:-4] + "AAAA"  # a near miss: shares most of a real key
    with (
        caplog.at_level(logging.DEBUG),
        TestClient(build_security_app(make_settings()), client=("10.1.2.3", 4000)) as c,
    ):
        assert c.get("/v1/models", headers={"Authorization": f"Bearer {presented}"}).status_code == 401
        assert c.post("/api/auth", json={"api_key": keyfiles.raw["gone"]}).status_code == 401
        assert c.post("/api/chat", json={}, headers={"Authorization": "Bearer a.b.c"}).status_code == 401
    audit = [json.loads(r.getMessage()) for r in caplog.records if r.name == AUDIT_LOGGER]
    assert [(a["route"], a["status"], a["client"], a["reason"]) for a in audit] == [
        ("/v1/models", 401, "10.1.2.3", "unknown_key"),
        ("/api/auth", 401, "10.1.2.3", "revoked_key"),
        ("/api/chat", 401, "10.1.2.3", "malformed_token"),
    ]
    everything = caplog.text + "".join(repr(vars(r)) for r in caplog.records)
    for secret in (presented, keyfiles.raw["gone"], presented[3:20], keyfiles.raw["gone"][3:20]):
        assert secret not in everything
