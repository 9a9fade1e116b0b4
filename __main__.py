"""ClawBot's Pulumi program: read the stack settings, compose the components, export where and how to reach the service."""

from __future__ import annotations

import pulumi

from infra.components.alert_rules import AlertRules, AlertRulesArgs
from infra.components.autoscaler import Autoscaler, AutoscalerArgs
from infra.components.backups import Backups, BackupsArgs, backups_output
from infra.components.chat_route import ChatRoute, ChatRouteArgs
from infra.components.chat_service import ChatService, ChatServiceArgs
from infra.components.dashboard import Dashboard, DashboardArgs
from infra.components.firewall import ServiceFirewall, ServiceFirewallArgs
from infra.components.gpu_node_pool import GpuNodePool, GpuNodePoolArgs
from infra.components.monitoring import Monitoring, MonitoringArgs, service_monitor_formerly_in
from infra.components.namespace import AppNamespace, AppNamespaceArgs
from infra.components.secret_store import SecretStore, SecretStoreArgs, key_store_egress, key_store_output, secret_names
from infra.preflight import CLUSTER_ID_OUTPUT, IMMUTABLE_FIELDS_OUTPUT, preflight
from infra.release_outputs import canary_output, history_output
from infra.settings import load_settings

PREFIX = "clawbot"

settings, secrets = load_settings()

# This stack's own outputs from its last update: which API and JWT key generations are live, which images ran.
previous = pulumi.StackReference(f"{pulumi.get_organization()}/{pulumi.get_project()}/{pulumi.get_stack()}")
# The cluster must be the stack's, and nothing that holds state or serves may be replaced unasked: every component
# waits for these checks, so a failed one stops preview and up before any object is declared.
checked = preflight(settings, previous, PREFIX)


def after_checks(*also: pulumi.Resource) -> pulumi.ResourceOptions:
    return pulumi.ResourceOptions(depends_on=[checked.gate, *also])


gpu = GpuNodePool("gpu", GpuNodePoolArgs(gpu=settings.gpu, name_prefix=PREFIX), opts=after_checks())
lb = settings.network.load_balancer
namespace = AppNamespace(
    "namespace",
    AppNamespaceArgs(
        name=settings.namespace, load_balancer_readiness_gates=settings.network.load_balanced and lb.target_type == "ip"
    ),
    opts=after_checks(),
)
store = SecretStore(
    "secrets",
    SecretStoreArgs(
        namespace=namespace.name,
        key_store=settings.key_store,
        rotation_days=settings.access.key_rotation_days,
        hub_token=secrets.hub_token,
        previous_rotation=previous.get_output("keyRotation"),
        name_prefix=PREFIX,
    ),
    opts=after_checks(),
)
chat = ChatService(
    "chat",
    ChatServiceArgs(
        settings=settings,
        namespace=namespace.name,
        placement=gpu.placement,
        secrets=secret_names(PREFIX),
        key_secrets=store.secrets,
        secrets_digest=store.content_digest,
        database_url=secrets.conversation_database_url,
        digest_key=store.digest_key,
        hub_token=secrets.hub_token,
        name_prefix=PREFIX,
    ),
    opts=after_checks(gpu),
)
# Services outside the cluster the chat pods call besides DNS, Redis and the database: the KMS endpoint (or, in the
# namespace mode, the API server for the init step that reads the KEK).
chat_egress = key_store_egress(settings.key_store, settings.backups.kubernetes_api_cidrs)
ServiceFirewall(
    "firewall",
    ServiceFirewallArgs(
        namespace=namespace.name,
        allowed_cidrs=settings.network.allowed_cidrs,
        monitoring_namespace=settings.network.monitoring_namespace,
        redis_enabled=settings.redis.enabled,
        model_hub=settings.network.model_hub if settings.model.from_hub else None,
        service_egress=chat_egress,
        health_check_cidrs=settings.network.health_check_cidrs,
        database_cidrs=settings.database.egress_cidrs if settings.database.configured else (),
        database_port=settings.database.port,
        name_prefix=PREFIX,
    ),
    opts=after_checks(),
)
Backups(
    "backups",
    BackupsArgs(
        namespace=namespace.name,
        backups=settings.backups,
        database=settings.database,
        data_claim_name=chat.data_claim_name,
        data_access_mode=settings.data_volume.access_mode,
        storage_class=settings.data_volume.storage_class,
        production=settings.production,
        database_url=secrets.conversation_database_url,
        name_prefix=PREFIX,
    ),
    opts=after_checks(chat),
)
if settings.scaling.autoscaled:
    Autoscaler(
        "autoscaler",
        AutoscalerArgs(
            namespace=namespace.name,
            deployment_name=chat.deployment_name,
            min_replicas=settings.scaling.min_replicas,
            max_replicas=settings.scaling.max_replicas,
            cpu_percent=settings.scaling.cpu_percent,
            inflight_per_pod=settings.scaling.inflight_per_pod,
            scale_down_stabilization_seconds=settings.scaling.scale_down_stabilization_seconds,
            name_prefix=PREFIX,
        ),
        opts=after_checks(),
    )
if settings.metrics_scraped:
    Monitoring(
        "monitoring",
        MonitoringArgs(
            namespace=namespace.name,
            namespace_name=settings.namespace,
            selector_labels=settings.alerts.selector_labels,
            service_monitor_aliases=service_monitor_formerly_in("alerts"),
            name_prefix=PREFIX,
        ),
        opts=after_checks(),
    )
alert_names: list[str] = []
if settings.alerts.enabled:
    alerts = AlertRules(
        "alerts",
        AlertRulesArgs(
            namespace=namespace.name,
            namespace_name=settings.namespace,
            deployment_name=PREFIX,
            alerts=settings.alerts,
            smtp_password=secrets.smtp_password,
            name_prefix=PREFIX,
        ),
        opts=after_checks(),
    )
    alert_names = alerts.alert_names
    # The Grafana dashboard rides with the alerts: both need the Prometheus stack. Its sidecar must watch this
    # namespace (kube-prometheus-stack: grafana.sidecar.dashboards.searchNamespace=ALL).
    Dashboard(
        PREFIX,
        DashboardArgs(namespace=namespace.name, labels={"app.kubernetes.io/part-of": PREFIX}),
        opts=after_checks(),
    )

endpoint_url = chat.endpoint_url
if settings.routing.gateway:
    # Clients come through the stack's Gateway: an HTTPRoute splits their requests by weight (a canary's share).
    canary = settings.release.canary
    route = ChatRoute(
        "route",
        ChatRouteArgs(
            namespace=namespace.name,
            routing=settings.routing,
            hostname=settings.tls.endpoint_hostname,
            canary_weight_percent=canary.weight_percent if canary else None,
            waits_for=[chat.canary_deployment] if chat.canary_deployment else [],
            name_prefix=PREFIX,
        ),
        opts=after_checks(),
    )
    endpoint_url = route.endpoint_url

pulumi.export("endpointUrl", endpoint_url)
pulumi.export("loadBalancerHostname", chat.load_balancer_hostname)  # point endpointHostname's DNS record here
pulumi.export("namespace", namespace.name)
pulumi.export("apiKeyIds", store.api_key_ids)
pulumi.export("apiKey", store.api_key)  # secret: `pulumi stack output apiKey --show-secrets`
pulumi.export("keyRotation", store.rotation)  # read back by the next update (above); ids and times only
pulumi.export("alertRules", alert_names)
# Newest first: [0] runs now, [1] is what a rollback goes back to (docs/operations/releases.md: Rollback). Read back by the next update.
pulumi.export("imageHistory", history_output(previous.get_output("imageHistory"), settings))
pulumi.export("canary", canary_output(settings))
# What the program relies on but does not own: the backup bucket's lifecycle and the IAM policies of the roles
# (docs/operations/backups.md, docs/operations/keys.md).
pulumi.export("backups", backups_output(settings.backups, settings.namespace, PREFIX))
pulumi.export("keyStore", key_store_output(settings.key_store, settings.namespace, PREFIX))
# Read back by the next preview: the cluster this stack deploys to, and what would replace its stateful objects.
pulumi.export(CLUSTER_ID_OUTPUT, checked.cluster_id)
pulumi.export(IMMUTABLE_FIELDS_OUTPUT, checked.immutable_fields)
