"""Alerting through the Prometheus operator: the PrometheusRule and the AlertmanagerConfig that mails the alerts
(the ServiceMonitor that feeds them belongs to Monitoring).

Every alert keeps the `namespace` label (each aggregation is `by (namespace, ...)`): the operator routes to an
AlertmanagerConfig only the alerts whose `namespace` equals the AlertmanagerConfig's own (it adds that matcher to
the route), so an alert that drops the label is never mailed. The `clawbot_*` series come from
app.observability.metrics (a test holds them to METRIC_NAMES); the others from cAdvisor, kube-state-metrics and
node-exporter as kube-prometheus-stack scrapes them (kube-state-metrics with honorLabels, so its `namespace` is the
object's namespace).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from app.access.tokens import LEEWAY_S
from infra.components.monitoring import MONITORING_API
from infra.contract import APP_LABELS, APP_NAME, CONTAINER_NAME
from infra.settings.alerts import AlertSettings

ALERTMANAGER_CONFIG_API = "monitoring.coreos.com/v1alpha1"
SMTP_SECRET_KEY = "password"
EMAIL_RECEIVER = "email"
# Kubelet probes answer on the API port; they are not user requests and would dilute the error rate.
PROBE_ROUTES = '"/(healthz|readyz)"'
QUEUE_FOR = "5m"
UNAVAILABLE_FOR = "2m"
ABSENT_FOR = "10m"
NOT_READY_FOR = "15m"
CLOCK_FOR = "10m"
# node-exporter's own mixin (NodeClockNotSynchronising): the kernel reports this max error when NTP has let go.
UNSYNCED_MAX_ERROR_S = 16


def label(name: str) -> str:
    """An alert-annotation template placeholder for one of the alert's labels."""
    return "{{ $labels." + name + " }}"


VALUE = "{{ $value | humanize }}"


@dataclass(frozen=True)
class Alert:
    name: str
    expr: str
    for_: str
    severity: str
    summary: str  # a template: {{ $labels.x }} and {{ $value }} are filled in by Prometheus
    runbook: str  # what to do, mailed with the alert; docs/operations/alerts.md's table repeats it

    def rule(self) -> dict[str, Any]:
        return {
            "alert": self.name,
            "expr": self.expr,
            "for": self.for_,
            "labels": {"severity": self.severity, "service": APP_NAME},
            "annotations": {"summary": self.summary, "runbook": self.runbook},
        }


def _on_chat_nodes(namespace: str, per_exporter_pod: str) -> str:
    """`per_exporter_pod` (node-exporter series) per node, kept only for nodes running a pod of `namespace`.

    node-exporter's series carry the namespace and pod of the exporter itself; kube_pod_info maps that pod to its
    node (the kubernetes-mixin's node_namespace_pod:kube_pod_info: join). The result carries the chat
    namespace, so the AlertmanagerConfig there receives it.
    """
    return (
        f'max by (namespace, node) (kube_pod_info{{namespace="{namespace}", node!=""}})\n'
        f"  * on (node) group_left\n"
        f"max by (node) (\n"
        f"  {per_exporter_pod}\n"
        f'  * on (namespace, pod) group_left (node) max by (namespace, pod, node) (kube_pod_info{{node!=""}})\n'
        f")"
    )


def alert_list(namespace: str, deployment: str, t: AlertSettings) -> list[Alert]:
    """The alerts with thresholds and windows from config; pure so tests can read and evaluate every expression."""
    ns = f'namespace="{namespace}"'
    chat = f'{ns}, container="{CONTAINER_NAME}"'
    pods = f'{deployment}-[a-z0-9]+-[a-z0-9]+'  # the Deployment's pods (ReplicaSet hash, pod suffix), not Redis'
    where = f"{label('pod')} in {label('namespace')}"
    return [
        Alert(
            "ClawbotHighCpu",
            f"sum by (namespace, pod) (rate(container_cpu_usage_seconds_total{{{chat}}}[2m]))\n"
            f'  / sum by (namespace, pod) (kube_pod_container_resource_limits{{{chat}, resource="cpu"}})\n'
            f"  > {t.cpu_percent / 100:g}",
            t.cpu_for,
            "warning",
            f"{where} has used more than {t.cpu_percent}% of its CPU limit for {t.cpu_for}",
            "Check the HPA is scaling (kubectl get hpa); raise cpuLimit or maxReplicas.",
        ),
        Alert(
            "ClawbotHighMemory",
            f"sum by (namespace, pod) (container_memory_working_set_bytes{{{chat}}})\n"
            f'  / sum by (namespace, pod) (kube_pod_container_resource_limits{{{chat}, resource="memory"}})\n'
            f"  > {t.memory_percent / 100:g}",
            t.memory_for,
            "critical",
            f"{where} has used more than {t.memory_percent}% of its memory limit for {t.memory_for}: an OOM kill is near",
            "Raise memoryLimit; lower maxBatchSize or maxTokens.",
        ),
        Alert(
            "ClawbotSlowFirstToken",
            f"histogram_quantile(0.95, sum by (namespace, le) (rate(clawbot_time_to_first_token_seconds_bucket{{{ns}}}[5m])))\n"
            f"  > {t.first_token_ms / 1000:g}",
            t.latency_for,
            "warning",
            f"p95 time to first token in {label('namespace')} is {VALUE}s (threshold {t.first_token_ms / 1000:g}s)",
            "Look at Queue depth and GPU utilization: a long queue means scale out; a busy GPU means a bigger GPU or "
            "shorter prompts.",
        ),
        Alert(
            "ClawbotSlowTokens",
            f"histogram_quantile(0.95, sum by (namespace, le) (rate(clawbot_time_per_output_token_seconds_bucket{{{ns}}}[5m])))\n"
            f"  > {t.token_latency_ms / 1000:g}",
            t.latency_for,
            "warning",
            f"p95 time per output token in {label('namespace')} is {VALUE}s (threshold {t.token_latency_ms}ms)",
            "Decode steps are slow: batches too large for the GPU (lower maxBatchSize) or the pod runs on CPU; "
            "check GPU utilization and the Batch size panel.",
        ),
        Alert(
            "ClawbotHighErrorRate",
            # 5xx of the answered requests: a client that disconnected (logged as 499) got no answer, and is
            # neither an error nor a success that could dilute one.
            f'sum by (namespace) (rate(clawbot_requests_total{{{ns}, route!~{PROBE_ROUTES}, status=~"5.."}}[{t.error_rate_window}]))\n'
            f'  / sum by (namespace) (rate(clawbot_requests_total{{{ns}, route!~{PROBE_ROUTES}, status!="499"}}[{t.error_rate_window}]))\n'
            f"  > {t.error_rate_percent / 100:g}",
            "0s",
            "critical",
            f"{{{{ $value | humanizePercentage }}}} of requests in {label('namespace')} failed with 5xx over "
            f"{t.error_rate_window} (threshold {t.error_rate_percent}%)",
            "kubectl logs deploy/clawbot (JSON lines carry the request id and status); 504 generation_timeout means "
            "overload, 503 a shutdown or Redis; check Redis and the model volume.",
        ),
        Alert(
            "ClawbotKeyAbuse",
            f"sum by (namespace, key_id) (rate(clawbot_key_requests_total{{{ns}}}[{t.key_window}])) * 60\n"
            f"  > {t.key_requests_per_minute}",
            "0s",
            "warning",
            f"API key {label('key_id')} in {label('namespace')} is making {VALUE} requests a minute "
            f"(threshold {t.key_requests_per_minute})",
            "Find the key id's owner; if it leaked or runs away, rotate or revoke it (python -m app.keys).",
        ),
        Alert(
            "ClawbotQueueDepthHigh",
            f"max by (namespace, pod) (clawbot_queue_depth{{{ns}}}) > {t.queue_depth}",
            QUEUE_FOR,
            "warning",
            f"{where} has had more than {t.queue_depth} requests waiting for a batch slot for {QUEUE_FOR}",
            "Raise maxReplicas or gpuLimit; check pods are not Pending for lack of GPU nodes.",
        ),
        Alert(
            "ClawbotUnavailable",
            f'max by (namespace, deployment) (kube_deployment_status_replicas_available{{{ns}, deployment="{deployment}"}}) == 0',
            UNAVAILABLE_FOR,
            "critical",
            f"Deployment {label('deployment')} in {label('namespace')} has no ready pod: every request fails",
            "kubectl get pods; describe them: Pending (no GPU node, taint), CrashLoop (key files, model path).",
        ),
        Alert(
            "ClawbotMetricsAbsent",
            f"absent(clawbot_model_ready{{{ns}}})",
            ABSENT_FOR,
            "critical",
            f"Prometheus has scraped no clawbot metrics in {label('namespace')} for {ABSENT_FOR}",
            "Pods down, or the scrape broken: check the ServiceMonitor's labels match Prometheus' "
            "serviceMonitorSelector (alertSelectorLabels) and the NetworkPolicy admits monitoringNamespace.",
        ),
        Alert(
            "ClawbotPodsNotReady",
            f'sum by (namespace, pod) (kube_pod_status_ready{{{ns}, condition="false", pod=~"{pods}"}}) > 0',
            NOT_READY_FOR,
            "warning",
            f"{where} has not been ready for {NOT_READY_FOR}",
            "A model still loading is normal for startupTimeoutSeconds; after that, read the pod's logs.",
        ),
        Alert(
            "ClawbotNodeClockSkew",
            _on_chat_nodes(namespace, "abs(node_timex_offset_seconds)") + f" > {t.clock_offset_ms / 1000:g}",
            CLOCK_FOR,
            "warning",
            f"Node {label('node')}, running chat pods of {label('namespace')}, is {VALUE}s off NTP time "
            f"(threshold {t.clock_offset_ms}ms; JWTs tolerate {LEEWAY_S}s between pods)",
            "Check chrony/ntpd on the node (chronyc tracking); cordon and replace the node if it will not sync.",
        ),
        Alert(
            "ClawbotNodeClockNotSynchronised",
            _on_chat_nodes(
                namespace,
                f"(min_over_time(node_timex_sync_status[5m]) == 0 and node_timex_maxerror_seconds >= {UNSYNCED_MAX_ERROR_S})",
            ),
            CLOCK_FOR,
            "warning",
            f"Node {label('node')}, running chat pods of {label('namespace')}, has not been synchronised to NTP "
            f"for {CLOCK_FOR}",
            "Check the node's NTP daemon and that it can reach its time source (UDP 123 or the cloud's "
            "link-local time service).",
        ),
    ]


@dataclass
class AlertRulesArgs:
    namespace: pulumi.Input[str]
    namespace_name: str  # the plain name, baked into the PromQL label matchers
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
        settings = args.alerts
        alerts = alert_list(args.namespace_name, args.deployment_name, settings)
        self.alert_names = [a.name for a in alerts]
        # The operator picks these objects up only when their labels match its selectors (kube-prometheus-stack:
        # release=<Helm release>); the app labels stay for `kubectl get -l`.
        labels = {**APP_LABELS, **dict(settings.selector_labels)}

        def custom(
            api_version: str, kind: str, spec: dict[str, Any], opts: pulumi.ResourceOptions = child
        ) -> k8s.apiextensions.CustomResource:
            return k8s.apiextensions.CustomResource(
                f"{name}-{kind.lower()}",
                api_version=api_version,
                kind=kind,
                metadata={"name": prefix, "namespace": args.namespace, "labels": labels},
                spec=spec,
                opts=opts,
            )

        self.prometheus_rule = custom(
            MONITORING_API,
            "PrometheusRule",
            {"groups": [{"name": "clawbot.rules", "rules": [a.rule() for a in alerts]}]},
        )

        email: dict[str, Any] = {
            "to": settings.email,
            "from": settings.email_from,
            "smarthost": settings.smarthost,
            "requireTLS": settings.smtp_require_tls,
            "sendResolved": True,
        }
        depends: list[pulumi.Resource] = []
        self.smtp_secret = None
        if settings.smtp_username:
            email["authUsername"] = settings.smtp_username
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
                    "receiver": EMAIL_RECEIVER,
                    "groupBy": ["namespace", "alertname"],
                    "groupWait": settings.group_wait,
                    "groupInterval": "5m",
                    "repeatInterval": "4h",
                    # The operator adds namespace="<this namespace>"; this narrows it to the rules above,
                    # each of which carries this service label.
                    "matchers": [{"name": "service", "value": APP_NAME, "matchType": "="}],
                },
                "receivers": [{"name": EMAIL_RECEIVER, "emailConfigs": [email]}],
            },
            opts=pulumi.ResourceOptions(parent=self, depends_on=depends),
        )
        self.register_outputs({"alertRules": self.alert_names})
