"""Alerts: the seed thresholds, config overrides, and every clawbot_* series named is one the app exports."""
from __future__ import annotations

from typing import Any

import pytest

from app.observability.metrics import METRIC_NAMES
from infra.alert_rules import metric_names
from infra.synth import Synthesis, synthesize

CLUSTER_METRICS = {
    "container_cpu_usage_seconds_total", "container_memory_working_set_bytes", "kube_pod_container_resource_limits",
    "kube_pod_status_ready", "kube_endpoint_address", "kube_endpoint_address_available", "up",
}


def rules(s: Synthesis) -> dict[str, dict[str, Any]]:
    (group,) = s.one("PrometheusRule").manifest["spec"]["groups"]
    return {r["alert"]: r for r in group["rules"]}


def test_every_series_named_is_exported_by_the_app_or_the_cluster(prod: Synthesis) -> None:
    named: set[str] = set()
    for rule in rules(prod).values():
        names = metric_names(rule["expr"])
        assert names, rule["alert"]
        named |= names
    app_names = {n for n in named if n.startswith("clawbot_")}
    assert app_names <= METRIC_NAMES, app_names - METRIC_NAMES
    assert named - app_names <= CLUSTER_METRICS
    assert metric_names('rate(clawbot_not_a_metric_total{namespace="x"}[5m])') - METRIC_NAMES == {"clawbot_not_a_metric_total"}


@pytest.mark.parametrize(
    "alert, fragment, for_",
    [
        ("ClawbotHighCpu", "> 0.85", "5m"),
        ("ClawbotHighMemory", "> 0.9", "1m"),
        ("ClawbotHighLatencyP95", "histogram_quantile(0.95", "5m"),
        ("ClawbotHighLatencyP95", "> 2", "5m"),
        ("ClawbotHighErrorRate", "[10m])) > 0.05", "1m"),
        ("ClawbotKeyAbuse", "* 60 > 1000", "2m"),
        ("ClawbotQueueDepthHigh", "max(clawbot_queue_depth", "5m"),
        ("ClawbotNoReadyEndpoints", "== 0", "2m"),
        ("ClawbotMetricsAbsent", "absent(clawbot_model_ready", "10m"),
        ("ClawbotPodsNotReady", 'condition="false"', "15m"),
    ],
)
def test_seed_alert_thresholds(prod: Synthesis, alert: str, fragment: str, for_: str) -> None:
    rule = rules(prod)[alert]
    assert fragment in rule["expr"] and rule["for"] == for_
    assert 'namespace="clawbot"' in rule["expr"]


def test_thresholds_come_from_config() -> None:
    s = synthesize("prod", overrides={"alertCpuPercent": 70, "alertLatencyP95Ms": 1500, "alertKeyRequestsPerMinute": 250,
                                      "alertErrorRatePercent": 2, "alertQueueDepth": 10})
    r = rules(s)
    assert r["ClawbotHighCpu"]["expr"].endswith("> 0.7")
    assert r["ClawbotHighLatencyP95"]["expr"].endswith("> 1.5")
    assert r["ClawbotKeyAbuse"]["expr"].endswith("> 250")
    assert r["ClawbotHighErrorRate"]["expr"].endswith("> 0.02")
    assert r["ClawbotQueueDepthHigh"]["expr"].endswith("> 10")
    assert s.one("ConfigMap", "clawbot-config").manifest["data"]["ABNORMAL_KEY_PER_MINUTE"] == "250"


def test_alerts_mail_the_configured_address(prod: Synthesis) -> None:
    amc = prod.one("AlertmanagerConfig").manifest
    assert amc["apiVersion"] == "monitoring.coreos.com/v1alpha1"
    (receiver,) = amc["spec"]["receivers"]
    assert amc["spec"]["route"]["receiver"] == receiver["name"]
    (email,) = receiver["emailConfigs"]
    assert email["to"] == "oncall@example.com" and email["smarthost"] == "smtp.example.com:587"
    # The stack names an SMTP user, so its password (a declared secret, stood in by synth) rides along as a reference.
    assert email["authUsername"] == "clawbot-alerts"
    assert email["authPassword"] == {"name": "clawbot-alert-smtp", "key": "password"}


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
    assert metrics_svc["spec"]["ports"] == [{"name": "metrics", "port": 9464, "targetPort": "metrics", "protocol": "TCP"}]
    assert [p["port"] for p in public_svc["spec"]["ports"]] == [18789]
    container = prod.one("Deployment", "clawbot").manifest["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "metrics", "containerPort": 9464, "protocol": "TCP"} in container["ports"]


def test_alert_rules_output_lists_them_and_dev_has_none(prod: Synthesis, dev: Synthesis) -> None:
    assert prod.outputs["alertRules"] == list(rules(prod))
    assert dev.outputs["alertRules"] == [] and dev.find("PrometheusRule") == []
