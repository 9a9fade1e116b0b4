"""Scraping the chat pods' /metrics for the Prometheus operator: the ServiceMonitor over the metrics Service.

It exists whenever something reads the metrics through Prometheus (StackSettings.metrics_scraped): the alerts, or
the HPA's in-flight target that prometheus-adapter serves; AlertRules holds the rules and the mail routing only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi
import pulumi_kubernetes as k8s

from infra.contract import APP_LABELS, METRICS_PATH, METRICS_PORT_NAME, METRICS_SERVICE_LABELS, RELEASE_LABELS

MONITORING_API = "monitoring.coreos.com/v1"
SCRAPE_INTERVAL = "30s"


@dataclass
class MonitoringArgs:
    namespace: pulumi.Input[str]
    namespace_name: str  # the plain name the ServiceMonitor selects the metrics Service in
    # The operator picks the ServiceMonitor up only when these match its selector (kube-prometheus-stack:
    # release=<Helm release>); alertSelectorLabels.
    selector_labels: tuple[tuple[str, str], ...] = ()
    # Where stacks made before this component existed hold the ServiceMonitor (service_monitor_formerly_in).
    service_monitor_aliases: list[pulumi.Alias] = field(default_factory=list)
    name_prefix: str = "clawbot"


def service_monitor_formerly_in(alert_rules_name: str) -> list[pulumi.Alias]:
    """Until Monitoring existed, AlertRules(alert_rules_name) owned the ServiceMonitor as `<name>-servicemonitor`:
    the alias lets `pulumi up` adopt that object in place instead of deleting it and creating it again."""
    old_parent = pulumi.create_urn(alert_rules_name, "clawbot:infra:AlertRules")
    return [pulumi.Alias(name=f"{alert_rules_name}-servicemonitor", parent=old_parent)]


class Monitoring(pulumi.ComponentResource):
    def __init__(self, name: str, args: MonitoringArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("clawbot:infra:Monitoring", name, None, opts)
        self.service_monitor = k8s.apiextensions.CustomResource(
            f"{name}-servicemonitor",
            api_version=MONITORING_API,
            kind="ServiceMonitor",
            metadata={
                "name": args.name_prefix,
                "namespace": args.namespace,
                "labels": {**APP_LABELS, **dict(args.selector_labels)},
            },
            spec={
                "selector": {"matchLabels": dict(METRICS_SERVICE_LABELS)},
                "namespaceSelector": {"matchNames": [args.namespace_name]},
                "endpoints": [
                    {
                        "port": METRICS_PORT_NAME,
                        "path": METRICS_PATH,
                        "interval": SCRAPE_INTERVAL,
                        "scrapeTimeout": "10s",
                    }
                ],
                # The pods' track and version ride on every scraped series, so a query can put the canary's error
                # rate and latency beside the stable set's (`track="canary"`, `app_kubernetes_io_version`).
                "podTargetLabels": list(RELEASE_LABELS),
            },
            opts=pulumi.ResourceOptions(parent=self, aliases=args.service_monitor_aliases),
        )
        self.register_outputs({"serviceMonitor": args.name_prefix})
