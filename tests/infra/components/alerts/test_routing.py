"""amtool on the alertmanager.yml the Prometheus Operator would generate from the synthesized AlertmanagerConfig:
it is valid, and every alert the promtool tests fire, with exactly those labels, reaches the e-mail receiver."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.tools.synth import Synthesis, synthesize
from tests.infra.components.alerts.cases import firing_labels
from tests.infra.components.alerts.operator import alertmanager_config, stack_secrets
from tests.monitoring import run_tool, write_yaml

EMAIL = "clawbot/clawbot/email"  # <namespace>/<AlertmanagerConfig name>/<receiver>, as the operator names it


@pytest.fixture(scope="module")
def config_path(prod: Synthesis, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_yaml(tmp_path_factory.mktemp("amtool") / "alertmanager.yml", operator_config(prod))


def operator_config(s: Synthesis) -> dict:
    """The operator reads the SMTP password from the Secret the AlertmanagerConfig names, in its namespace."""
    return alertmanager_config(
        s.one("AlertmanagerConfig").manifest, stack_secrets(o.manifest for o in s.find("Secret"))
    )


def routes_to(config: Path, labels: dict[str, str]) -> str:
    run = run_tool(
        "amtool", "config", "routes", "test", f"--config.file={config}", *(f"{k}={v}" for k, v in labels.items())
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout.strip()


def test_generated_config_passes_amtool_check_config(config_path: Path) -> None:
    run = run_tool("amtool", "check-config", str(config_path))
    assert run.returncode == 0 and "SUCCESS" in run.stdout, run.stdout + run.stderr


def test_the_operator_scopes_the_route_to_the_namespace(prod: Synthesis) -> None:
    config = operator_config(prod)
    first = config["route"]["routes"][0]
    assert first["receiver"] == EMAIL and first["continue"] is True
    assert first["matchers"] == ['service="clawbot"', 'namespace="clawbot"']
    assert {r["name"] for r in config["receivers"]} == {"null", EMAIL}


@pytest.mark.parametrize("labels", firing_labels(), ids=lambda labels: "-".join(sorted(labels.values())))
def test_each_alert_reaches_the_email_receiver(config_path: Path, labels: dict[str, str]) -> None:
    run = run_tool(
        "amtool",
        "config",
        "routes",
        "test",
        f"--config.file={config_path}",
        f"--verify.receivers={EMAIL}",
        *(f"{k}={v}" for k, v in labels.items()),
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_an_alert_without_the_namespace_label_is_mailed_to_nobody(config_path: Path) -> None:
    # What the rules did before every aggregation kept `namespace`: such an alert falls through to "null".
    labels = {"alertname": "ClawbotHighErrorRate", "severity": "critical", "service": "clawbot"}
    assert routes_to(config_path, labels) == "null"
    assert routes_to(config_path, {**labels, "namespace": "monitoring"}) == "null"
    assert routes_to(config_path, {**labels, "namespace": "clawbot"}) == EMAIL


def test_the_smtp_password_is_read_from_its_secret(tmp_path: Path) -> None:
    s = synthesize("prod", overrides={"alertSmtpPassword": "smtp-pass-Zk39fQ"})
    secret = s.one("Secret", "clawbot-alert-smtp").manifest
    config = alertmanager_config(
        s.one("AlertmanagerConfig").manifest,
        secrets={("clawbot", secret["metadata"]["name"], "password"): secret["stringData"]["password"]},
    )
    (email,) = config["receivers"][1]["email_configs"]
    assert email["auth_username"] == "clawbot-alerts" and email["auth_password"] == "smtp-pass-Zk39fQ"
    run = run_tool("amtool", "check-config", str(write_yaml(tmp_path / "alertmanager.yml", config)))
    assert run.returncode == 0, run.stdout + run.stderr
