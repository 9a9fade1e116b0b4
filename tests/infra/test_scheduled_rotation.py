"""Scheduled rotation: weekly `pulumi up`s (deploy.yml's rotate-keys) rotate one key slot per period, never both,
and the new key's id is what the running service reports in its metrics and audit log.

The program runs under mocks with its clock pinned (infra.secret_store reads `time`), each update fed the last
one's outputs as the stack reference to itself would; the service is a real `python -m app` process in production
mode, reading the key file the program sealed and asking KMS (moto's server, a real local KMS) to unwrap its key.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import boto3
import httpx
import pytest

import infra.components.secret_store
from app.access.kms import generate_kms_data_key
from infra.components.secret_store import DAY_S
from infra.tools.synth import Synthesis, synthesize
from tests.aws_server import aws_env, aws_server  # noqa: F401  (fixtures)
from tests.e2e.server import start_server

PERIOD_DAYS = 90  # prod's keyRotationDays
START = 20_000 * DAY_S + 3 * 3600  # a Monday-ish moment well inside some period


def up_at(monkeypatch: pytest.MonkeyPatch, now: float, last: dict[str, Any] | None, **config: Any) -> Synthesis:
    monkeypatch.setattr(
        infra.components.secret_store,
        "time",
        SimpleNamespace(time=lambda: now, strftime=time.strftime, gmtime=time.gmtime),
    )
    return synthesize("prod", stack_outputs=last or {}, overrides=config)


def test_weekly_runs_rotate_one_slot_per_period_and_the_old_key_stays_one_period(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    last = up_at(monkeypatch, START, None)
    seen = set(last.outputs["apiKeyIds"])
    rotations = 0
    for week in range(1, 27):  # half a year of Mondays
        now = START + week * 7 * DAY_S
        step = up_at(monkeypatch, now, last.outputs)
        before, after = last.outputs["apiKeyIds"], step.outputs["apiKeyIds"]
        if after != before:
            rotations += 1
            new_primary, secondary = after
            assert secondary == before[0], f"week {week}: the key clients hold was not kept as the secondary"
            assert new_primary not in seen, f"week {week}: a key id came back"
            seen.add(new_primary)
            # The Secret the pods mount changed, so the pods roll to read it.
            assert step.one("Secret", "clawbot-keys").manifest != last.one("Secret", "clawbot-keys").manifest
        last = step
    assert rotations == 2  # 26 weeks = 182 days: two 90-day periods ended, one new key each


def test_the_new_key_id_reaches_the_metrics_and_the_audit_log(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, aws_env: dict[str, str]
) -> None:
    # The rotating run is now, so the service's own clock finds the new key current and the old one not yet expired.
    now = time.time()
    arn = boto3.client("kms").create_key()["KeyMetadata"]["Arn"]
    data_key = generate_kms_data_key(arn)[0].to_json()
    before = up_at(monkeypatch, now - PERIOD_DAYS * DAY_S, None, kmsDataKey=data_key)
    after = up_at(monkeypatch, now, before.outputs, kmsDataKey=data_key)
    new_id, old_id = after.outputs["apiKeyIds"]
    assert old_id == before.outputs["apiKeyIds"][0] and new_id not in before.outputs["apiKeyIds"]
    keys = tmp_path / "keys.json"
    keys.write_text(after.one("Secret", "clawbot-keys").manifest["stringData"]["keys.json"])
    srv = start_server(
        tmp_path / "data", APP_ENV="production", DEV_API_KEY="", API_KEY_PATH=str(keys), KEY_ENCRYPTION="kms", **aws_env
    )
    try:
        srv.wait_ready()
        with srv.client() as c:
            for key in (after.outputs["apiKey"], before.outputs["apiKey"]):  # the new key, and the old one, still valid
                assert c.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200
            assert c.post("/api/auth", json={"api_key": after.outputs["apiKey"]}).status_code == 200
        series = {
            line.split(" ")[0]: float(line.split(" ")[1])
            for line in srv.metrics().splitlines()
            if line.startswith("clawbot_key_requests_total{")
        }
        # ClawbotKeyAbuse sums this by key_id: the alert names the key that is new since the rotation.
        assert series[f'clawbot_key_requests_total{{key_id="{new_id}"}}'] == 2
        assert series[f'clawbot_key_requests_total{{key_id="{old_id}"}}'] == 1
        lines = [json.loads(line) for line in srv.log().splitlines() if line.startswith("{")]
        audited = [d["audit"]["key_id"] for d in lines if d.get("logger") == "clawbot.audit"]
        assert new_id in audited and old_id in audited
        assert after.outputs["apiKey"] not in srv.log()
    finally:
        srv.stop()
    with pytest.raises(httpx.HTTPError):
        httpx.get(srv.url + "/healthz", timeout=2)
