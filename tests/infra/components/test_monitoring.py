"""Monitoring: the ServiceMonitor exists whenever Prometheus must scrape the chat pods (the alerts, or the HPA's
in-flight target through prometheus-adapter), whether alerts are on or off, and scrapes the metrics Service."""

from __future__ import annotations

import pytest

from infra.contract import METRICS_PATH, METRICS_PORT_NAME, METRICS_SERVICE_LABELS, RELEASE_LABELS
from infra.tools.synth import Synthesis, synthesize

ALERTS_OFF = {"alertsEnabled": False}
NOTHING_READS_METRICS = {"alertsEnabled": False, "hpaInflightPerPod": 0, "customMetricsAdapter": False}


@pytest.fixture(scope="module")
def prod_without_alerts() -> Synthesis:
    return synthesize("prod", overrides=ALERTS_OFF)


def test_the_service_monitor_scrapes_the_metrics_service(prod: Synthesis) -> None:
    monitor = prod.one("ServiceMonitor", "clawbot").manifest
    service = prod.one("Service", "clawbot-metrics").manifest
    assert monitor["spec"]["selector"]["matchLabels"] == METRICS_SERVICE_LABELS
    assert METRICS_SERVICE_LABELS.items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [service["metadata"]["namespace"]]
    [endpoint] = monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"]) == (METRICS_PORT_NAME, METRICS_PATH)
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert monitor["spec"]["podTargetLabels"] == list(RELEASE_LABELS)
    # kube-prometheus-stack loads only objects carrying its release label (alertSelectorLabels).
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_with_alerts_off_the_hpa_metric_is_still_scraped(prod_without_alerts: Synthesis) -> None:
    """prod scales on clawbot_inflight_requests, which prometheus-adapter reads from Prometheus: without the
    ServiceMonitor the HPA would lack the metric and never scale down."""
    s = prod_without_alerts
    assert (
        s.one("HorizontalPodAutoscaler").manifest["spec"]["metrics"][1]["pods"]["metric"]["name"]
        == "clawbot_inflight_requests"
    )
    assert s.one("ServiceMonitor", "clawbot").manifest["spec"]["endpoints"][0]["port"] == METRICS_PORT_NAME
    assert not s.find("PrometheusRule") and not s.find("AlertmanagerConfig") and s.outputs["alertRules"] == []


def test_no_service_monitor_when_nothing_reads_the_metrics(dev: Synthesis) -> None:
    """Without alerts or an in-flight HPA the cluster need not run the Prometheus operator, whose CRD it needs."""
    assert not dev.find("ServiceMonitor")
    assert not synthesize("prod", overrides=NOTHING_READS_METRICS).find("ServiceMonitor")
