"""Alerts as synthesized: seed thresholds and windows, config overrides, selector labels, every series real, the
documented alert table in step with the rules. What the rules do is evaluated by promtool and amtool in tests/infra/components/alerts."""

from __future__ import annotations

import re
from typing import Any

import pytest

from app.observability.metrics import METRIC_NAMES
from infra.settings import ConfigError, parse_settings
from infra.tools.synth import Synthesis, synthesize
from tests.docs.pages import section
from tests.infra.promql import metric_names

# Series the rules read that the app does not export, and the exporter kube-prometheus-stack runs for each.
CLUSTER_METRICS = {
    "container_cpu_usage_seconds_total": "cAdvisor (kubelet)",
    "container_memory_working_set_bytes": "cAdvisor (kubelet)",
    "kube_pod_container_resource_limits": "kube-state-metrics",
    "kube_pod_status_ready": "kube-state-metrics",
    "kube_deployment_status_replicas_available": "kube-state-metrics",
    "kube_pod_info": "kube-state-metrics",
    "node_timex_offset_seconds": "node-exporter",
    "node_timex_sync_status": "node-exporter",
    "node_timex_maxerror_seconds": "node-exporter",
}
MONITORING_KINDS = ("ServiceMonitor", "PrometheusRule", "AlertmanagerConfig")


def rules(s: Synthesis) -> dict[str, dict[str, Any]]:
    (group,) = s.one("PrometheusRule").manifest["spec"]["groups"]
    return {r["alert"]: r for r in group["rules"]}


def test_every_series_named_is_exported_by_the_app_or_a_cluster_exporter(prod: Synthesis) -> None:
    named: set[str] = set()
    for rule in rules(prod).values():
        names = metric_names(rule["expr"])
        assert names, rule["alert"]
        named |= names
    app_names = {n for n in named if n.startswith("clawbot_")}
    assert app_names <= METRIC_NAMES, app_names - METRIC_NAMES
    assert named - app_names <= set(CLUSTER_METRICS), named - app_names - set(CLUSTER_METRICS)


@pytest.mark.parametrize(
    "alert, fragment, for_",
    [
        ("ClawbotHighCpu", "> 0.85", "5m"),
        ("ClawbotHighMemory", "> 0.9", "1m"),
        ("ClawbotSlowFirstToken", "clawbot_time_to_first_token_seconds_bucket", "5m"),
        ("ClawbotSlowFirstToken", "> 2", "5m"),
        ("ClawbotSlowTokens", "> 0.25", "5m"),
        ("ClawbotHighErrorRate", 'status=~"5.."}[10m]', "0s"),
        ("ClawbotHighErrorRate", "> 0.05", "0s"),
        ("ClawbotKeyAbuse", "[1m])) * 60\n  > 1000", "0s"),
        ("ClawbotQueueDepthHigh", "> 64", "5m"),
        ("ClawbotUnavailable", "== 0", "2m"),
        ("ClawbotMetricsAbsent", "absent(clawbot_model_ready", "10m"),
        ("ClawbotPodsNotReady", 'condition="false"', "15m"),
        ("ClawbotNodeClockSkew", "> 0.5", "10m"),
        ("ClawbotNodeClockNotSynchronised", "node_timex_sync_status", "10m"),
    ],
)
def test_seed_thresholds_and_windows(prod: Synthesis, alert: str, fragment: str, for_: str) -> None:
    rule = rules(prod)[alert]
    assert fragment in rule["expr"] and rule["for"] == for_
    assert 'namespace="clawbot"' in rule["expr"]


def test_latency_is_time_to_first_token_and_per_token_never_the_whole_request(prod: Synthesis) -> None:
    exprs = " ".join(r["expr"] for r in rules(prod).values())
    assert "clawbot_request_duration_seconds" not in exprs  # a streamed reply is long by design
    assert "clawbot_time_per_output_token_seconds_bucket" in rules(prod)["ClawbotSlowTokens"]["expr"]


def test_every_alert_has_a_severity_a_summary_and_a_runbook(prod: Synthesis) -> None:
    for rule in rules(prod).values():
        assert rule["labels"]["severity"] in ("warning", "critical") and rule["labels"]["service"] == "clawbot"
        assert rule["annotations"]["summary"] and rule["annotations"]["runbook"]
        assert "{{ $labels.namespace }}" in rule["annotations"]["summary"]


def test_thresholds_and_windows_come_from_config() -> None:
    s = synthesize(
        "prod",
        overrides={
            "alertCpuPercent": 70,
            "alertCpuFor": "10m",
            "alertFirstTokenMs": 1500,
            "alertTokenLatencyMs": 100,
            "alertLatencyFor": "2m",
            "alertKeyRequestsPerMinute": 250,
            "alertKeyWindow": "30s",
            "alertErrorRatePercent": 2,
            "alertErrorRateWindow": "5m",
            "alertQueueDepth": 10,
            "alertClockOffsetMs": 200,
            "alertGroupWait": "5s",
        },
    )
    r = rules(s)
    assert r["ClawbotHighCpu"]["expr"].endswith("> 0.7") and r["ClawbotHighCpu"]["for"] == "10m"
    assert r["ClawbotSlowFirstToken"]["expr"].endswith("> 1.5") and r["ClawbotSlowFirstToken"]["for"] == "2m"
    assert r["ClawbotSlowTokens"]["expr"].endswith("> 0.1") and r["ClawbotSlowTokens"]["for"] == "2m"
    assert r["ClawbotKeyAbuse"]["expr"].endswith("> 250") and "[30s]" in r["ClawbotKeyAbuse"]["expr"]
    assert r["ClawbotHighErrorRate"]["expr"].endswith("> 0.02") and "[5m]" in r["ClawbotHighErrorRate"]["expr"]
    assert r["ClawbotQueueDepthHigh"]["expr"].endswith("> 10")
    assert r["ClawbotNodeClockSkew"]["expr"].endswith("> 0.2")
    assert s.one("AlertmanagerConfig").manifest["spec"]["route"]["groupWait"] == "5s"
    # The app flags a key at the same rate the alert does.
    assert s.one("ConfigMap", "clawbot-config").manifest["data"]["ABNORMAL_KEY_PER_MINUTE"] == "250"


@pytest.mark.parametrize(
    "key, value, message",
    [
        (
            "alertErrorRateWindow",
            "10 minutes",
            "clawbot:alertErrorRateWindow must be a duration like 30s, 5m or 1h30m, got '10 minutes'",
        ),
        ("alertKeyWindow", "0s", "clawbot:alertKeyWindow must be between 1s and 86400s, got '0s'"),
        ("alertSelectorLabels", ["release"], "clawbot:alertSelectorLabels must hold key=value pairs"),
    ],
)
def test_bad_alert_config_names_the_key(key: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_settings({key: value}, stack="test")


def test_monitoring_objects_carry_the_kube_prometheus_stack_selector_label(prod: Synthesis) -> None:
    for kind in MONITORING_KINDS:
        labels = prod.one(kind).manifest["metadata"]["labels"]
        assert labels["release"] == "kube-prometheus-stack", kind
        assert labels["app.kubernetes.io/name"] == "clawbot"


def test_selector_labels_come_from_config() -> None:
    s = synthesize("prod", overrides={"alertSelectorLabels": ["release=monitoring", "team=ml"]})
    for kind in MONITORING_KINDS:
        labels = s.one(kind).manifest["metadata"]["labels"]
        assert labels["release"] == "monitoring" and labels["team"] == "ml", kind


def test_alerts_mail_the_configured_address_over_tls(prod: Synthesis) -> None:
    amc = prod.one("AlertmanagerConfig").manifest
    assert amc["apiVersion"] == "monitoring.coreos.com/v1alpha1"
    (receiver,) = amc["spec"]["receivers"]
    assert amc["spec"]["route"]["receiver"] == receiver["name"]
    (email,) = receiver["emailConfigs"]
    assert email["to"] == "oncall@example.com" and email["smarthost"] == "smtp.example.com:587"
    # The stack names an SMTP user, so its password (a declared secret, stood in by synth) rides along as a reference.
    assert email["authUsername"] == "clawbot-alerts"
    assert email["authPassword"] == {"name": "clawbot-alert-smtp", "key": "password"}
    assert email["requireTLS"] is True
    relay = synthesize("prod", overrides={"alertSmtpRequireTls": False}).one("AlertmanagerConfig").manifest
    assert relay["spec"]["receivers"][0]["emailConfigs"][0]["requireTLS"] is False


def test_smtp_password_goes_to_a_secret_reference() -> None:
    s = synthesize("prod", overrides={"alertSmtpPassword": "smtp-pass-Zk39fQ"})
    email = s.one("AlertmanagerConfig").manifest["spec"]["receivers"][0]["emailConfigs"][0]
    assert email["authPassword"] == {"name": "clawbot-alert-smtp", "key": "password"}
    assert s.one("Secret", "clawbot-alert-smtp").manifest["stringData"]["password"] == "smtp-pass-Zk39fQ"


def test_service_monitor_scrapes_the_metrics_service_and_not_the_load_balancer(prod: Synthesis) -> None:
    sm = prod.one("ServiceMonitor").manifest["spec"]
    metrics_svc = prod.one("Service", "clawbot-metrics").manifest
    public_svc = prod.one("Service", "clawbot").manifest
    assert sm["endpoints"][0]["port"] == "metrics" and sm["endpoints"][0]["path"] == "/metrics"
    selects = lambda svc: all(svc["metadata"]["labels"].get(k) == v for k, v in sm["selector"]["matchLabels"].items())  # noqa: E731
    assert selects(metrics_svc) and not selects(public_svc)
    assert metrics_svc["spec"]["type"] == "ClusterIP"
    assert metrics_svc["spec"]["ports"] == [
        {"name": "metrics", "port": 9464, "targetPort": "metrics", "protocol": "TCP"}
    ]
    assert [p["port"] for p in public_svc["spec"]["ports"]] == [18789]
    container = prod.one("Deployment", "clawbot").manifest["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "metrics", "containerPort": 9464, "protocol": "TCP"} in container["ports"]


def test_alert_rules_output_lists_them_and_dev_has_none(prod: Synthesis, dev: Synthesis) -> None:
    assert prod.outputs["alertRules"] == list(rules(prod))
    assert dev.outputs["alertRules"] == [] and dev.find("PrometheusRule") == []


def documented_alert_table() -> dict[str, str]:
    """alert name -> its "do" column, from the operations docs' "Alerts and what to do" table."""
    rows: dict[str, str] = {}
    for line in section("operations/alerts.md", "Alerts and what to do").splitlines():
        m = re.match(r"^\| `(Clawbot\w+)`[^|]*\|[^|]*\| (.*) \|$", line)
        if m:
            rows[m.group(1)] = m.group(2)
    return rows


def test_the_documented_alert_table_matches_the_rules(prod: Synthesis) -> None:
    table = documented_alert_table()
    assert list(table) == list(rules(prod))
    for name, rule in rules(prod).items():
        assert table[name] == rule["annotations"]["runbook"], name
