"""Observability objects for the Prometheus operator: ServiceMonitor, PrometheusRule and e-mail routing.

Every `clawbot_*` series an expression names comes from app.observability.metrics (a test holds them to
METRIC_NAMES); the rest come from cAdvisor and kube-state-metrics.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from infra.contract import APP_LABELS, APP_NAME, CONTAINER_NAME, METRICS_PATH, METRICS_PORT_NAME, METRICS_SERVICE_LABELS
from infra.settings import AlertSettings

MONITORING_API = "monitoring.coreos.com/v1"
ALERTMANAGER_CONFIG_API = "monitoring.coreos.com/v1alpha1"
INFERENCE_ROUTES = ("/api/chat", "/v1/chat/completions")
SMTP_SECRET_KEY = "password"


@dataclass(frozen=True)
class Alert:
    name: str
    expr: str
    for_: str
    severity: str
    summary: str

    def rule(self) -> dict[str, Any]:
        return {
            "alert": self.name,
            "expr": self.expr,
            "for": self.for_,
            "labels": {"severity": self.severity, "service": APP_NAME},
            "annotations": {"summary": self.summary},
        }


def alert_list(namespace: str, service: str, deployment: str, t: AlertSettings) -> list[Alert]:
    """The seed alerts with thresholds from config; pure so tests can read every expression."""
    ns = f'namespace="{namespace}"'
    chat = f'{ns}, container="{CONTAINER_NAME}"'
    routes = "|".join(INFERENCE_ROUTES)
    return [
        Alert(
            "ClawbotHighCpu",
            f"sum by (pod) (rate(container_cpu_usage_seconds_total{{{chat}}}[5m]))"
            f' / sum by (pod) (kube_pod_container_resource_limits{{{chat}, resource="cpu"}}) > {t.cpu_percent / 100:g}',
            "5m", "warning", f"A chat pod has used more than {t.cpu_percent}% of its CPU limit for 5 minutes",
        ),
        Alert(
            "ClawbotHighMemory",
            f"sum by (pod) (container_memory_working_set_bytes{{{chat}}})"
            f' / sum by (pod) (kube_pod_container_resource_limits{{{chat}, resource="memory"}}) > {t.memory_percent / 100:g}',
            "1m", "critical", f"A chat pod has used more than {t.memory_percent}% of its memory limit for 1 minute (OOM kill is near)",
        ),
        Alert(
            "ClawbotHighLatencyP95",
            f'histogram_quantile(0.95, sum by (le) (rate(clawbot_request_duration_seconds_bucket{{{ns}, route=~"{routes}"}}[5m])))'
            f" > {t.latency_p95_ms / 1000:g}",
            "5m", "warning", f"p95 inference latency is above {t.latency_p95_ms / 1000:g}s",
        ),
        Alert(
            "ClawbotHighErrorRate",
            f'sum(rate(clawbot_requests_total{{{ns}, status=~"5.."}}[10m])) / sum(rate(clawbot_requests_total{{{ns}}}[10m]))'
            f" > {t.error_rate_percent / 100:g}",
            "1m", "critical", f"More than {t.error_rate_percent}% of requests failed with 5xx over 10 minutes",
        ),
        Alert(
            "ClawbotKeyAbuse",
            f"sum by (key_id) (rate(clawbot_key_requests_total{{{ns}}}[2m])) * 60 > {t.key_requests_per_minute}",
            "2m", "warning", f"One API key is making more than {t.key_requests_per_minute} requests a minute",
        ),
        Alert(
            "ClawbotQueueDepthHigh",
            f"max(clawbot_queue_depth{{{ns}}}) > {t.queue_depth}",
            "5m", "warning", f"More than {t.queue_depth} requests have waited for a batch slot for 5 minutes: add replicas",
        ),
        Alert(
            "ClawbotNoReadyEndpoints",
            f'(sum(kube_endpoint_address{{{ns}, endpoint="{service}", ready="true"}}) or vector(0)) == 0',
            "2m", "critical", "The chat Service has no ready endpoint: every request fails",
        ),
        Alert(
            "ClawbotMetricsAbsent",
            f"absent(clawbot_model_ready{{{ns}}})",
            "10m", "critical", "Prometheus has scraped no clawbot metrics for 10 minutes (pods down or scrape broken)",
        ),
        Alert(
            "ClawbotPodsNotReady",
            f'sum by (pod) (kube_pod_status_ready{{{ns}, condition="false", pod=~"{deployment}-.*"}}) > 0',
            "15m", "warning", "A chat pod has not been ready for 15 minutes (model load failing or stuck)",
        ),
    ]


_SERIES = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{")


def metric_names(expr: str) -> set[str]:
    """Series names an expression selects (every selector here carries a {label} matcher)."""
    return set(_SERIES.findall(expr)) - {"by", "without"}


@dataclass
class AlertRulesArgs:
    namespace: pulumi.Input[str]
    namespace_name: str  # the plain name, baked into the PromQL label matchers
    service_name: str
    deployment_name: str
    alerts: AlertSettings
    smtp_password: pulumi.Output[str] | None = None
    name_prefix: str = "clawbot"


class AlertRules(pulumi.ComponentResource):
    alert_names: list[str]

    def __init__(self, name: str, args: AlertRulesArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("clawbot:infra:AlertRules", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        prefix = args.name_prefix
        alerts = alert_list(args.namespace_name, args.service_name, args.deployment_name, args.alerts)
        self.alert_names = [a.name for a in alerts]

        def custom(api_version: str, kind: str, spec: dict[str, Any], opts: pulumi.ResourceOptions = child) -> k8s.apiextensions.CustomResource:
            return k8s.apiextensions.CustomResource(
                f"{name}-{kind.lower()}",
                api_version=api_version,
                kind=kind,
                metadata={"name": prefix, "namespace": args.namespace, "labels": APP_LABELS},
                spec=spec,
                opts=opts,
            )

        self.service_monitor = custom(
            MONITORING_API,
            "ServiceMonitor",
            {
                "selector": {"matchLabels": dict(METRICS_SERVICE_LABELS)},
                "namespaceSelector": {"matchNames": [args.namespace_name]},
                "endpoints": [{"port": METRICS_PORT_NAME, "path": METRICS_PATH, "interval": "30s", "scrapeTimeout": "10s"}],
            },
        )
        self.prometheus_rule = custom(
            MONITORING_API, "PrometheusRule", {"groups": [{"name": "clawbot.rules", "rules": [a.rule() for a in alerts]}]}
        )

        email: dict[str, Any] = {
            "to": args.alerts.email,
            "from": args.alerts.email_from,
            "smarthost": args.alerts.smarthost,
            "requireTLS": True,
            "sendResolved": True,
        }
        depends: list[pulumi.Resource] = []
        self.smtp_secret = None
        if args.alerts.smtp_username:
            email["authUsername"] = args.alerts.smtp_username
        if args.smtp_password is not None:
            smtp_secret_name = f"{prefix}-alert-smtp"
            self.smtp_secret = k8s.core.v1.Secret(
                f"{name}-smtp",
                metadata={"name": smtp_secret_name, "namespace": args.namespace, "labels": APP_LABELS},
                type="Opaque",
                string_data={SMTP_SECRET_KEY: args.smtp_password},
                opts=child,
            )
            email["authPassword"] = {"name": smtp_secret_name, "key": SMTP_SECRET_KEY}
            depends.append(self.smtp_secret)
        self.alertmanager_config = custom(
            ALERTMANAGER_CONFIG_API,
            "AlertmanagerConfig",
            {
                "route": {
                    "receiver": "email",
                    "groupBy": ["alertname", "pod"],
                    "groupWait": "30s",
                    "groupInterval": "5m",
                    "repeatInterval": "4h",
                    # Routes exactly the rules above: each carries this service label.
                    "matchers": [{"name": "service", "value": APP_NAME, "matchType": "="}],
                },
                "receivers": [{"name": "email", "emailConfigs": [email]}],
            },
            opts=pulumi.ResourceOptions(parent=self, depends_on=depends),
        )
        self.register_outputs({"alertRules": self.alert_names})
