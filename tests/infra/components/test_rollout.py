"""Start-up and rollout budgets (issue 21 items 2 and 3): start-up is judged on readiness to serve and bounded by the
stack's start-up budget, the Deployments' progress deadline covers one pod's provisioning and start-up, and `pulumi up`
waits as long as a rollout takes to walk through every replica, one pod at a time."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

import app.factory as factory
from app.settings import load_settings
from infra.components.rollout import POD_TURNOVER_S, PROVISIONING_BUDGET_S
from infra.tools.synth import Synthesis, synthesize
from tests.infra.conftest import chat_container, pod_spec


def seconds(duration: str) -> int:
    assert duration.endswith("s"), duration
    return int(duration[:-1])


def test_start_up_is_judged_on_readiness_to_serve_within_the_start_up_budget(prod: Synthesis, dev: Synthesis) -> None:
    for s in (prod, dev):
        c = chat_container(s)
        startup = c["startupProbe"]
        assert startup["httpGet"]["path"] == c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert startup["periodSeconds"] * startup["failureThreshold"] == s.config["startupTimeoutSeconds"]
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"  # once started: is the process alive


def test_a_stalled_model_load_fails_the_start_up_probe_where_the_old_one_passed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prod: Synthesis
) -> None:
    """The real app, its model load stalled (a download that never ends): the synthesized start-up probe fails on
    every try, so the kubelet restarts the pod after failureThreshold tries, the start-up budget. The liveness path,
    which the start-up probe used before, answered 200 throughout and bounded nothing."""
    stall = threading.Event()

    def stalled_load(settings: Any, hub_token: Any) -> Any:
        stall.wait(60)
        raise TimeoutError("the download never finished")

    monkeypatch.setattr(factory, "_load", stalled_load)
    startup_path = chat_container(prod)["startupProbe"]["httpGet"]["path"]
    settings = load_settings({"APP_ENV": "development", "DEV_API_KEY": "ck-dev-" + "0" * 48, "DATA_DIR": str(tmp_path)})
    with TestClient(factory.create_app(settings, on_fatal=lambda _: None)) as client:
        try:
            for _ in range(3):
                assert client.get(startup_path).status_code == 503
            assert client.get("/healthz").status_code == 200
        finally:
            stall.set()


def test_the_progress_deadline_covers_provisioning_and_start_up(prod: Synthesis, prod_gateway: Synthesis) -> None:
    for s, name in ((prod, "clawbot"), (prod_gateway, "clawbot-canary")):
        spec = s.one("Deployment", name).manifest["spec"]
        startup = chat_container(s)["startupProbe"]
        budget = startup["periodSeconds"] * startup["failureThreshold"]
        assert spec["progressDeadlineSeconds"] == budget + PROVISIONING_BUDGET_S
        assert spec["progressDeadlineSeconds"] > 600  # Kubernetes' default, which every GPU rollout overran


def test_up_waits_for_a_rollout_through_every_replica_one_pod_at_a_time(prod: Synthesis) -> None:
    spec = prod.one("Deployment", "clawbot").manifest["spec"]
    assert spec["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    startup = chat_container(prod)["startupProbe"]
    budget = startup["periodSeconds"] * startup["failureThreshold"]
    first_pod = budget + PROVISIONING_BUDGET_S
    turnover = pod_spec(prod)["terminationGracePeriodSeconds"] + POD_TURNOVER_S + budget
    waits = prod.one("Deployment", "clawbot").options.custom_timeouts
    assert waits is not None
    assert seconds(waits["create"]) == first_pod
    # The HPA may hold maxReplicas when the update starts: ten pods, one after the other.
    assert seconds(waits["update"]) == first_pod + 9 * turnover

    def update_wait(s: Synthesis, name: str = "clawbot") -> int:
        timeouts = s.one("Deployment", name).options.custom_timeouts
        assert timeouts is not None
        return seconds(timeouts["update"])

    five = synthesize("prod", overrides={"maxReplicas": 5})
    assert update_wait(five) == first_pod + 4 * turnover < update_wait(prod)
    # The canary's Deployment walks its own pods only.
    canary = synthesize("prod", overrides={"minReplicas": 9, "canary": {"image": "ghcr.io/clawbot/clawbot:0.2.0"}})
    assert update_wait(canary, "clawbot-canary") == first_pod


def test_the_wait_grows_with_the_start_up_budget(prod: Synthesis) -> None:
    longer = synthesize("prod", overrides={"startupTimeoutSeconds": prod.config["startupTimeoutSeconds"] + 600})
    before, after = (s.one("Deployment", "clawbot").options.custom_timeouts for s in (prod, longer))
    assert before is not None and after is not None
    assert seconds(after["update"]) - seconds(before["update"]) == 600 * prod.config["maxReplicas"]
