"""ClawBot's Pulumi program: read the stack settings, compose the components, export where and how to reach the service."""
from __future__ import annotations

import pulumi

from infra.alert_rules import AlertRules, AlertRulesArgs
from infra.autoscaler import Autoscaler, AutoscalerArgs
from infra.chat_service import ChatService, ChatServiceArgs
from infra.dashboard import Dashboard, DashboardArgs
from infra.firewall import ServiceFirewall, ServiceFirewallArgs
from infra.gpu_node_pool import GpuNodePool, GpuNodePoolArgs
from infra.secret_store import SecretStore, SecretStoreArgs, secret_names
from infra.settings import load_settings

PREFIX = "clawbot"

settings, secrets = load_settings()

gpu = GpuNodePool("gpu", GpuNodePoolArgs(gpu=settings.gpu, name_prefix=PREFIX))
chat = ChatService(
    "chat",
    ChatServiceArgs(settings=settings, placement=gpu.placement, secrets=secret_names(PREFIX), name_prefix=PREFIX),
    opts=pulumi.ResourceOptions(depends_on=[gpu]),
)
store = SecretStore(
    "secrets",
    SecretStoreArgs(namespace=chat.namespace, rotation_days=settings.key_rotation_days, hub_token=secrets.hub_token, name_prefix=PREFIX),
)
ServiceFirewall(
    "firewall",
    ServiceFirewallArgs(
        namespace=chat.namespace,
        allowed_cidrs=settings.network.allowed_cidrs,
        monitoring_namespace=settings.network.monitoring_namespace,
        redis_enabled=settings.redis_enabled,
        model_hub_egress_cidrs=settings.network.model_hub_egress_cidrs,
        name_prefix=PREFIX,
    ),
)
if settings.scaling.autoscaled:
    Autoscaler(
        "autoscaler",
        AutoscalerArgs(
            namespace=chat.namespace,
            deployment_name=chat.deployment_name,
            min_replicas=settings.scaling.min_replicas,
            max_replicas=settings.scaling.max_replicas,
            cpu_percent=settings.scaling.cpu_percent,
            inflight_per_pod=settings.scaling.inflight_per_pod,
            scale_down_stabilization_seconds=settings.scaling.scale_down_stabilization_seconds,
            name_prefix=PREFIX,
        ),
    )
alert_names: list[str] = []
if settings.alerts.enabled:
    alerts = AlertRules(
        "alerts",
        AlertRulesArgs(
            namespace=chat.namespace,
            namespace_name=settings.namespace,
            deployment_name=PREFIX,
            alerts=settings.alerts,
            smtp_password=secrets.smtp_password,
            name_prefix=PREFIX,
        ),
    )
    alert_names = alerts.alert_names
    # The Grafana dashboard rides with the alerts: both need the Prometheus stack. Its sidecar must watch this
    # namespace (kube-prometheus-stack: grafana.sidecar.dashboards.searchNamespace=ALL).
    Dashboard(PREFIX, DashboardArgs(namespace=chat.namespace, labels={"app.kubernetes.io/part-of": PREFIX}))

pulumi.export("endpointUrl", chat.endpoint_url)
pulumi.export("namespace", chat.namespace)
pulumi.export("apiKeyIds", store.api_key_ids)
pulumi.export("apiKey", store.api_key)  # secret: `pulumi stack output apiKey --show-secrets`
pulumi.export("alertRules", alert_names)
